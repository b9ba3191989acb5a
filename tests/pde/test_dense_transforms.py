"""Small transforms use cached dense matrices (``DENSE_TRANSFORM_MAX``): they must equal the FFT path (float64,
1e-12 relative to the data's scale), in values and gradients, on both bases and through a tensor basis."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsciml import pde
from jaxsciml.pde import _basis


def _both(monkeypatch, fn):
    dense = fn()
    monkeypatch.setattr(_basis, "DENSE_TRANSFORM_MAX", 0)  # force jnp.fft
    fft = fn()
    monkeypatch.undo()
    return dense, fft


@pytest.mark.parametrize("m, n", [(9, 9), (16, 9), (33, 31), (64, 63)])
def test_fourier_dense_equals_fft(x64, monkeypatch, m, n):
    basis = pde.Fourier(n, (0.0, 2.0))
    c = jax.random.normal(jax.random.key(0), (3, n), jnp.float64)
    v = jax.random.normal(jax.random.key(1), (3, m), jnp.float64)
    assert _basis._dense(m, n)
    (d_inv, d_fwd, d_g), (f_inv, f_fwd, f_g) = _both(
        monkeypatch,
        lambda: (
            basis.inverse(c, m),
            basis.forward(v) if m == n else None,
            jax.grad(lambda x: jnp.sum(jnp.sin(basis.inverse(x, m))))(c),
        ),
    )
    np.testing.assert_allclose(d_inv, f_inv, atol=1e-12)
    np.testing.assert_allclose(d_g, f_g, atol=1e-12)
    if m == n:
        np.testing.assert_allclose(d_fwd, f_fwd, atol=1e-12)


@pytest.mark.parametrize("m, n", [(2, 2), (8, 8), (21, 12), (64, 64)])
def test_chebyshev_dense_equals_fft(x64, monkeypatch, m, n):
    basis = pde.Chebyshev(n, (0.0, 0.5))
    c = jax.random.normal(jax.random.key(2), (2, n), jnp.float64)
    v = jax.random.normal(jax.random.key(3), (2, n), jnp.float64)
    (d_inv, d_fwd, d_g), (f_inv, f_fwd, f_g) = _both(
        monkeypatch,
        lambda: (
            basis.inverse(c, m),
            basis.forward(v),
            jax.grad(lambda x: jnp.sum(jnp.cos(basis.forward(basis.inverse(x, m) ** 2))))(c),
        ),
    )
    np.testing.assert_allclose(d_inv, f_inv, atol=1e-12)
    np.testing.assert_allclose(d_fwd, f_fwd, atol=1e-12)
    np.testing.assert_allclose(d_g, f_g, atol=1e-11)


def test_tensor_apply_and_large_grid(x64, monkeypatch):
    """A dealiased pointwise product on Fourier x Chebyshev (the NSM activation path), and an evaluation grid above
    the dense limit (FFT path in both runs) agree."""
    basis = pde.TensorBasis(pde.Fourier(15), pde.Chebyshev(10, (0.0, 1.0)))
    u = jax.random.normal(jax.random.key(4), (4, 15, 10), jnp.float64)
    d, f = _both(monkeypatch, lambda: (pde.pointwise(jnp.tanh, basis, u), basis.inverse(u, (128, 100))))
    np.testing.assert_allclose(d[0], f[0], atol=1e-12)
    np.testing.assert_allclose(d[1], f[1], atol=1e-12)


def test_float32_dense_accuracy():
    """float32 transforms at full matmul precision: round trip to float32 rounding."""
    basis = pde.TensorBasis(pde.Fourier(31), pde.Chebyshev(12, (0.0, 1.0)))
    u = jax.random.normal(jax.random.key(5), (31, 12), jnp.float32)
    back = basis.forward(basis.inverse(u))
    assert back.dtype == jnp.float32
    np.testing.assert_allclose(back, u, atol=2e-5)
