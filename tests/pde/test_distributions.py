"""The NSM paper's parameter distributions (periodic kernel), their settings, and the smooth alternatives.

Statistical tests draw a few thousand samples; tolerances are about 4 standard errors of the estimate (stated per test)
and were checked to fail for the smooth squared-exponential fields or a wrong kernel length."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsciml import pde


def _kernel(d, length):
    return np.exp(-(np.sin(np.pi * d) ** 2) / (2 * length**2))


def test_periodic_spectrum_matches_bessel_and_kernel():
    lam = pde.periodic_kernel_spectrum(0.2, 40)
    # k(0) = lambda_0 + 2 sum_k lambda_k = 1, and the series reproduces the kernel
    assert abs(lam[0] + 2 * lam[1:].sum() - 1) < 1e-12
    d = np.linspace(0, 1, 7)
    series = lam[0] + 2 * np.sum(lam[1:, None] * np.cos(2 * np.pi * np.arange(1, 41)[:, None] * d), 0)
    np.testing.assert_allclose(series, _kernel(d, 0.2), atol=1e-12)
    special = pytest.importorskip("scipy.special")
    np.testing.assert_allclose(lam[:20], special.ive(np.arange(20), 1 / (4 * 0.2**2)), atol=1e-14)
    # on an N-point grid: the aliased spectrum, zero beyond Nyquist, summing to 1 again
    lam16 = pde.periodic_kernel_spectrum(0.2, 15, grid=16)
    assert np.all(lam16[9:] == 0) and abs(lam16[0] + 2 * lam16[1:8].sum() + lam16[8] - 1) < 1e-12
    with pytest.raises(ValueError, match="length_scale"):
        pde.periodic_kernel_spectrum(0.0, 4)


def _high_fraction(coeffs, basis, kmin=3.0):
    """Fraction of the (non-mean) variance at |k| >= kmin, from sample coefficients in the real layout."""
    k = [b.wavenumbers() / (2 * np.pi) for b in basis.bases]
    kk = np.sqrt(k[0][:, None] ** 2 + k[1][None, :] ** 2)
    ms = np.outer(*[np.where(ki > 0, 0.5, 1.0) for ki in k])  # mean square of each basis function
    power = np.mean(np.asarray(coeffs) ** 2, axis=0) * ms
    power[0, 0] = 0.0
    return power[kk >= kmin].sum() / power.sum()


def test_poisson_source_spectrum_and_grid_covariance():
    prob = pde.PoissonPeriodic()
    assert (prob.kernel, prob.length_scale, prob.source_grid, prob.basis.shape) == ("periodic", 0.2, 16, (31, 31))
    f = prob.sample(jax.random.key(0), 4000)
    # analytic fraction at |k| >= 3 of the separable kernel's spectrum on the 16-point grid: 0.5345
    lam = pde.periodic_kernel_spectrum(0.2, 8, grid=16)
    full = np.concatenate([lam, lam[1:8][::-1]])  # DFT order 0..15
    kx = np.fft.fftfreq(16, 1 / 16)
    s2 = np.outer(full, full)
    s2[0, 0] = 0
    expected = s2[np.hypot(kx[:, None], kx[None, :]) >= 3].sum() / s2.sum()
    assert abs(expected - 0.5345) < 1e-3
    # 4000 samples: the estimate's standard error is about 0.004
    assert abs(_high_fraction(f, prob.basis) - expected) < 0.02
    assert abs(float(jnp.mean(f[:, 0, 0]))) == 0.0  # zero mean, exactly
    smooth = pde.PoissonPeriodic(kernel="squared_exponential").sample(jax.random.key(0), 500)
    assert _high_fraction(smooth, prob.basis) < 0.01
    # the values on the 16-point grid have covariance k(d) - lambda_0^2 (the sample mean removed)
    d = np.arange(16) / 16
    z = np.asarray(prob.basis.evaluate_grid(f, [d, np.zeros(1)]))[..., 0]
    emp = np.mean(z[:, :1] * z, axis=0)
    np.testing.assert_allclose(emp, _kernel(d, 0.2) - lam[0] ** 2, atol=0.06)  # standard error ~0.016


def test_reaction_diffusion_initial_conditions_and_settings():
    prob = pde.ReactionDiffusion()
    assert (prob.rho, prob.t_final, prob.nu, prob.kernel, prob.ic_grid) == (5.0, 1.0, 0.01, "periodic", 64)
    assert pde.ReactionDiffusion.paper_nus == (0.005, 0.01, 0.05, 0.1)
    u0 = prob.sample(jax.random.key(1), 2000)
    v = np.asarray(prob.space.evaluate(u0, np.arange(64) / 64))
    np.testing.assert_allclose(v.min(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(v.max(-1), 1.0, atol=1e-5)
    # u0 is an affine image of the periodic-kernel field drawn on 64 points (same key): all non-constant modes are
    # scaled by one positive factor per sample
    g = np.asarray(
        pde.gaussian_random_field(jax.random.key(1), prob.space, 0.2, shape=(2000,), kernel="periodic", grid=64)
    )
    scale = np.asarray(u0)[:, 1:2] / g[:, 1:2]
    np.testing.assert_allclose(np.asarray(u0)[:, 1:], scale * g[:, 1:], rtol=1e-4, atol=1e-6)
    assert np.all(scale > 0)
    # whose spectrum is the kernel's: 36.7% of the variance at |k| >= 3 (ratio of means; standard error ~0.005)
    lam = pde.periodic_kernel_spectrum(0.2, 31, grid=64)
    expected = lam[3:].sum() / lam[1:].sum()
    k = prob.space.wavenumbers() / (2 * np.pi)
    p = np.mean(g**2, axis=0)
    assert abs(expected - 0.367) < 1e-3 and abs(p[k >= 3].sum() / p[k >= 1].sum() - expected) < 0.02
    k = prob.space.wavenumbers() / (2 * np.pi)
    smooth = pde.ReactionDiffusion(kernel="squared_exponential").sample(jax.random.key(1), 200)
    ps = np.asarray(smooth) ** 2
    assert (ps[:, k >= 3].sum(-1) / ps[:, k >= 1].sum(-1)).mean() < 0.05


def test_navier_stokes_settings_and_initial_vorticity():
    prob = pde.NavierStokes2D()
    assert (prob.t_final, prob.nu, prob.forced, prob.length_scale, prob.ic_grid) == (3.0, 1e-3, False, 0.8, 64)
    assert pde.NavierStokes2D.paper_nus == (1e-2, 1e-3, 1e-4)
    forced = pde.NavierStokesForced2D()
    assert (forced.t_final, forced.nu, forced.forced, forced.length_scale) == (50.0, 2e-3, True, 0.8)
    assert float(jnp.max(jnp.abs(prob.forcing_coeffs()))) == 0.0
    # the forced problem's forcing is 0.1 (sin 2 pi (x + y) + cos 2 pi (x + y)), constant in time
    x = np.array([0.1, 0.35])
    f = forced.basis.evaluate_grid(forced.forcing_coeffs(jnp.float32), [x, x, np.array([0.0, 40.0])])
    s = 2 * np.pi * (x[:, None] + x[None, :])
    np.testing.assert_allclose(f, (0.1 * (np.sin(s) + np.cos(s)))[..., None].repeat(2, -1), atol=1e-6)
    # w0: zero mean, covariance k(dx) k(0) - lambda_0^2 along x on the 64 grid (l = 0.8), standard error ~0.01
    w = prob.sample(jax.random.key(2), 3000)
    assert float(jnp.max(jnp.abs(w[:, 0, 0]))) == 0.0
    lam0 = pde.periodic_kernel_spectrum(0.8, 0, grid=64)[0]
    z = np.asarray(prob.space.evaluate_grid(w, [np.arange(0, 64, 8) / 64, np.zeros(1)]))[..., 0]
    emp = np.mean(z[:, :1] * z, axis=0)
    np.testing.assert_allclose(emp, _kernel(np.arange(0, 64, 8) / 64, 0.8) - lam0**2, atol=0.05)


def test_grf_kernel_arguments():
    b = pde.TensorBasis(pde.Fourier(9), pde.Chebyshev(8))
    with pytest.raises(ValueError, match="Fourier"):
        pde.gaussian_random_field(jax.random.key(0), b, 0.2, kernel="periodic")
    with pytest.raises(ValueError, match="kernel"):
        pde.gaussian_random_field(jax.random.key(0), pde.Fourier(9), 0.2, kernel="rbf")
    with pytest.raises(ValueError, match="grid"):
        pde.gaussian_random_field(jax.random.key(0), pde.Fourier(9), 0.2, grid=16)
    with pytest.raises(ValueError, match="kernel"):
        pde.PoissonPeriodic(kernel="gaussian")
    with pytest.raises(ValueError, match="smoothness"):
        pde.NavierStokes2D(kernel="matern")
    # the FNO-benchmark Matern field stays available
    w = pde.NavierStokes2D(kernel="matern", length_scale=1 / 7, smoothness=2.5).sample(jax.random.key(0), 2)
    assert w.shape == (2, 15, 15) and bool(jnp.all(jnp.isfinite(w)))
