"""Spectral bases: transforms, calculus, evaluation, products, boundary conditions, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsciml import pde
from tests.helpers import assert_transformable

# Tolerances: float64 transforms of O(1) data are exact up to ~n eps (FFT round-off), hence 1e-12; derivatives amplify
# round-off by ~n^2 (Chebyshev) or ~K (Fourier), hence 1e-10 for the sizes used here.


@pytest.mark.parametrize("n,m", [(33, 33), (33, 64), (65, 100)])
def test_fourier_roundtrip_and_padding(x64, n, m):
    b = pde.Fourier(n, (0.0, 2.0))
    c = jax.random.normal(jax.random.key(0), (3, n))
    v = b.inverse(c, m)
    np.testing.assert_allclose(b.forward(v), c, atol=1e-12)
    # padded inverse = direct evaluation of the trigonometric sum
    np.testing.assert_allclose(v, c @ b.basis_matrix(b.grid(m)).T, atol=1e-12)


def test_fourier_layout_and_normalisation(x64):
    b = pde.Fourier(7, (0.0, 1.0))
    x = b.grid(16)
    u = 0.5 + 2.0 * np.cos(2 * np.pi * x) - 3.0 * np.sin(2 * np.pi * 3 * x)
    np.testing.assert_allclose(b.forward(u), [0.5, 2.0, 0.0, 0.0, 0.0, 0.0, -3.0], atol=1e-13)
    np.testing.assert_allclose(b.wavenumbers(), 2 * np.pi * np.array([0, 1, 1, 2, 2, 3, 3]))


@pytest.mark.parametrize("n,m", [(20, 20), (20, 37), (64, 64)])
def test_chebyshev_roundtrip(x64, n, m):
    b = pde.Chebyshev(n, (-1.0, 3.0))
    c = jax.random.normal(jax.random.key(1), (2, n))
    v = b.inverse(c, m)
    np.testing.assert_allclose(b.forward(v), c, atol=1e-12)
    np.testing.assert_allclose(v, c @ b.basis_matrix(b.grid(m)).T, atol=1e-12)
    # grid is the ascending Gauss-Lobatto grid
    g = b.grid(m)
    assert g[0] == -1.0 and g[-1] == 3.0 and np.all(np.diff(g) > 0)


def test_fourier_derivatives_analytic(x64):
    b = pde.Fourier(65, (0.0, 2 * np.pi))
    x = b.grid()
    c = b.forward(np.exp(np.sin(x)))
    d1 = np.cos(x) * np.exp(np.sin(x))
    d2 = (np.cos(x) ** 2 - np.sin(x)) * np.exp(np.sin(x))
    np.testing.assert_allclose(b.inverse(b.derivative(c)), d1, atol=1e-10)
    np.testing.assert_allclose(b.inverse(b.derivative(c, 2)), d2, atol=1e-10)
    s = b.forward(np.sin(3 * x))
    np.testing.assert_allclose(b.inverse(b.derivative(s, 3)), -27 * np.cos(3 * x), atol=1e-10)
    # antiderivative inverts the derivative on zero-mean functions; definite integral
    np.testing.assert_allclose(b.derivative(b.antiderivative(c))[1:], c[1:], atol=1e-12)
    np.testing.assert_allclose(b.integrate(s), 0.0, atol=1e-12)
    np.testing.assert_allclose(b.integrate(c), 2 * np.pi * 1.2660658777520082, rtol=1e-12)  # 2 pi I_0(1)


def test_chebyshev_derivative_of_polynomials_exact(x64):
    n = 12
    b = pde.Chebyshev(n, (-1.0, 1.0))
    xs = np.linspace(-1, 1, 9)
    for k in range(n):
        c = np.zeros(n)
        c[k] = 1.0
        # T_k'(cos t) = k sin(k t) / sin(t); check at interior points
        t = np.arccos(xs[1:-1])
        ref = k * np.sin(k * t) / np.sin(t)
        np.testing.assert_allclose(b.evaluate(b.derivative(jnp.asarray(c)), xs[1:-1]), ref, atol=1e-10)


def test_chebyshev_calculus_analytic(x64):
    a, e = -1.0, 2.0
    b = pde.Chebyshev(32, (a, e))
    x = b.grid()
    c = b.forward(np.exp(x) * np.sin(x))
    np.testing.assert_allclose(b.inverse(b.derivative(c)), np.exp(x) * (np.sin(x) + np.cos(x)), atol=1e-10)
    np.testing.assert_allclose(b.inverse(b.derivative(c, 2)), 2 * np.exp(x) * np.cos(x), atol=1e-9)
    prim = lambda y: np.exp(y) * (np.sin(y) - np.cos(y)) / 2  # noqa: E731
    np.testing.assert_allclose(b.integrate(c), prim(e) - prim(a), atol=1e-12)
    anti = b.antiderivative(c)
    assert anti.shape == (33,)
    xe = np.linspace(a, e, 11)
    np.testing.assert_allclose(pde.Chebyshev(33, (a, e)).evaluate(anti, xe), prim(xe) - prim(a), atol=1e-12)
    w = b.quadrature_weights(40)
    np.testing.assert_allclose(w @ (np.exp(b.grid(40)) * np.sin(b.grid(40))), prim(e) - prim(a), atol=1e-12)


def test_chebyshev_clenshaw_matches_cosine_formula(x64):
    b = pde.Chebyshev(15)
    c = jax.random.normal(jax.random.key(2), (4, 15))
    x = np.linspace(0, 1, 23)
    s = 2 * x - 1
    ref = np.asarray(c) @ np.cos(np.arange(15)[:, None] * np.arccos(s)[None, :])
    np.testing.assert_allclose(b.evaluate(c, x), ref, atol=1e-12)
    np.testing.assert_allclose(b.evaluate(c, x, axis=-1), c @ b.basis_matrix(x).T, atol=1e-12)


def test_chebyshev_multiply_by_x(x64):
    b = pde.Chebyshev(10, (1.0, 3.0))
    c = jax.random.normal(jax.random.key(3), (10,))
    x = np.linspace(1, 3, 13)
    np.testing.assert_allclose(
        pde.Chebyshev(11, (1.0, 3.0)).evaluate(b.multiply_by_x(c), x), (x - 1) * b.evaluate(c, x), atol=1e-12
    )


@pytest.mark.parametrize("bc", ["dirichlet", "neumann"])
def test_chebyshev_boundary_conditions(x64, bc):
    b = pde.Chebyshev(16, (0.0, 2.0))
    c = jax.random.normal(jax.random.key(4), (3, 16))
    left, right = jnp.array([1.0, 2.0, 3.0]), -0.5
    cb = b.enforce_bc(c, bc, left, right)
    target = cb if bc == "dirichlet" else b.derivative(cb)
    lv, rv = b.boundary_values(target)
    np.testing.assert_allclose(lv, left, atol=1e-11)
    np.testing.assert_allclose(rv, right, atol=1e-11)
    np.testing.assert_allclose(cb[:, :-2], c[:, :-2])  # only the two tau coefficients change


def test_tensor_bc_both_axes(x64):
    tb = pde.TensorBasis(pde.Chebyshev(10), pde.Chebyshev(12))
    c = jax.random.normal(jax.random.key(5), (10, 12))
    u = tb.enforce_bc(tb.enforce_bc(c, 0), 1)
    g = np.linspace(0, 1, 7)
    vals = tb.evaluate_grid(u, [g, g])
    for edge in (vals[0], vals[-1], vals[:, 0], vals[:, -1]):
        np.testing.assert_allclose(edge, 0.0, atol=1e-12)


def test_products_dealiased_exact(x64):
    tb = pde.TensorBasis(pde.Fourier(9), pde.Chebyshev(8, (0.0, 1.0)))
    xs = tb.grid((64, 40))
    X, T = np.meshgrid(*xs, indexing="ij")
    fa = np.cos(2 * np.pi * 4 * X) * T**7
    fb = np.sin(2 * np.pi * 3 * X) * (1 + T**6)
    a, b = tb.forward(fa), tb.forward(fb)
    exact = tb.forward(fa * fb)  # from a 64 x 40 grid: exact coefficients of the product truncated to (9, 8)
    np.testing.assert_allclose(tb.product(a, b), exact, atol=1e-12)
    # without padding the aliasing error is visible
    alias = tb.apply(jnp.multiply, a, b, shape=None)
    assert float(jnp.max(jnp.abs(alias - exact))) > 1e-3


def test_tensor_3d_derivatives_and_evaluate(x64):
    tb = pde.TensorBasis(pde.Fourier(15), pde.Fourier(13, (0.0, 2.0)), pde.Chebyshev(12, (0.0, 0.5)))
    X, Y, T = np.meshgrid(*tb.grid(), indexing="ij")
    u = np.sin(2 * np.pi * X) * np.cos(np.pi * Y) * np.exp(T)
    c = tb.forward(u)
    np.testing.assert_allclose(tb.inverse(c), u, atol=1e-12)
    np.testing.assert_allclose(tb.inverse(tb.derivative(c, 2)), u, atol=1e-10)
    lap = tb.laplacian(c, axes=(0, 1))
    np.testing.assert_allclose(tb.inverse(lap), -(4 * np.pi**2 + np.pi**2) * u, atol=1e-9)
    pts = np.random.default_rng(0).uniform([0, 0, 0], [1, 2, 0.5], (9, 3))
    ref = np.sin(2 * np.pi * pts[:, 0]) * np.cos(np.pi * pts[:, 1]) * np.exp(pts[:, 2])
    np.testing.assert_allclose(tb.evaluate(c, pts), ref, atol=1e-12)
    np.testing.assert_allclose(tb.integrate(c), 0.0, atol=1e-12)
    vu = tb.evaluate_uniform(c, (20, 16, 5))
    xs = tb.uniform_grid((20, 16, 5))
    Xe, Ye, Te = np.meshgrid(*xs, indexing="ij")
    np.testing.assert_allclose(vu, np.sin(2 * np.pi * Xe) * np.cos(np.pi * Ye) * np.exp(Te), atol=1e-12)


def test_float32_dtype_preserved():
    tb = pde.TensorBasis(pde.Fourier(9), pde.Chebyshev(8))
    c = jnp.ones((2, 9, 8), jnp.float32)
    for out in (
        tb.inverse(c, (16, 12)),
        tb.derivative(c, 0),
        tb.derivative(c, 1),
        tb.product(c, c),
        tb.forward(tb.inverse(c)),
    ):
        assert out.dtype == jnp.float32
    np.testing.assert_allclose(tb.forward(tb.inverse(c)), c, atol=1e-5)


def test_transformable(x64):
    tb = pde.TensorBasis(pde.Fourier(7), pde.Chebyshev(6))
    c = jax.random.normal(jax.random.key(6), (7, 6))

    pts = jnp.array([[0.3, 0.7], [0.1, 0.2]])

    @jax.jit  # jitted so that the eager loops inside assert_transformable stay cheap
    def fn(c):
        r = tb.product(tb.derivative(c, 0), tb.derivative(c, 1, 2)) + tb.enforce_bc(c, 1)
        return tb.evaluate(r, pts), tb.inverse(r, (9, 8)), tb.squared_norm(r)

    assert_transformable(fn, c, fd_rtol=1e-6)


def test_bad_inputs():
    with pytest.raises(ValueError, match="positive odd integer"):
        pde.Fourier(32)
    with pytest.raises(ValueError, match="integer >= 2"):
        pde.Chebyshev(1)
    with pytest.raises(ValueError, match="b > a"):
        pde.Chebyshev(8, (1.0, 0.0))
    f = pde.Fourier(9)
    with pytest.raises(ValueError, match="basis size n = 9"):
        f.derivative(jnp.ones((3, 8)))
    with pytest.raises(ValueError, match="at least n=9"):
        f.forward(jnp.ones(8))
    with pytest.raises(ValueError, match=">= basis size n=9"):
        f.inverse(jnp.ones(9), 5)
    tb = pde.TensorBasis(pde.Fourier(9), pde.Chebyshev(8))
    with pytest.raises(ValueError, match=r"trailing shape \(9, 8\)"):
        tb.inverse(jnp.ones((8, 9)))
    with pytest.raises(ValueError, match="Chebyshev axis.*fourier"):
        tb.quadrature_weights(0)
    with pytest.raises(ValueError, match="Chebyshev axis"):
        tb.enforce_bc(jnp.ones((9, 8)), 0)
    with pytest.raises(ValueError, match="'dirichlet', 'neumann'"):
        tb.enforce_bc(jnp.ones((9, 8)), 1, bc="robin")
    with pytest.raises(ValueError, match="`axis` must be"):
        tb.derivative(jnp.ones((9, 8)), 2)
    with pytest.raises(ValueError, match="`order`"):
        tb.derivative(jnp.ones((9, 8)), 0, -1)
    with pytest.raises(TypeError, match="bases"):
        pde.TensorBasis(pde.Fourier(9), "chebyshev")
    assert tb.quadrature_weights(1).shape == (8,)
