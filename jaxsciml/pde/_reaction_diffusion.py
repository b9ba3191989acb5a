"""1-D reaction--diffusion ``u_t = nu u_xx + rho u (1 - u)``, periodic in ``x in [0, 1)``, ``t in [0, T]``."""

from __future__ import annotations

import math
from typing import Any, ClassVar, cast

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ._basis import Chebyshev, Fourier, _float, check_finite
from ._custom import _lift, initial_value, time_coordinate
from ._problem import AbstractProblem, fd_periodic_second
from ._random import gaussian_random_field
from ._tensor import TensorBasis

__all__ = ["ReactionDiffusion", "etdrk4_coefficients", "solve_reaction_diffusion"]


def _check_positive(name: str, value: float) -> float:
    if not (isinstance(value, int | float | np.floating | np.integer) and value > 0 and math.isfinite(value)):
        raise ValueError(f"`{name}` must be a positive finite number, got {value!r}")
    return float(value)


def etdrk4_coefficients(lin: np.ndarray, h: float, contour_points: int = 32) -> tuple[np.ndarray, ...]:
    """ETDRK4 coefficients ``(E, E2, Q, f1, f2, f3)`` for the diagonal linear operator ``lin`` and step ``h``.

    The phi-functions are evaluated by the contour-integral mean of Kassam & Trefethen (SIAM J. Sci. Comput. 26, 2005),
    which avoids the cancellation of the direct formulas for small ``h * lin``. NumPy float64 (setup only).
    """
    lin = np.asarray(lin, dtype=float)
    hl = h * lin
    r = np.exp(1j * np.pi * (np.arange(1, contour_points + 1) - 0.5) / contour_points)
    lr = hl[..., None] + r
    q = h * np.real(np.mean((np.exp(lr / 2) - 1) / lr, axis=-1))
    f1 = h * np.real(np.mean((-4 - lr + np.exp(lr) * (4 - 3 * lr + lr**2)) / lr**3, axis=-1))
    f2 = h * np.real(np.mean((2 + lr + np.exp(lr) * (-2 + lr)) / lr**3, axis=-1))
    f3 = h * np.real(np.mean((-4 - 3 * lr - lr**2 + np.exp(lr) * (4 - lr)) / lr**3, axis=-1))
    return np.exp(hl), np.exp(hl / 2), q, f1, f2, f3


def solve_reaction_diffusion(
    u0: Array, nu: float, rho: float, t_final: float, steps: int, saves: int, dealias: bool = True
) -> Array:
    """Pseudo-spectral ETDRK4 solution of ``u_t = nu u_xx + rho u (1 - u)`` on the periodic unit interval.

    Arguments:
        u0: initial values on ``N`` equispaced points ``x_j = j / N`` (leading axes batched).
        nu: viscosity (> 0). rho: reaction rate.
        t_final: final time (> 0).
        steps: number of time steps; must be a multiple of ``saves - 1``.
        saves: number of output times ``linspace(0, t_final, saves)`` (>= 2).
        dealias: truncate the nonlinear term with the 2/3 rule.

    Returns:
        Values of shape ``(..., N, saves)``. Fourth order in time (Cox & Matthews 2002), spectral in space.
    """
    nu = _check_positive("nu", nu)
    t_final = _check_positive("t_final", t_final)
    if not isinstance(saves, int) or saves < 2:
        raise ValueError(f"`saves` must be an integer >= 2, got {saves!r}")
    if not isinstance(steps, int) or steps < 1 or steps % (saves - 1) != 0:
        raise ValueError(f"`steps` must be a positive multiple of saves - 1 = {saves - 1}, got {steps!r}")
    u0 = check_finite(_float(u0, "u0"), "u0")
    if u0.ndim < 1 or u0.shape[-1] < 3:
        raise ValueError(f"`u0` must have a trailing axis of >= 3 grid values, got shape {u0.shape}")
    n = u0.shape[-1]
    k = np.fft.rfftfreq(n, 1.0 / n)
    lin = -nu * (2 * np.pi * k) ** 2
    h = t_final / steps
    cdt = jnp.result_type(u0.dtype, jnp.complex64)
    e, e2, q, f1, f2, f3 = (jnp.asarray(a, cdt) for a in etdrk4_coefficients(lin, h))
    mask = jnp.asarray(k <= n / 3 if dealias else np.ones_like(k, bool), cdt)

    def nonlin(vh):
        u = jnp.fft.irfft(vh, n=n, axis=-1)
        return rho * jnp.fft.rfft(u * (1 - u), axis=-1) * mask

    def step(vh, _):
        nv = nonlin(vh)
        a = e2 * vh + q * nv
        na = nonlin(a)
        b = e2 * vh + q * na
        nb = nonlin(b)
        c = e2 * a + q * (2 * nb - nv)
        nc = nonlin(c)
        return e * vh + nv * f1 + 2 * (na + nb) * f2 + nc * f3, None

    def segment(vh, _):
        vh, _ = jax.lax.scan(step, vh, None, length=steps // (saves - 1))
        return vh, jnp.fft.irfft(vh, n=n, axis=-1).astype(u0.dtype)

    v0 = jnp.fft.rfft(u0, axis=-1)
    _, out = jax.lax.scan(segment, v0, None, length=saves - 1)
    out = jnp.concatenate([u0[None], out], axis=0)  # (saves, ..., N)
    return jnp.moveaxis(out, 0, -1)


def _unit(n: int, dtype) -> Array:
    """Coefficients of the constant function 1 in a 1-D basis of size ``n``."""
    return jnp.zeros((n,), dtype).at[0].set(1.0)


class ReactionDiffusion(AbstractProblem):
    """``u_t = nu u_xx + rho u (1 - u)``, ``x in [0, 1)`` periodic, ``t in [0, T]``, ``u(x, 0) = u0(x)``.

    Parameters ``u0`` (default = the NSM paper's distribution, Du et al. ICLR 2024): a Gaussian random field with the
    periodic kernel ``exp(-sin^2(pi d) / (2 l^2))``, ``l = 0.2`` (:func:`periodic_kernel_spectrum`), drawn on
    ``ic_grid = 64`` points and interpolated, then min--max normalised to ``[0, 1]`` over those 64 values (the affine
    map is applied to the coefficients, so the normalisation is exact for any ``nx``). ``kernel="squared_exponential"``
    gives the smoother ``exp(-d^2 / (2 l^2))`` field (unit variance, min--max over the same points). The paper's
    settings: ``rho = 5``, ``T = 1``, ``nu in {0.005, 0.01, 0.05, 0.1}`` (:attr:`paper_nus`).

    Spectral side: ``Fourier(nx) x Chebyshev(nt)`` (space x time); NSM inputs are ``u0`` and the time coordinate; the
    initial condition is built in by the mollifier ``u = u0(x) + t v(x, t)`` (``v``'s top Chebyshev coefficient is
    dropped so that ``t v`` is exact in the basis); the nonlinearity is evaluated on the 3/2-padded collocation grid.
    Reference: ETDRK4 pseudo-spectral (:func:`solve_reaction_diffusion`) on ``ref_points`` points with
    ``ref_steps`` steps. Grid side: ``u = u0 + t v`` and second-order central differences in ``x`` (periodic) and ``t``
    (interior times).
    """

    basis: TensorBasis
    nu: float = eqx.field(static=True)
    rho: float = eqx.field(static=True)
    t_final: float = eqx.field(static=True)
    length_scale: float = eqx.field(static=True)
    ref_points: int = eqx.field(static=True)
    ref_steps: int = eqx.field(static=True)
    kernel: str = eqx.field(static=True)
    ic_grid: int = eqx.field(static=True)

    paper_nus: ClassVar[tuple[float, ...]] = (0.005, 0.01, 0.05, 0.1)

    def __init__(
        self,
        nu: float = 0.01,
        rho: float = 5.0,
        t_final: float = 1.0,
        nx: int = 63,
        nt: int = 16,
        length_scale: float = 0.2,
        ref_points: int = 256,
        ref_steps: int = 400,
        kernel: str = "periodic",
        ic_grid: int = 64,
    ):
        self.nu = _check_positive("nu", nu)
        if not math.isfinite(rho):
            raise ValueError(f"`rho` must be finite, got {rho!r}")
        self.rho = float(rho)
        self.t_final = _check_positive("t_final", t_final)
        self.length_scale = _check_positive("length_scale", length_scale)
        self.basis = TensorBasis(Fourier(nx), Chebyshev(nt, (0.0, self.t_final)))
        self.ref_points = int(ref_points)
        self.ref_steps = int(ref_steps)
        if kernel not in ("periodic", "squared_exponential"):
            raise ValueError(f"`kernel` must be 'periodic' (the paper's) or 'squared_exponential', got {kernel!r}")
        if not isinstance(ic_grid, int | np.integer) or ic_grid < 2:
            raise ValueError(f"`ic_grid` must be an integer >= 2, got {ic_grid!r}")
        self.kernel = kernel
        self.ic_grid = int(ic_grid)

    @property
    def space(self) -> Fourier:
        return cast(Fourier, self.basis.bases[0])

    def sample(self, key: Array, batch: int) -> Array:
        """``batch`` initial conditions (Fourier coefficients), min--max normalised to ``[0, 1]`` on ``ic_grid``
        points."""
        kw: dict[str, Any] = {"kernel": "periodic", "grid": self.ic_grid} if self.kernel == "periodic" else {}
        g = gaussian_random_field(key, self.space, self.length_scale, shape=(batch,), **kw)
        x = jnp.asarray(np.arange(self.ic_grid) / self.ic_grid, g.dtype)
        v = self.space.evaluate(g, x)
        lo, hi = jnp.min(v, -1, keepdims=True), jnp.max(v, -1, keepdims=True)
        return (g - lo * _unit(self.space.n, g.dtype)) / (hi - lo)

    def _lift_ic(self, u0: Array) -> Array:
        """Coefficients of ``u0(x)`` as a (constant-in-t) space-time field."""
        return _lift(u0, self.basis, 1)

    @property
    def in_channels(self) -> int:
        return 2

    def model_input(self, params: Array) -> Array:
        """Two channels: ``u0(x)`` (constant in ``t``) and the time coordinate ``t`` (without the time channel the
        network has no direct access to ``t`` and trained ~50x worse in our short runs)."""
        self.space.check_coeffs(params, name="params")
        return jnp.stack([self._lift_ic(params), time_coordinate(self.basis, 1, params.dtype)])

    def constrain(self, raw: Array, params: Array) -> Array:
        return initial_value(raw[0], params, self.basis, 1)

    def residual(self, u: Array, params: Array) -> Array:
        b = self.basis
        react = b.apply(lambda w: w * (1 - w), u)
        return b.derivative(u, 1) - self.nu * b.derivative(u, 0, 2) - self.rho * react

    def _ref_steps(self, saves: int) -> int:
        per = max(1, -(-self.ref_steps // (saves - 1)))
        return per * (saves - 1)

    def reference(self, params: Array, shape: tuple[int, ...]) -> Array:
        mx, mt = shape
        npts = max(self.ref_points, mx)
        u0 = self.space.inverse(check_finite(_float(params, "params"), "params"), npts)
        sol = solve_reaction_diffusion(u0, self.nu, self.rho, self.t_final, self._ref_steps(mt), mt)
        if npts == mx:
            return sol
        fine = Fourier(npts - 1 if npts % 2 == 0 else npts)
        coef = fine.forward(sol, axis=-2)
        return fine.evaluate(coef, jnp.asarray(self.basis.uniform_grid(shape)[0], sol.dtype), axis=-2)

    def grid_input(self, params: Array, shape: tuple[int, ...]) -> Array:
        u0 = self.space.inverse(params, shape[0])
        return jnp.broadcast_to(u0[:, None], shape)[None]

    def grid_constrain(self, raw: Array, params: Array, shape: tuple[int, ...]) -> Array:
        t = jnp.asarray(self.basis.uniform_grid(shape)[1], raw.dtype)
        return self.space.inverse(params, shape[0])[:, None] + t[None, :] * raw[0]

    def grid_residual(self, u: Array, params: Array, shape: tuple[int, ...]) -> Array:
        hx, ht = 1.0 / shape[0], self.t_final / (shape[1] - 1)
        ut = (u[:, 2:] - u[:, :-2]) / (2 * ht)
        uxx = fd_periodic_second(u, 0, hx)[:, 1:-1]
        ui = u[:, 1:-1]
        return ut - self.nu * uxx - self.rho * ui * (1 - ui)
