"""Gaussian random fields sampled in spectral space (parameter samplers for the PDE problems)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ._basis import AbstractBasis, Chebyshev, Fourier
from ._tensor import TensorBasis, as_tensor_basis

__all__ = ["gaussian_random_field", "grf_spectrum"]


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

    Returns:
        Coefficients of shape ``(*shape, *basis.shape)``.
    """
    tb = as_tensor_basis(basis)
    dtype = jnp.result_type(float) if dtype is None else dtype
    if all(isinstance(b, Fourier) for b in tb.bases):
        std = _fourier_std(tb.bases, length_scale, smoothness, zero_mean)
        z = jax.random.normal(key, (*shape, *tb.shape), dtype)
        return z * jnp.asarray(std, dtype)
    # replace Chebyshev axes by Fourier axes on a doubled periodic box, evaluate on the Lobatto points
    periodic = []
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
