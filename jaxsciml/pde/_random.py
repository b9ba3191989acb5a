"""Gaussian random fields sampled in spectral space (parameter samplers for the PDE problems)."""

from __future__ import annotations

from typing import cast

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ._basis import AbstractBasis, Chebyshev, Fourier
from ._tensor import TensorBasis, as_tensor_basis

__all__ = ["gaussian_random_field", "grf_spectrum", "periodic_kernel_spectrum"]

_KERNELS = ("squared_exponential", "matern", "periodic")


def grf_spectrum(k: np.ndarray, length_scale: float, smoothness: float | None = None) -> np.ndarray:
    """Spectral density ``S(|k|)`` (``k`` angular wavenumber magnitudes) of the covariance.

    ``smoothness=None``: squared-exponential covariance ``exp(-r^2 / (2 l^2))`` -> ``S = exp(-(|k| l)^2 / 2)``
    (analytic samples). Otherwise a Matern-type field, ``S = (1 + (|k| l)^2)^(-smoothness)`` (samples have about
    ``2 smoothness - d`` square-integrable derivatives in ``d`` dimensions).
    """
    if not length_scale > 0:
        raise ValueError(f"`length_scale` must be > 0, got {length_scale!r}")
    kl = np.asarray(k) * length_scale
    if smoothness is None:
        return np.exp(-0.5 * kl**2)
    if not smoothness > 0:
        raise ValueError(f"`smoothness` must be > 0 (or None for squared-exponential), got {smoothness!r}")
    return (1.0 + kl**2) ** (-float(smoothness))


def periodic_kernel_spectrum(length_scale: float, kmax: int, grid: int | None = None) -> np.ndarray:
    """Eigenvalues ``lambda_0..lambda_kmax`` of the periodic covariance ``k(d) = exp(-sin^2(pi d) / (2 l^2))``.

    This is the kernel of the NSM paper's parameter distributions (Du et al., ICLR 2024; ``l = 0.2`` for Poisson sources
    and reaction--diffusion initial conditions, ``0.8`` for Navier--Stokes vorticity). For small ``d`` it is
    ``exp(-d^2 / (2 (l / pi)^2))``: the effective correlation length is ``l / pi`` (0.064 for ``l = 0.2``). Its Fourier
    series is ``k(d) = sum_k lambda_k e^{2 pi i k d}`` with ``lambda_k = e^{-a} I_k(a)``, ``a = 1 / (4 l^2)`` (modified
    Bessel functions), computed here as the DFT of ``k`` on a 1024-point grid (aliasing below 1e-300 for ``l >= 0.05``).

    ``grid=N`` gives the eigenvalues of the ``N x N`` circulant covariance matrix of the field sampled on ``N``
    equispaced points (the aliased spectrum ``sum_m lambda_{k + m N}``), zero beyond the Nyquist index ``N // 2``:
    the distribution of the paper's samplers, which draw the field on ``N`` points and interpolate.
    """
    if not length_scale > 0:
        raise ValueError(f"`length_scale` must be > 0, got {length_scale!r}")
    m = 1024 if grid is None else int(grid)
    if m < 2:
        raise ValueError(f"`grid` must be an integer >= 2, got {grid!r}")
    d = np.arange(m) / m
    lam = np.real(np.fft.fft(np.exp(-(np.sin(np.pi * d) ** 2) / (2.0 * length_scale**2)))) / m
    lam = np.maximum(lam[: m // 2 + 1], 0.0)  # symmetric; clip round-off negatives
    out = np.zeros(kmax + 1)
    out[: min(kmax, m // 2) + 1] = lam[: kmax + 1]
    return out


def _periodic_axis_var(b: Fourier, length_scale: float, grid: int | None) -> np.ndarray:
    """Per-coefficient variance along one Fourier axis in the real layout ``[a_0, a_1, b_1, ...]`` (period = domain)."""
    lam = periodic_kernel_spectrum(length_scale, b.kmax, grid)
    var = np.zeros(b.n)
    var[0] = lam[0]
    for k in range(1, b.kmax + 1):
        nyquist = grid is not None and 2 * k == grid
        # a real field sum_k (a_k cos + b_k sin): Var a_k = Var b_k = 2 lambda_k; the Nyquist mode of an even grid is
        # a cosine only, with variance lambda_{N/2}
        var[2 * k - 1] = lam[k] if nyquist else 2 * lam[k]
        var[2 * k] = 0.0 if nyquist else 2 * lam[k]
    return var


def _fourier_std(bases: tuple[Fourier, ...], length_scale, smoothness, zero_mean) -> np.ndarray:
    ks = [np.abs(b.wavenumbers()) for b in bases]
    kk = np.meshgrid(*ks, indexing="ij")
    kmag = np.sqrt(sum(k**2 for k in kk))
    var = grf_spectrum(kmag, length_scale, smoothness)
    # amplitude layout: a real coefficient along an axis with k > 0 carries twice the variance of the complex mode, and
    # its basis function has mean square 1/2, so the pointwise variance is sum(var * prod(ms)).
    mult = np.ones_like(var)
    ms = np.ones_like(var)
    for k in kk:
        mult = mult * np.where(k > 0, 2.0, 1.0)
        ms = ms * np.where(k > 0, 0.5, 1.0)
    var = var * mult
    if zero_mean:
        var[(0,) * len(bases)] = 0.0
    total = float(np.sum(var * ms))
    return np.sqrt(var / total)


def gaussian_random_field(
    key: Array,
    basis: AbstractBasis | TensorBasis,
    length_scale: float = 0.1,
    smoothness: float | None = None,
    shape: tuple[int, ...] = (),
    zero_mean: bool = False,
    dtype=None,
    kernel: str | None = None,
    grid: int | None = None,
) -> Array:
    """Sample coefficients of a stationary Gaussian random field with unit pointwise variance.

    Fourier axes are sampled directly in spectral space: each real coefficient is an independent normal with variance
    ``S(|k|)`` (see :func:`grf_spectrum`, ``|k|`` the angular wavenumber over all axes), times 2 per axis with
    ``k > 0`` (amplitude layout); the field is stationary and isotropic, normalised to pointwise variance 1.
    Chebyshev (non-periodic) axes: the field is sampled on a periodic box of twice the length along those axes,
    evaluated at the Chebyshev--Lobatto points and transformed (so it is the restriction of a stationary field).

    Arguments:
        key: PRNG key.
        basis: the basis of the field.
        length_scale: correlation length ``l`` (domain units).
        smoothness: ``None`` (squared exponential) or a Matern-type exponent.
        shape: leading batch shape.
        zero_mean: drop the constant mode (periodic Poisson sources must integrate to zero).
        kernel: ``None`` (squared exponential, or Matern when ``smoothness`` is given), ``"squared_exponential"``,
            ``"matern"`` or ``"periodic"``: the NSM paper's ``exp(-sin^2(pi d / L) / (2 l^2))`` on Fourier axes of
            period ``L`` (separable over axes, see :func:`periodic_kernel_spectrum`; not normalised further: the
            pointwise variance is ``k(0) = 1`` up to the modes the basis drops).
        grid: only for ``kernel="periodic"``: the distribution of the field drawn on ``grid`` equispaced points per
            axis and interpolated (the paper draws on 16 points for Poisson, 64 for reaction--diffusion and
            Navier--Stokes); ``None`` for the continuous field truncated to the basis.

    Returns:
        Coefficients of shape ``(*shape, *basis.shape)``.
    """
    tb = as_tensor_basis(basis)
    dtype = jnp.result_type(float) if dtype is None else dtype
    if kernel is not None and kernel not in _KERNELS:
        raise ValueError(f"`kernel` must be None or one of {_KERNELS}, got {kernel!r}")
    if kernel == "matern" and smoothness is None:
        raise ValueError("`kernel='matern'` needs a `smoothness` exponent")
    if kernel == "squared_exponential":
        smoothness = None
    if grid is not None and kernel != "periodic":
        raise ValueError(f"`grid` is only used with kernel='periodic', got kernel={kernel!r}")
    if kernel == "periodic":
        if not all(isinstance(b, Fourier) for b in tb.bases):
            raise ValueError("kernel='periodic' needs Fourier (periodic) axes only, got " + str(tb.shape))
        std = np.ones(())
        for b in tb.bases:
            std = np.multiply.outer(std, np.sqrt(_periodic_axis_var(cast(Fourier, b), length_scale, grid)))
        if zero_mean:
            std[(0,) * tb.ndim] = 0.0
        z = jax.random.normal(key, (*shape, *tb.shape), dtype)
        return z * jnp.asarray(std, dtype)
    if all(isinstance(b, Fourier) for b in tb.bases):
        std = _fourier_std(cast(tuple[Fourier, ...], tb.bases), length_scale, smoothness, zero_mean)
        z = jax.random.normal(key, (*shape, *tb.shape), dtype)
        return z * jnp.asarray(std, dtype)
    # replace Chebyshev axes by Fourier axes on a doubled periodic box, evaluate on the Lobatto points
    periodic: list[AbstractBasis] = []
    for b in tb.bases:
        if isinstance(b, Chebyshev):
            periodic.append(Fourier(2 * b.n + 1, (b.domain[0], b.domain[0] + 2 * b.length)))
        else:
            periodic.append(b)
    pb = TensorBasis(*periodic)
    coef = gaussian_random_field(key, pb, length_scale, smoothness, shape, zero_mean=False, dtype=dtype)
    vals = pb.evaluate_grid(coef, [jnp.asarray(g, dtype) for g in tb.grid()])
    out = tb.forward(vals)
    if zero_mean:
        out = out - (tb.integrate(out) / tb.volume)[(...,) + (None,) * tb.ndim] * _unit(tb, dtype)
    return out


def _unit(tb: TensorBasis, dtype) -> Array:
    """Coefficients of the constant function 1."""
    e = np.zeros(tb.shape)
    e[(0,) * tb.ndim] = 1.0
    return jnp.asarray(e, dtype)
