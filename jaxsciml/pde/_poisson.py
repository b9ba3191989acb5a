"""2-D Poisson problems ``-Laplace(u) = f`` on the unit square: periodic (Fourier) and homogeneous Dirichlet
(Chebyshev), with Gaussian-random-field sources and spectral reference solvers."""

from __future__ import annotations

from typing import cast

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ._basis import Chebyshev, Fourier, check_finite, runtime_check
from ._problem import AbstractProblem, fd_periodic_second
from ._random import gaussian_random_field
from ._residual import _sobolev_order
from ._tensor import TensorBasis

__all__ = ["PoissonPeriodic", "PoissonDirichlet", "chebyshev_diff_matrix", "solve_poisson_dirichlet"]


def _check_common(n: int, length_scale: float, name_n: str = "n") -> None:
    if not isinstance(n, int | np.integer) or n < 3:
        raise ValueError(f"`{name_n}` must be an integer >= 3, got {n!r}")
    if not length_scale > 0:
        raise ValueError(f"`length_scale` must be > 0, got {length_scale!r}")


def _check_kernel(kernel: str, smoothness) -> str:
    if kernel not in ("periodic", "squared_exponential"):
        raise ValueError(f"`kernel` must be 'periodic' (the paper's) or 'squared_exponential', got {kernel!r}")
    if kernel == "periodic" and smoothness is not None:
        raise ValueError("`smoothness` (Matern exponent) only applies to kernel='squared_exponential'")
    return kernel


def _value_at_origin(u: Array) -> Array:
    """``u(0, 0)`` of real 2-D Fourier coefficients (trailing axes): the sum of the cosine-cosine coefficients (even
    indices in the layout ``[a_0, a_1, b_1, ...]``)."""
    return jnp.sum(u[..., ::2, ::2], axis=(-2, -1))


def _unit_mode(shape, dtype) -> Array:
    e = np.zeros(shape)
    e[(0,) * len(shape)] = 1.0
    return jnp.asarray(e, dtype)


class PoissonPeriodic(AbstractProblem):
    """``-Laplace(u) = f`` on the periodic unit square, ``f`` a zero-mean Gaussian random field, ``u`` gauge-fixed.

    Spectral side: ``Fourier(n) x Fourier(n)``; residual ``-Laplace(u) - f`` in coefficient space; the gauge is the
    periodic "mollifier" (``gauge="mean"``: the mean coefficient is set to zero; ``gauge="origin"``: ``u(0, 0) = 0``,
    the authors' choice). Reference: the exact diagonal solve ``u_k = f_k / |k|^2`` (angular wavenumbers), in the same
    gauge. Grid side: 5-point finite-difference Laplacian.

    Source distribution (default = the NSM paper's, Du et al. ICLR 2024): the periodic kernel
    ``exp(-sin^2(pi d) / (2 l^2))`` per axis (separable), ``l = 0.2``, drawn on a ``16 x 16`` grid (``source_grid``)
    and interpolated, sample mean removed; 53% of its variance is at ``|k| >= 3`` (see
    :func:`periodic_kernel_spectrum`). ``kernel="squared_exponential"`` gives the smooth isotropic field
    ``exp(-r^2 / (2 l^2))`` normalised to unit variance (0.2% of the variance at ``|k| >= 3`` for ``l = 0.2``).

    Arguments:
        n: Fourier coefficients per axis (odd; default 31 = wavenumbers 0..15 as in the paper's 31x31 modes).
        length_scale: kernel length ``l`` of the source.
        smoothness: with ``kernel="squared_exponential"`` only: ``None`` or a Matern-type exponent.
        kernel: ``"periodic"`` (paper) or ``"squared_exponential"`` (smooth).
        source_grid: with ``kernel="periodic"``: points per axis the source is drawn on (paper: 16); ``None`` for the
            continuous field truncated to the basis.
        gauge: ``"mean"`` (zero-mean solution) or ``"origin"`` (``u(0, 0) = 0``, as the authors' code).
        sobolev: Sobolev order ``s`` of the residual norm in :meth:`loss` (default 0: the paper's ``L^2`` loss);
            ``s = -1`` (the ``H^-1`` norm, i.e. the error in ``H^1``) trains to a 2.6x lower relative error at equal
            steps (``benchmarks/results/nsm.md``); see :func:`~jaxsciml.pde.spectral_loss`.
    """

    basis: TensorBasis
    length_scale: float = eqx.field(static=True)
    smoothness: float | None = eqx.field(static=True)
    kernel: str = eqx.field(static=True)
    source_grid: int | None = eqx.field(static=True)
    gauge: str = eqx.field(static=True)
    sobolev: float = eqx.field(static=True)

    def __init__(
        self,
        n: int = 31,
        length_scale: float = 0.2,
        smoothness: float | None = None,
        kernel: str = "periodic",
        source_grid: int | None = 16,
        gauge: str = "mean",
        sobolev: float = 0.0,
    ):
        _check_common(n, length_scale)
        self.sobolev = _sobolev_order(sobolev)
        self.kernel = _check_kernel(kernel, smoothness)
        if gauge not in ("mean", "origin"):
            raise ValueError(f"`gauge` must be 'mean' or 'origin', got {gauge!r}")
        if source_grid is not None and (not isinstance(source_grid, int | np.integer) or source_grid < 2):
            raise ValueError(f"`source_grid` must be None or an integer >= 2, got {source_grid!r}")
        self.basis = TensorBasis(Fourier(n), Fourier(n))
        self.length_scale = float(length_scale)
        self.smoothness = smoothness
        self.source_grid = None if source_grid is None else int(source_grid)
        self.gauge = gauge

    def sample(self, key: Array, batch: int) -> Array:
        return gaussian_random_field(
            key, self.basis, self.length_scale, self.smoothness, (batch,), zero_mean=True, **self._kernel_kwargs()
        )

    def _kernel_kwargs(self) -> dict:
        if self.kernel == "periodic":
            return {"kernel": "periodic", "grid": self.source_grid}
        return {}

    def model_input(self, params: Array) -> Array:
        return self.basis.check_coeffs(params, "params")[None]

    def _fix_gauge(self, u: Array) -> Array:
        """Remove the constant that the PDE leaves free: the mean, or the value at the origin (batched)."""
        c = u[..., 0, 0] if self.gauge == "mean" else _value_at_origin(u)
        return u - c[..., None, None] * _unit_mode(self.basis.shape, u.dtype)

    def constrain(self, raw: Array, params: Array) -> Array:
        return self._fix_gauge(raw[0])

    def residual(self, u: Array, params: Array) -> Array:
        """``-Laplace(u) - f``; a source with non-zero mean leaves the constant mode of the residual at ``-mean(f)``
        for every ``u`` (the periodic problem is solvable only for ``int f = 0``, see :meth:`solve`)."""
        return -self.basis.laplacian(self.basis.check_coeffs(u, "u")) - self.basis.check_coeffs(params, "params")

    def _k2(self) -> np.ndarray:
        w1, w2 = (cast(Fourier, b).wavenumbers() for b in self.basis.bases)
        return w1[:, None] ** 2 + w2[None, :] ** 2

    def solve(self, params: Array) -> Array:
        """Exact solution coefficients (in the :attr:`gauge`) for source coefficients ``params`` (batched over leading
        axes). ``-Laplace(u) = f`` on the torus has a solution only if ``int f dx = 0``: a source whose mean
        coefficient exceeds ``1e-5 max |f_k|`` raises at run time (``eqx.error_if``), as does NaN/inf."""
        f = check_finite(self.basis.check_coeffs(params, "params"), "params")
        mean = jnp.abs(f[..., 0, 0])
        f = runtime_check(
            f,
            jnp.any(mean > 1e-5 * jnp.max(jnp.abs(f), axis=(-2, -1))),
            "PoissonPeriodic.solve: the source `params` has a non-zero mean (coefficient [0, 0]); -Laplace(u) = f "
            "on the torus is solvable only if int f dx = 0: subtract it, params.at[..., 0, 0].set(0)",
        )
        k2 = self._k2()
        inv = np.where(k2 > 0, 1.0 / np.where(k2 > 0, k2, 1.0), 0.0)
        return self._fix_gauge(f * jnp.asarray(inv, f.dtype))

    def reference(self, params: Array, shape: tuple[int, ...]) -> Array:
        return self.basis.evaluate_uniform(self.solve(params), shape)

    def grid_input(self, params: Array, shape: tuple[int, ...]) -> Array:
        return self.basis.evaluate_uniform(params, shape)[None]

    def grid_constrain(self, raw: Array, params: Array, shape: tuple[int, ...]) -> Array:
        u = raw[0]
        return u - (jnp.mean(u) if self.gauge == "mean" else u[0, 0])

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
    lam, v = np.real(lam), np.real(v)
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
        return -self.basis.laplacian(self.basis.check_coeffs(u, "u")) - self.basis.check_coeffs(params, "params")

    def solve(self, params: Array) -> tuple[TensorBasis, Array]:
        """Reference coefficients on the finer basis ``Chebyshev(m) x Chebyshev(m)``, ``m = ref_factor * n``."""
        f = check_finite(self.basis.check_coeffs(params, "params"), "params")
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
