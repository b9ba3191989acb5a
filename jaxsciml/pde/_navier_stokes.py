"""2-D incompressible Navier--Stokes in vorticity form on the periodic unit square.

``w_t + u . grad(w) = nu Laplace(w) + f``, ``u = (psi_y, -psi_x)``, ``-Laplace(psi) = w`` (zero-mean stream function),
unforced (:class:`NavierStokes2D`, ``f = 0``) or with the FNO-benchmark forcing ``f = 0.1 (sin(2 pi (x + y)) +
cos(2 pi (x + y)))`` (Li et al., ICLR 2021; :class:`NavierStokesForced2D`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar, cast

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ._basis import Chebyshev, Fourier, _float, check_finite, runtime_check
from ._custom import _lift, initial_value, time_coordinate
from ._problem import AbstractProblem, fd_periodic_second
from ._random import gaussian_random_field
from ._tensor import TensorBasis

__all__ = ["NavierStokes2D", "NavierStokesForced2D", "fno_forcing", "solve_navier_stokes"]


def fno_forcing(x: Array, y: Array) -> Array:
    """``0.1 (sin(2 pi (x + y)) + cos(2 pi (x + y)))``."""
    s = 2 * jnp.pi * (x + y)
    return 0.1 * (jnp.sin(s) + jnp.cos(s))


def _check_nu(nu: float) -> float:
    if not (isinstance(nu, int | float | np.floating) and nu > 0 and math.isfinite(nu)):
        raise ValueError(f"`nu` (viscosity) must be a positive finite number, got {nu!r}")
    return float(nu)


def solve_navier_stokes(
    w0: Array,
    nu: float,
    t_final: float,
    steps: int,
    saves: int,
    forcing: Callable[[Array, Array], Array] | None = fno_forcing,
    max_cfl: float | None = 1.0,
) -> Array:
    """Pseudo-spectral vorticity solver: Crank--Nicolson (viscous term) + Heun (advection, forcing), 2/3 dealiasing.

    Each step: predictor ``w* = [(1 + dt nu L/2) w + dt (f - N(w))] / (1 - dt nu L/2)``, corrector
    ``w' = [(1 + dt nu L/2) w + dt (f - (N(w) + N(w*))/2)] / (1 - dt nu L/2)``: second order in time, spectral in space.

    Arguments:
        w0: initial vorticity on the ``N x N`` grid ``(i/N, j/N)`` (leading axes batched).
        nu: viscosity (> 0).
        t_final: final time (> 0).
        steps: time steps, a positive multiple of ``saves - 1``.
        saves: output times ``linspace(0, t_final, saves)`` (>= 2).
        forcing: ``f(x, y)`` (time independent) or ``None``.
        max_cfl: the explicit (Heun) advection step is checked: the Courant number ``dt max(|u| + |v|) N`` at every
            saved time must stay below ``max_cfl`` (and the state finite), otherwise a runtime error
            (``eqx.error_if``) asks for more ``steps``; ``None`` switches the check off. Heun's method is not stable
            for purely imaginary eigenvalues: above a Courant number of about 1 (measured: 1.3 blows up within 20
            steps for a random field: Courant 1.5 gave errors of 1e2, 1.9 of 1e58) the solution grows without bound;
            at 0.95 the error was 3e-3 and it halves with the step.

    Returns:
        Vorticity values ``(..., N, N, saves)``.
    """
    nu = _check_nu(nu)
    if not t_final > 0:
        raise ValueError(f"`t_final` must be > 0, got {t_final!r}")
    if not isinstance(saves, int) or saves < 2:
        raise ValueError(f"`saves` must be an integer >= 2, got {saves!r}")
    if not isinstance(steps, int) or steps < 1 or steps % (saves - 1) != 0:
        raise ValueError(f"`steps` must be a positive multiple of saves - 1 = {saves - 1}, got {steps!r}")
    w0 = check_finite(_float(w0, "w0"), "w0")
    n = w0.shape[-1]
    if w0.ndim < 2 or w0.shape[-2] != n:
        raise ValueError(f"`w0` must have square trailing shape (N, N), got {w0.shape}")
    if max_cfl is not None and not max_cfl > 0:
        raise ValueError(f"`max_cfl` must be > 0 or None, got {max_cfl!r}")
    kx = 2 * np.pi * np.fft.fftfreq(n, 1.0 / n)[:, None]
    ky = 2 * np.pi * np.fft.rfftfreq(n, 1.0 / n)[None, :]
    lap = -(kx**2 + ky**2)
    inv_lap = np.where(lap < 0, 1.0 / np.where(lap < 0, lap, 1.0), 0.0)
    kmax = n / 3
    mask = (np.abs(np.fft.fftfreq(n, 1.0 / n))[:, None] <= kmax) & (np.fft.rfftfreq(n, 1.0 / n)[None, :] <= kmax)
    dt = t_final / steps
    cdt = jnp.result_type(w0.dtype, jnp.complex64)
    kx_, ky_, mask_ = jnp.asarray(1j * kx, cdt), jnp.asarray(1j * ky, cdt), jnp.asarray(mask, cdt)
    psi_op = jnp.asarray(-inv_lap, cdt)  # psi_hat = w_hat / |k|^2
    plus = jnp.asarray(1 + 0.5 * dt * nu * lap, cdt)
    minus_inv = jnp.asarray(1 / (1 - 0.5 * dt * nu * lap), cdt)
    g = np.arange(n) / n
    if forcing is None:
        f_hat = jnp.zeros((n, n // 2 + 1), cdt)
    else:
        f_hat = jnp.fft.rfft2(forcing(jnp.asarray(g[:, None], w0.dtype), jnp.asarray(g[None, :], w0.dtype)))

    def irfft2(a):
        return jnp.fft.irfft2(a, s=(n, n))

    def adv(wh):
        psi = wh * psi_op
        u, v = irfft2(ky_ * psi), -irfft2(kx_ * psi)
        wx, wy = irfft2(kx_ * wh), irfft2(ky_ * wh)
        return jnp.fft.rfft2(u * wx + v * wy) * mask_

    def step(wh, _):
        n0 = adv(wh)
        pred = (plus * wh + dt * (f_hat - n0)) * minus_inv
        n1 = adv(pred)
        return (plus * wh + dt * (f_hat - 0.5 * (n0 + n1))) * minus_inv, None

    def courant(wh):
        psi = wh * psi_op
        speed = jnp.abs(irfft2(ky_ * psi)) + jnp.abs(irfft2(kx_ * psi))
        return dt * n * jnp.max(speed, axis=(-2, -1))

    def segment(wh, _):
        c0 = courant(wh)
        wh, _ = jax.lax.scan(step, wh, None, length=steps // (saves - 1))
        return wh, (irfft2(wh).astype(w0.dtype), c0)

    wh_end, (out, cfl) = jax.lax.scan(segment, jnp.fft.rfft2(w0), None, length=saves - 1)
    out = jnp.concatenate([w0[None], out], axis=0)
    out = jnp.moveaxis(out, 0, -1)
    if max_cfl is not None:
        worst = jnp.maximum(jnp.max(cfl), jnp.max(courant(wh_end)))
        bad = ~(worst <= max_cfl) | ~jnp.all(jnp.isfinite(out))
        out = runtime_check(
            out,
            bad,
            f"solve_navier_stokes: the Courant number dt * max(|u| + |v|) * N exceeded max_cfl={max_cfl} (or the "
            f"solution became non-finite) with steps={steps} over t_final={t_final}; increase `steps`",
        )
    return out


class NavierStokes2D(AbstractProblem):
    """Vorticity Navier--Stokes on ``[0, 1]^2`` periodic, ``t in [0, T]``, initial vorticity ``w0``, unforced.

    Defaults are the NSM paper's unforced flow (Du et al., ICLR 2024): ``T = 3``, ``nu in {1e-2, 1e-3, 1e-4}``
    (:attr:`paper_nus`), ``w0`` a Gaussian random field with the periodic kernel ``exp(-sin^2(pi d) / (2 l^2))``,
    ``l = 0.8`` (separable over ``x, y``), drawn on a ``64 x 64`` grid (``ic_grid``), mean removed, not rescaled.
    ``kernel="matern"`` with ``length_scale=1/7, smoothness=2.5`` gives the FNO-benchmark field ``(-Laplace + 49)^-2.5``
    and ``kernel="squared_exponential"`` a smooth isotropic one (both normalised to unit variance).
    :class:`NavierStokesForced2D` is the paper's forced transient case.

    Spectral side: ``Fourier(n) x Fourier(n) x Chebyshev(nt, (0, T))``; initial value built in by ``w = w0 + t v``; the
    advection ``u . grad(w)`` is assembled in coefficient space (stream function by the diagonal inverse Laplacian,
    derivatives exact) with the product on the 3/2-padded grid. Reference: :func:`solve_navier_stokes` on
    ``ref_points^2`` with ``ref_steps`` steps (default ``2 ref_points T``: Courant number ``max(|u| + |v|) / 2``).
    Grid side: ``w = w0 + t v``, spectral-on-grid velocity, central differences in ``x, y`` (periodic) and ``t``
    (interior).
    """

    basis: TensorBasis
    nu: float = eqx.field(static=True)
    t_final: float = eqx.field(static=True)
    ref_points: int = eqx.field(static=True)
    ref_steps: int = eqx.field(static=True)
    length_scale: float = eqx.field(static=True)
    kernel: str = eqx.field(static=True)
    smoothness: float | None = eqx.field(static=True)
    ic_grid: int | None = eqx.field(static=True)
    forced: bool = eqx.field(static=True)

    paper_nus: ClassVar[tuple[float, ...]] = (1e-2, 1e-3, 1e-4)

    def __init__(
        self,
        nu: float = 1e-3,
        t_final: float = 3.0,
        n: int = 15,
        nt: int = 12,
        ref_points: int = 64,
        ref_steps: int | None = None,
        length_scale: float = 0.8,
        kernel: str = "periodic",
        smoothness: float | None = None,
        ic_grid: int | None = 64,
        forced: bool = False,
    ):
        self.nu = _check_nu(nu)
        if not (isinstance(t_final, int | float | np.floating) and t_final > 0 and math.isfinite(t_final)):
            raise ValueError(f"`t_final` must be a positive finite number, got {t_final!r}")
        if kernel not in ("periodic", "squared_exponential", "matern"):
            raise ValueError(
                f"`kernel` must be 'periodic' (the paper's), 'squared_exponential' or 'matern', got {kernel!r}"
            )
        if (kernel == "matern") != (smoothness is not None):
            raise ValueError("`smoothness` must be given exactly when kernel='matern'")
        if not length_scale > 0:
            raise ValueError(f"`length_scale` must be > 0, got {length_scale!r}")
        self.t_final = float(t_final)
        self.basis = TensorBasis(Fourier(n), Fourier(n), Chebyshev(nt, (0.0, self.t_final)))
        self.ref_points = int(ref_points)
        self.ref_steps = int(math.ceil(2 * self.ref_points * self.t_final)) if ref_steps is None else int(ref_steps)
        self.length_scale = float(length_scale)
        self.kernel = kernel
        self.smoothness = smoothness
        self.ic_grid = None if ic_grid is None else int(ic_grid)
        self.forced = bool(forced)

    @property
    def space(self) -> TensorBasis:
        return TensorBasis(*self.basis.bases[:2])

    def sample(self, key: Array, batch: int) -> Array:
        """``batch`` zero-mean initial vorticities (coefficients on :attr:`space`)."""
        if self.kernel == "periodic":
            kw: dict[str, Any] = {"kernel": "periodic", "grid": self.ic_grid}
        else:
            kw = {"kernel": self.kernel}
        return gaussian_random_field(
            key, self.space, self.length_scale, self.smoothness, shape=(batch,), zero_mean=True, **kw
        )

    def _lift_ic(self, w0: Array) -> Array:
        return _lift(w0, self.basis, 2)

    def forcing_coeffs(self, dtype=None) -> Array:
        """Space-time coefficients of the (time-independent) forcing; zero when unforced."""
        if not self.forced:
            return jnp.zeros(self.basis.shape, dtype)
        sp = self.space
        x, y = (jnp.asarray(g, dtype) for g in sp.grid())
        return self._lift_ic(sp.forward(fno_forcing(x[:, None], y[None, :])))

    @property
    def in_channels(self) -> int:
        return 2

    def model_input(self, params: Array) -> Array:
        """Two channels: ``w0(x, y)`` (constant in ``t``) and the time coordinate ``t``."""
        self.space.check_coeffs(params, "params")
        return jnp.stack([self._lift_ic(params), time_coordinate(self.basis, 2, params.dtype)])

    def constrain(self, raw: Array, params: Array) -> Array:
        return initial_value(raw[0], params, self.basis, 2)

    def velocity(self, w: Array) -> tuple[Array, Array]:
        """``(u, v) = (psi_y, -psi_x)`` coefficients with ``psi = -Laplace^{-1} w`` (zero mean)."""
        w1, w2 = (cast(Fourier, b).wavenumbers() for b in self.basis.bases[:2])
        k2 = w1[:, None] ** 2 + w2[None, :] ** 2
        inv = np.where(k2 > 0, 1.0 / np.where(k2 > 0, k2, 1.0), 0.0)[..., None]
        psi = w * jnp.asarray(inv, w.dtype)
        return self.basis.derivative(psi, 1), -self.basis.derivative(psi, 0)

    def residual(self, u: Array, params: Array) -> Array:
        b = self.basis
        vx, vy = self.velocity(u)
        adv = b.apply(lambda a, c, wx, wy: a * wx + c * wy, vx, vy, b.derivative(u, 0), b.derivative(u, 1))
        return b.derivative(u, 2) + adv - self.nu * b.laplacian(u, axes=(0, 1)) - self.forcing_coeffs(u.dtype)

    def reference(self, params: Array, shape: tuple[int, ...]) -> Array:
        mx, my, mt = shape
        if mx != my:
            raise ValueError(f"`shape` must have equal x and y sizes, got {shape}")
        npts = max(self.ref_points, mx)
        w0 = self.space.inverse(params, (npts, npts))
        per = max(1, -(-self.ref_steps // (mt - 1)))
        force = fno_forcing if self.forced else None
        sol = solve_navier_stokes(w0, self.nu, self.t_final, per * (mt - 1), mt, forcing=force)
        if npts == mx:
            return sol
        if npts % mx == 0:
            return sol[:: npts // mx, :: npts // mx]
        fine = TensorBasis(Fourier(npts - 1), Fourier(npts - 1))
        coef = jnp.moveaxis(fine.forward(jnp.moveaxis(sol, -1, 0)), 0, -1)
        xs = jnp.asarray(self.space.uniform_grid(mx)[0], sol.dtype)
        out = fine.bases[0].evaluate(coef, xs, axis=0)
        return fine.bases[1].evaluate(out, xs, axis=1)

    def grid_input(self, params: Array, shape: tuple[int, ...]) -> Array:
        w0 = self.space.inverse(params, shape[:2])
        return jnp.broadcast_to(w0[..., None], shape)[None]

    def grid_constrain(self, raw: Array, params: Array, shape: tuple[int, ...]) -> Array:
        t = jnp.asarray(self.basis.uniform_grid(shape)[2], raw.dtype)
        return self.space.inverse(params, shape[:2])[..., None] + t * raw[0]

    def grid_residual(self, w: Array, params: Array, shape: tuple[int, ...]) -> Array:
        mx, my, mt = shape
        h, ht = 1.0 / mx, self.t_final / (mt - 1)
        kx = 2 * np.pi * np.fft.fftfreq(mx, 1.0 / mx)[:, None, None]
        ky = 2 * np.pi * np.fft.rfftfreq(my, 1.0 / my)[None, :, None]
        k2 = kx**2 + ky**2
        inv = np.where(k2 > 0, 1.0 / np.where(k2 > 0, k2, 1.0), 0.0)
        wh = jnp.fft.rfft2(w, axes=(0, 1))
        psi = wh * jnp.asarray(inv)
        u = jnp.fft.irfft2(1j * jnp.asarray(ky) * psi, s=(mx, my), axes=(0, 1))
        v = -jnp.fft.irfft2(1j * jnp.asarray(kx) * psi, s=(mx, my), axes=(0, 1))
        wx = (jnp.roll(w, -1, 0) - jnp.roll(w, 1, 0)) / (2 * h)
        wy = (jnp.roll(w, -1, 1) - jnp.roll(w, 1, 1)) / (2 * h)
        lap = fd_periodic_second(w, 0, h) + fd_periodic_second(w, 1, h)
        x, y = (jnp.asarray(g, w.dtype) for g in self.space.uniform_grid((mx, my)))
        f = fno_forcing(x[:, None], y[None, :])[..., None] if self.forced else 0.0
        wt = (w[..., 2:] - w[..., :-2]) / (2 * ht)
        sl = slice(1, -1)
        return wt + (u * wx + v * wy)[..., sl] - self.nu * lap[..., sl] - f


class NavierStokesForced2D(NavierStokes2D):
    """The NSM paper's forced transient flow: :class:`NavierStokes2D` with the forcing ``0.1 (sin 2 pi (x + y) +
    cos 2 pi (x + y))``, ``T = 50``, ``nu = 2e-3``, the same ``w0`` distribution (periodic kernel, ``l = 0.8``) and
    ``nt = 18`` Chebyshev coefficients in time (the paper's 18 temporal modes)."""

    paper_nus: ClassVar[tuple[float, ...]] = (2e-3,)

    def __init__(
        self,
        nu: float = 2e-3,
        t_final: float = 50.0,
        n: int = 15,
        nt: int = 18,
        ref_points: int = 64,
        ref_steps: int | None = None,
        length_scale: float = 0.8,
        kernel: str = "periodic",
        smoothness: float | None = None,
        ic_grid: int | None = 64,
    ):
        super().__init__(nu, t_final, n, nt, ref_points, ref_steps, length_scale, kernel, smoothness, ic_grid, True)
