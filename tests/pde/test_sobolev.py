"""The Sobolev-weighted spectral loss: ``spectral_loss(r, basis, sobolev=s)`` = ``sum_k (1 + |k|^2)^s |R_k|^2`` along
periodic axes, checked against an independent NumPy FFT of grid values (float64, 1e-10)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsciml import pde


def _fft_sobolev_norm2(values: np.ndarray, length: float, s: float) -> float:
    """``int |(1 - d^2/dx^2)^(s/2) r|^2 dx`` of a periodic function from its samples (exact for trigonometric
    polynomials of degree < n/2)."""
    n = values.shape[-1]
    rh = np.fft.fft(values) / n
    k = 2 * np.pi * np.fft.fftfreq(n, d=length / n)
    return float(length * np.sum((1 + k**2) ** s * np.abs(rh) ** 2))


@pytest.mark.parametrize("s", [-1.0, -0.5, 0.0, 1.0])
def test_fourier_sobolev_norm_matches_fft(x64, s):
    basis = pde.Fourier(9, (0.0, 2.0))
    coeffs = jax.random.normal(jax.random.key(0), (3, 9), jnp.float64)
    loss = pde.spectral_loss(coeffs, basis, sobolev=s)
    xs = np.arange(32) * 2.0 / 32
    vals = np.asarray(basis.evaluate(coeffs, jnp.asarray(xs), axis=1))
    expected = np.mean([_fft_sobolev_norm2(v, 2.0, s) for v in vals])
    np.testing.assert_allclose(float(loss), expected, rtol=1e-10)


def test_tensor_weights_constant_along_chebyshev(x64):
    basis = pde.TensorBasis(pde.Fourier(5), pde.Chebyshev(4, (0.0, 1.0)))
    w = np.asarray(pde.sobolev_weights(basis, -1.0))
    assert w.shape == (5, 4)
    k = np.asarray(basis.bases[0].wavenumbers())
    np.testing.assert_allclose(w, np.broadcast_to((1 + k[:, None] ** 2) ** -0.5, (5, 4)), rtol=1e-14)
    # L2 along the Chebyshev axis is kept: the weighted loss equals the plain loss of the weighted coefficients
    r = jax.random.normal(jax.random.key(1), (5, 4), jnp.float64)
    np.testing.assert_allclose(
        float(pde.spectral_loss(r, basis, sobolev=-1.0)), float(pde.spectral_loss(r * w, basis)), rtol=1e-12
    )


def test_poisson_h_minus_one_loss_is_h1_error(x64):
    """For -Laplace(u) = f the H^-1 norm of the residual of u* + e is sum_k |k|^4 / (1 + |k|^2) |e_k|^2."""
    prob = pde.PoissonPeriodic(n=9, sobolev=-1)
    f = prob.sample(jax.random.key(2), 2)
    u = prob.solve(f)
    e = 1e-2 * jax.random.normal(jax.random.key(3), u.shape, jnp.float64).at[:, 0, 0].set(0.0)
    w1, w2 = (np.asarray(b.wavenumbers()) for b in prob.basis.bases)
    k2 = w1[:, None] ** 2 + w2[None, :] ** 2
    expected = pde.spectral_loss(e * jnp.asarray(k2 / np.sqrt(1 + k2)), prob.basis)
    np.testing.assert_allclose(float(prob.loss(u + e, f)), float(expected), rtol=1e-10)
    assert float(prob.loss(u, f)) < 1e-20
    # the default is the paper's L2 loss
    assert pde.PoissonPeriodic(n=9).sobolev == 0.0


def test_problem_sobolev_field_reaches_loss(x64):
    basis = pde.TensorBasis(pde.Fourier(7))

    def residual(u, p):
        return pde.derivative(u, basis, 0, 2) - p

    sample = lambda k, b: jax.random.normal(k, (b, 7), jnp.float64)  # noqa: E731
    p0, p1 = pde.Problem(basis, residual, sample), pde.Problem(basis, residual, sample, sobolev=-2.0)
    u, f = sample(jax.random.key(4), 2), sample(jax.random.key(5), 2)
    r = jax.vmap(residual)(u, f)
    np.testing.assert_allclose(float(p0.loss(u, f)), float(pde.spectral_loss(r, basis)), rtol=1e-12)
    np.testing.assert_allclose(float(p1.loss(u, f)), float(pde.spectral_loss(r, basis, sobolev=-2.0)), rtol=1e-12)
    assert float(p1.loss(u, f)) < float(p0.loss(u, f))
    # differentiable and jit-safe
    g = jax.jit(jax.grad(lambda v: p1.loss(v, f)))(u)
    assert bool(jnp.all(jnp.isfinite(g)))


@pytest.mark.parametrize(
    "bad, err, match",
    [("h1", TypeError, "sobolev"), (float("nan"), ValueError, "finite"), (True, TypeError, "sobolev")],
)
def test_bad_sobolev(bad, err, match):
    basis = pde.Fourier(5)
    with pytest.raises(err, match=match):
        pde.spectral_loss(jnp.zeros(5), basis, sobolev=bad)
    with pytest.raises(err, match=match):
        pde.PoissonPeriodic(n=5, sobolev=bad)
    with pytest.raises(TypeError, match="sobolev"):
        pde.spectral_loss(jnp.zeros(5), basis, sobolev=jnp.array(1.0))
