"""Causal weighting of the spectral loss (jaxsciml/pde/_causal.py): eps = 0 is the exact spectral loss, weights are
1 at t = 0 and decrease with the accumulated residual, jit / grad work."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsciml import pde
from jaxsciml.pde._causal import causal_loss, causal_weights, time_nodes, time_residuals


def _basis():
    return pde.TensorBasis(pde.Fourier(9), pde.Chebyshev(7, (0.0, 0.5)))


def test_eps_zero_is_spectral_loss():
    time_axis = 1
    with jax.enable_x64(True):
        basis = _basis()
        r = jax.random.normal(jax.random.key(0), (3, *basis.shape), jnp.float64)  # polynomial of degree 6 in t
        exact, *got = jax.jit(
            lambda r: (
                [pde.spectral_loss(r, basis)] + [causal_loss(r, basis, time_axis, 0.0, k) for k in (None, 7, 12, 5)]
            )
        )(r)
        np.testing.assert_allclose(got[:3], exact, rtol=1e-12)
        # too few nodes (degree 2 n_t - 2 = 12 > 2 K - 1 = 9) is not exact: the test can fail
        assert abs(float(got[3]) / float(exact) - 1) > 1e-6


def test_time_first_and_three_axes():
    with jax.enable_x64(True):
        basis = pde.TensorBasis(pde.Chebyshev(6, (1.0, 2.0)), pde.Fourier(5), pde.Chebyshev(4, (-1.0, 1.0)))
        r = jax.random.normal(jax.random.key(1), (2, *basis.shape), jnp.float64)
        got, want, per_time, norms = jax.jit(
            lambda r: (
                causal_loss(r, basis, 0, 0.0),
                pde.spectral_loss(r, basis),
                time_residuals(r, basis, 0)[0],
                pde.squared_norm(r, basis),
            )
        )(r)
        np.testing.assert_allclose(got, want, rtol=1e-12)
        # the per-time norm integrates to the per-sample squared norm
        _, t, q = time_residuals(r, basis, 0)
        np.testing.assert_allclose(per_time @ q, norms, rtol=1e-12)
        assert np.all(np.diff(t) > 0) and 1.0 < t[0] and t[-1] < 2.0


def test_weights_start_at_one_and_decrease():
    per_time = jnp.array([[1.0, 2.0, 0.5, 3.0], [0.0, 0.0, 1.0, 0.0]])
    q = np.array([0.1, 0.2, 0.3, 0.4])
    w = causal_weights(per_time, q, 10.0)
    np.testing.assert_allclose(w[:, 0], 1.0)
    np.testing.assert_allclose(w[0], np.exp(-10.0 * np.array([0.0, 0.1, 0.5, 0.65])), rtol=1e-6)
    np.testing.assert_allclose(w[1], [1.0, 1.0, 1.0, np.exp(-3.0)], rtol=1e-6)
    assert np.all(np.diff(np.asarray(w), axis=-1) <= 0)
    # larger eps, smaller weights; eps = 0: all ones
    assert np.all(np.asarray(causal_weights(per_time, q, 100.0)) <= np.asarray(w))
    np.testing.assert_allclose(causal_weights(per_time, q, 0.0), 1.0)
    with pytest.raises(ValueError, match="eps"):
        causal_weights(per_time, q, -1.0)


def test_causal_loss_below_spectral_and_jit_grad():
    basis = _basis()
    r = jax.random.normal(jax.random.key(4), (2, *basis.shape))
    q = time_nodes(basis.bases[1])[1]

    @jax.jit
    def run(r, eps):  # eps traced, as for an annealing schedule
        f = lambda r: causal_loss(r, basis, 1, eps)  # noqa: E731
        per_time = time_residuals(r, basis, 1)[0]
        w = causal_weights(per_time, q, eps)
        # the weights are constants (stop_gradient): the gradient is that of the sum with the weights frozen by hand
        frozen = lambda r: jnp.mean(jnp.sum(w * time_residuals(r, basis, 1)[0] * q, -1))  # noqa: E731
        return f(r), causal_loss(r, basis, 1, 0.0), frozen(r), jax.grad(f)(r), jax.grad(frozen)(r)

    value, full, frozen, g, g_ref = run(r, 10.0)
    assert float(value) < float(full)
    np.testing.assert_allclose(value, frozen, rtol=1e-5)
    np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-7)
    assert np.all(np.isfinite(np.asarray(g))) and float(jnp.max(jnp.abs(g))) > 0


def test_bad_input():
    basis = _basis()
    r = jnp.zeros(basis.shape)
    with pytest.raises(ValueError, match="Chebyshev"):
        causal_loss(r, basis, 0, 1.0)
    with pytest.raises(ValueError, match="trailing shape"):
        causal_loss(jnp.zeros((3, 3)), basis, 1, 1.0)
    with pytest.raises(ValueError, match="nodes"):
        time_nodes(basis.bases[1], 0)


def test_nsm_loss_causal_opt_in():
    """Through the README's minimal path (a `pde.Problem` with a time axis): causal_eps = 0 is `Problem.loss`."""
    with jax.enable_x64(True):
        basis = pde.TensorBasis(pde.Fourier(9), pde.Chebyshev(6, (0.0, 0.5)))
        space = basis.bases[0]
        prob = pde.Problem(
            basis,
            # a parameter-dependent residual (coefficient-wise scaling by u0: not a physical PDE, cheap to compile)
            residual=lambda u, u0: pde.derivative(u, basis, 1) + u0[:, None] * pde.derivative(u, basis, 0),
            sample=lambda key, b: pde.gaussian_random_field(key, space, 0.5, shape=(b,), kernel="periodic"),
            constraints=[pde.InitialValue(axis=1)],
            time_axis=1,
        )
        model = lambda x: jnp.sin(x[:1]) + x[1:] ** 2  # noqa: E731  (any map of the 2 input channels to 1)
        p = prob.sample(jax.random.key(1), 3)
        plain, eps0, eps100, eps_axis = jax.jit(
            lambda p: (
                pde.nsm_loss(model, prob, p),
                pde.nsm_loss(model, prob, p, causal_eps=0.0),
                pde.nsm_loss(model, prob, p, causal_eps=100.0),
                pde.nsm_loss(model, prob, p, causal_eps=100.0, time_axis=-1),
            )
        )(p)
        np.testing.assert_allclose(eps0, plain, rtol=1e-12)
        assert float(eps100) < float(plain)
        np.testing.assert_allclose(eps_axis, eps100, rtol=1e-12)
    poisson = pde.PoissonPeriodic(n=5)
    with pytest.raises(ValueError, match="time_axis"):
        pde.nsm_loss(lambda x: x, poisson, poisson.sample(jax.random.key(0), 1), causal_eps=1.0)
