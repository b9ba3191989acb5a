"""Spectral loss = exact squared L2 norm (Parseval / Chebyshev Gram), checked against fine-grid quadrature."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsciml import pde


def _gauss_legendre(a, b, m):
    x, w = np.polynomial.legendre.leggauss(m)
    return a + (b - a) * (x + 1) / 2, w * (b - a) / 2


def test_parseval_fourier_2d(x64):
    tb = pde.TensorBasis(pde.Fourier(15, (0.0, 2.0)), pde.Fourier(11, (0.0, 1.0)))
    c = jax.random.normal(jax.random.key(0), (3, 15, 11))
    # the trapezoid rule on a periodic grid with >= 2 n points is exact for |u|^2 (a trig polynomial of degree 2K)
    vals = tb.inverse(c, (64, 48))
    quad = jnp.mean(vals**2, axis=(-2, -1)) * 2.0
    np.testing.assert_allclose(pde.squared_norm(c, tb), quad, rtol=1e-12)
    np.testing.assert_allclose(pde.spectral_loss(c, tb), jnp.mean(quad), rtol=1e-12)


def test_chebyshev_gram_norm_is_dx_norm(x64):
    b = pde.Chebyshev(12, (-1.0, 2.0))
    c = jax.random.normal(jax.random.key(1), (12,))
    x, w = _gauss_legendre(-1.0, 2.0, 20)  # exact for degree <= 39 >= 22
    np.testing.assert_allclose(pde.squared_norm(c, b), w @ np.asarray(b.evaluate(c, x)) ** 2, rtol=1e-12)


def test_parseval_space_time_residual(x64):
    """Loss of a residual assembled with the vocabulary equals the fine-grid quadrature of the squared residual."""
    tb = pde.TensorBasis(pde.Fourier(17), pde.Chebyshev(10, (0.0, 0.5)))
    u = 0.3 * jax.random.normal(jax.random.key(2), (2, 17, 10)) * jnp.exp(-0.3 * jnp.arange(10))
    nu, rho = 0.01, 5.0
    r = pde.derivative(u, tb, 1) - nu * pde.derivative(u, tb, 0, 2) - rho * pde.pointwise(lambda v: v * (1 - v), tb, u)
    xs = tb.uniform_grid((80, 1))[0]
    ts, wt = _gauss_legendre(0.0, 0.5, 30)
    rv = tb.evaluate_grid(r, [xs, ts])
    quad = jnp.einsum("bxt,t->b", rv**2, wt) / 80
    np.testing.assert_allclose(pde.squared_norm(r, tb), quad, rtol=1e-11)
    # the dealiased residual has the exact coefficients of u_t - nu u_xx - rho u (1 - u) (quadratic nonlinearity)
    fine = tb.uniform_grid((80, 1))[0]
    uv, utv = tb.evaluate_grid(u, [fine, ts]), tb.evaluate_grid(tb.derivative(u, 1), [fine, ts])
    uxx = tb.evaluate_grid(tb.derivative(u, 0, 2), [fine, ts])
    full = utv - nu * uxx - rho * uv * (1 - uv)  # exact residual, includes modes beyond the basis
    q_full = jnp.einsum("bxt,t->b", full**2, wt) / 80
    assert np.all(np.asarray(q_full) >= np.asarray(quad) - 1e-12)  # projection can only reduce the norm


def test_relative_l2(x64):
    tb = pde.TensorBasis(pde.Fourier(9), pde.Fourier(9))
    c = jax.random.normal(jax.random.key(3), (9, 9))
    np.testing.assert_allclose(pde.relative_l2(1.1 * c, c, tb), 0.1, rtol=1e-12)


def test_loss_errors():
    tb = pde.TensorBasis(pde.Fourier(9), pde.Fourier(9))
    with pytest.raises(ValueError, match="trailing shape"):
        pde.spectral_loss(jnp.ones((9, 8)), tb)
    with pytest.raises(TypeError, match="basis"):
        pde.spectral_loss(jnp.ones((9, 9)), "fourier")
