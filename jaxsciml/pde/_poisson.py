"""2-D Poisson problems ``-Laplace(u) = f`` on the unit square: periodic (Fourier) and homogeneous Dirichlet
(Chebyshev), with Gaussian-random-field sources and spectral reference solvers."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ._basis import Chebyshev, Fourier
from ._problem import AbstractProblem, fd_periodic_second
from ._random import gaussian_random_field
from ._tensor import TensorBasis

__all__ = ["PoissonPeriodic", "PoissonDirichlet", "chebyshev_diff_matrix", "solve_poisson_dirichlet"]


def _check_common(n: int, length_scale: float, name_n: str = "n") -> None:
    if not isinstance(n, int | np.integer) or n < 3:
        raise ValueError(f"`{name_n}` must be an integer >= 3, got {n!r}")
    if not length_scale > 0:
        raise ValueError(f"`length_scale` must be > 0, got {length_scale!r}")


def _unit_mode(shape, dtype) -> Array:
    e = np.zeros(shape)
    e[(0,) * len(shape)] = 1.0
    return jnp.asarray(e, dtype)


class PoissonPeriodic(AbstractProblem):
    """``-Laplace(u) = f`` on the periodic unit square, ``f`` a zero-mean GRF, ``u`` pinned to zero mean.

    Spectral side: ``Fourier(n) x Fourier(n)``; residual ``-Laplace(u) - f`` in coefficient space; the zero-mean pin is
    the periodic "mollifier" (the mean coefficient is set to zero). Reference: the exact diagonal solve
    ``u_k = f_k / |k|^2`` (angular wavenumbers). Grid side: 5-point finite-difference Laplacian.

    Arguments:
        n: Fourier coefficients per axis (odd; default 31 = wavenumbers 0..15 as in the paper's 31x31 modes).
        length_scale: GRF correlation length of the source (squared-exponential covariance).
        smoothness: ``None`` (squared exponential) or a Matern-type exponent, see :func:`grf_spectrum`.
    """

    basis: TensorBasis
    length_scale: float = eqx.field(static=True)
    smoothness: float | None = eqx.field(static=True)

    def __init__(self, n: int = 31, length_scale: float = 0.2, smoothness: float | None = None):
        _check_common(n, length_scale)
        self.basis = TensorBasis(Fourier(n), Fourier(n))
        self.length_scale = float(length_scale)
        self.smoothness = smoothness

    def sample(self, key: Array, batch: int) -> Array:
        return gaussian_random_field(key, self.basis, self.length_scale, self.smoothness, (batch,), zero_mean=True)

    def model_input(self, params: Array) -> Array:
        return self.basis.check_coeffs(params, "params")[None]

    def constrain(self, raw: Array, params: Array) -> Array:
        u = raw[0]
        return u - u[0, 0] * _unit_mode(self.basis.shape, u.dtype)

    def residual(self, u: Array, params: Array) -> Array:
        return -self.basis.laplacian(u) - params

    def _k2(self) -> np.ndarray:
        w1, w2 = (b.wavenumbers() for b in self.basis.bases)
        return w1[:, None] ** 2 + w2[None, :] ** 2

    def solve(self, params: Array) -> Array:
        """Exact solution coefficients (zero mean) for source coefficients ``params``."""
        f = self.basis.check_coeffs(params, "params")
        k2 = self._k2()
        inv = np.where(k2 > 0, 1.0 / np.where(k2 > 0, k2, 1.0), 0.0)
        return f * jnp.asarray(inv, f.dtype)

    def reference(self, params: Array, shape: tuple[int, ...]) -> Array:
        return self.basis.evaluate_uniform(self.solve(params), shape)

    def grid_input(self, params: Array, shape: tuple[int, ...]) -> Array:
        return self.basis.evaluate_uniform(params, shape)[None]

    def grid_constrain(self, raw: Array, params: Array, shape: tuple[int, ...]) -> Array:
        u = raw[0]
        return u - jnp.mean(u)

    def grid_residual(self, u: Array, params: Array, shape: tuple[int, ...]) -> Array:
        f = self.basis.evaluate_uniform(params, shape)
        hx, hy = 1.0 / shape[0], 1.0 / shape[1]
        return -(fd_periodic_second(u, 0, hx) + fd_periodic_second(u, 1, hy)) - f


def chebyshev_diff_matrix(m: int, domain: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Dense first-derivative collocation matrix on the ascending ``m``-point Lobatto grid (NumPy float64; Trefethen,
    *Spectral Methods in MATLAB*, ch. 6). Used by the reference solvers only (setup, not the hot path)."""
    nn = m - 1
    x = np.cos(np.pi * np.arange(m) / nn)
    c = np.ones(m)
    c[0] = c[-1] = 2.0
    c = c * (-1.0) ** np.arange(m)
    dx = x[:, None] - x[None, :]
    d = np.outer(c, 1.0 / c) / (dx + np.eye(m))
    d = d - np.diag(d.sum(axis=1))
    return d[::-1, ::-1] * (2.0 / (domain[1] - domain[0]))


def solve_poisson_dirichlet(f_values: Array, domain: tuple[float, float] = (0.0, 1.0)) -> Array:
    """Solve ``-Laplace(u) = f`` with ``u = 0`` on the boundary of a square by Chebyshev collocation.

    ``f_values`` are values on the ``m x m`` Lobatto grid (batched over leading axes). The boundary rows are replaced by
    the Dirichlet conditions and the interior system ``(D2 x I + I x D2) u = -f`` is solved by fast diagonalisation
    (eigendecomposition of the 1-D interior second-derivative matrix): O(m^3). Returns values on the grid.
    """
    f = jnp.asarray(f_values)
    m = f.shape[-1]
    if f.ndim < 2 or f.shape[-2] != m:
        raise ValueError(f"`f_values` must have square trailing shape (m, m), got {f.shape}")
    d = chebyshev_diff_matrix(m, domain)
    d2 = (d @ d)[1:-1, 1:-1]
    lam, v = np.linalg.eig(d2)
    lam, v = lam.real, v.real
    vinv = np.linalg.inv(v)
    dt = f.dtype
    fi = f[..., 1:-1, 1:-1]
    g = jnp.asarray(vinv, dt) @ fi @ jnp.asarray(vinv.T, dt)
    g = -g / jnp.asarray(lam[:, None] + lam[None, :], dt)
    ui = jnp.asarray(v, dt) @ g @ jnp.asarray(v.T, dt)
    return jnp.pad(ui, [(0, 0)] * (f.ndim - 2) + [(1, 1), (1, 1)])


class PoissonDirichlet(AbstractProblem):
    """``-Laplace(u) = f`` on ``[0, 1]^2`` with ``u = 0`` on the boundary; ``f`` a GRF restricted to the square.

    Spectral side: ``Chebyshev(n) x Chebyshev(n)``; the boundary condition is built in by the boundary-row (tau)
    projection :meth:`TensorBasis.enforce_bc` along both axes (exact ``u = 0`` on all four sides). Reference: Chebyshev
    collocation with fast diagonalisation on ``ref_factor * n`` Lobatto points (:func:`solve_poisson_dirichlet`).
    Grid side: mollifier ``u sin(pi x) sin(pi y)`` and a 5-point FD Laplacian on the interior of the uniform grid.
    """

    basis: TensorBasis
    length_scale: float = eqx.field(static=True)
    smoothness: float | None = eqx.field(static=True)
    ref_factor: int = eqx.field(static=True)

    def __init__(self, n: int = 24, length_scale: float = 0.2, smoothness: float | None = None, ref_factor: int = 2):
        _check_common(n, length_scale)
        self.basis = TensorBasis(Chebyshev(n), Chebyshev(n))
        self.length_scale = float(length_scale)
        self.smoothness = smoothness
        self.ref_factor = int(ref_factor)

    def sample(self, key: Array, batch: int) -> Array:
        return gaussian_random_field(key, self.basis, self.length_scale, self.smoothness, (batch,))

    def model_input(self, params: Array) -> Array:
        return self.basis.check_coeffs(params, "params")[None]

    def constrain(self, raw: Array, params: Array) -> Array:
        u = self.basis.enforce_bc(raw[0], 0, "dirichlet")
        return self.basis.enforce_bc(u, 1, "dirichlet")

    def residual(self, u: Array, params: Array) -> Array:
        return -self.basis.laplacian(u) - params

    def solve(self, params: Array) -> tuple[TensorBasis, Array]:
        """Reference coefficients on the finer basis ``Chebyshev(m) x Chebyshev(m)``, ``m = ref_factor * n``."""
        f = self.basis.check_coeffs(params, "params")
        m = self.ref_factor * self.basis.shape[0]
        fine = TensorBasis(Chebyshev(m), Chebyshev(m))
        fv = self.basis.inverse(f, (m, m))
        return fine, fine.forward(solve_poisson_dirichlet(fv))

    def reference(self, params: Array, shape: tuple[int, ...]) -> Array:
        fine, u = self.solve(params)
        return fine.evaluate_uniform(u, shape)

    def grid_input(self, params: Array, shape: tuple[int, ...]) -> Array:
        return self.basis.evaluate_uniform(params, shape)[None]

    def grid_constrain(self, raw: Array, params: Array, shape: tuple[int, ...]) -> Array:
        x, y = (jnp.asarray(g, raw.dtype) for g in self.basis.uniform_grid(shape))
        return raw[0] * jnp.sin(jnp.pi * x)[:, None] * jnp.sin(jnp.pi * y)[None, :]

    def grid_residual(self, u: Array, params: Array, shape: tuple[int, ...]) -> Array:
        f = self.basis.evaluate_uniform(params, shape)
        hx, hy = 1.0 / (shape[0] - 1), 1.0 / (shape[1] - 1)
        lap = (u[2:, 1:-1] - 2 * u[1:-1, 1:-1] + u[:-2, 1:-1]) / hx**2 + (
            u[1:-1, 2:] - 2 * u[1:-1, 1:-1] + u[1:-1, :-2]
        ) / hy**2
        return -lap - f[1:-1, 1:-1]
