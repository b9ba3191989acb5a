"""Memoryless Shampoo / spectral descent (``jaxsciml.optim.spectral``) against SVD references in float64."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsciml.optim import newton_schulz, scale_by_shampoo, scale_by_spectral, spectral

CUBIC = (1.5, -0.5, 0.0)  # the classical Newton-Schulz iteration: converges to U V^T exactly


def polar(x):
    u, _, vt = np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)
    return u @ vt


@pytest.mark.parametrize("shape", [(7, 5), (5, 7)])
def test_newton_schulz_cubic_converges_to_polar_factor(x64, shape):
    x = jax.random.normal(jax.random.key(0), shape, jnp.float64)
    got = newton_schulz(x, 60, CUBIC)
    np.testing.assert_allclose(np.asarray(got), polar(x), atol=1e-10)


def test_newton_schulz_muon_coefficients_bound_singular_values(x64):
    """Jordan et al.'s quintic: 5 steps put every singular value in about [0.7, 1.2], same singular vectors."""
    x = jax.random.normal(jax.random.key(1), (32, 16), jnp.float64)
    y = np.asarray(newton_schulz(x, 5))
    s = np.linalg.svd(y, compute_uv=False)
    assert 0.6 < s.min() and s.max() < 1.25
    u, _, vt = np.linalg.svd(np.asarray(x))
    np.testing.assert_allclose(u[:, :16].T @ y @ vt.T, np.diag(np.diag(u[:, :16].T @ y @ vt.T)), atol=1e-8)


def test_memoryless_shampoo_is_spectral_descent(x64):
    """Shampoo with one gradient's statistics (beta2 -> 0), exponent 1/4 per side, no graft = U V^T (Muon's update,
    Bernstein & Newhouse 2024), and scale_by_spectral computes the same direction without statistics."""
    g = {"w": jax.random.normal(jax.random.key(2), (9, 6), jnp.float64)}
    ref = polar(g["w"])
    sh = scale_by_shampoo(
        beta1=0.0,
        beta2=1e-12,
        epsilon=1e-12,
        graft="none",
        precondition_every=1,
        stagger_refresh=False,
        merge_small_dims=False,
    )
    u_sh, _ = sh.update(g, sh.init(g))
    np.testing.assert_allclose(np.asarray(u_sh["w"]), ref, atol=1e-8)
    sp = scale_by_spectral(beta1=0.0, nesterov=False, graft="none", ns_steps=60, ns_coeffs=CUBIC)
    u_sp, _ = sp.update(g, sp.init(g))
    np.testing.assert_allclose(np.asarray(u_sp["w"]), ref * np.sqrt(9 / 6), atol=1e-10)  # Muon's shape scaling


def test_spectral_orthogonalises_nesterov_momentum_with_rmsprop_graft(x64):
    """Two steps: the update is polar(n) scaled to ||n / (sqrt(v) + eps)||_F, n the Nesterov EMA momentum; vectors
    take n / (sqrt(v) + eps) itself."""
    b1, b2, eps = 0.9, 0.99, 1e-8
    k = jax.random.split(jax.random.key(3), 4)
    gs = [
        {"w": jax.random.normal(k[i], (5, 8), jnp.float64), "b": jax.random.normal(k[i + 2], (8,), jnp.float64)}
        for i in range(2)
    ]
    opt = scale_by_spectral(beta1=b1, graft_beta2=b2, graft_epsilon=eps, ns_steps=60, ns_coeffs=CUBIC)
    state = opt.init(gs[0])
    for g in gs:
        u, state = opt.update(g, state)
    m = {n: np.zeros(gs[0][n].shape) for n in gs[0]}
    v = {n: np.zeros(gs[0][n].shape) for n in gs[0]}
    for g in gs:
        for n in g:
            m[n] = b1 * m[n] + (1 - b1) * np.asarray(g[n])
            v[n] = b2 * v[n] + (1 - b2) * np.asarray(g[n]) ** 2
    nest = {n: b1 * m[n] + (1 - b1) * np.asarray(gs[-1][n]) for n in m}
    a = {n: nest[n] / (np.sqrt(v[n]) + eps) for n in m}
    o = polar(nest["w"])
    np.testing.assert_allclose(np.asarray(u["w"]), o * np.linalg.norm(a["w"]) / np.linalg.norm(o), rtol=1e-9)
    np.testing.assert_allclose(np.asarray(u["b"]), a["b"], rtol=1e-12)


def test_spectral_defaults_and_training_under_jit():
    """The defaults the CHANGELOG states, and a jitted step that lowers a loss (learning rate applied, sign right)."""
    sig = inspect.signature(spectral).parameters
    assert {k: sig[k].default for k in ("beta1", "nesterov", "graft", "graft_beta2", "ns_steps")} == {
        "beta1": 0.9,
        "nesterov": True,
        "graft": "rmsprop",
        "graft_beta2": 0.99,
        "ns_steps": 5,
    }
    a = jax.random.normal(jax.random.key(4), (6, 4))
    loss = lambda p: jnp.sum((p["w"] - a) ** 2) + jnp.sum((p["b"] - 1.0) ** 2)  # noqa: E731
    p = {"w": jnp.zeros((6, 4)), "b": jnp.zeros(3)}
    opt = spectral(0.05)
    s = opt.init(p)

    @jax.jit
    def step(p, s):
        u, s = opt.update(jax.grad(loss)(p), s, p)
        return jax.tree_util.tree_map(jnp.add, p, u), s

    l0 = loss(p)
    for _ in range(20):
        p, s = step(p, s)
    assert loss(p) < 0.5 * l0


def test_spectral_bad_input_and_nonfinite_skip():
    with pytest.raises(ValueError, match="graft"):
        scale_by_spectral(graft="adam")
    with pytest.raises(ValueError, match="beta1"):
        scale_by_spectral(beta1=1.0)
    opt = scale_by_spectral()
    p = {"w": jnp.ones((3, 2))}
    s = opt.init(p)
    u, s2 = opt.update({"w": jnp.full((3, 2), jnp.nan)}, s)
    assert int(s2.skipped) == 1 and int(s2.count) == 0 and bool(jnp.all(u["w"] == 0))


@pytest.mark.parametrize(("graft", "expect"), [("adam", (False, True)), ("rmsprop", (False, False))])
def test_shampoo_momentum_default_per_graft(x64, graft, expect):
    """Default momentum (CHANGELOG): Adam graft -> bias-corrected EMA; RMSprop graft -> plain EMA."""
    nesterov, bias_correction = expect
    gs = [{"w": jax.random.normal(k, (4, 3), jnp.float64)} for k in jax.random.split(jax.random.key(5), 2)]
    kw = dict(graft=graft, precondition_every=1)
    default, explicit = (
        scale_by_shampoo(**kw),
        scale_by_shampoo(nesterov=nesterov, bias_correction=bias_correction, **kw),
    )
    sd, se = default.init(gs[0]), explicit.init(gs[0])
    for g in gs:
        ud, sd = default.update(g, sd)
        ue, se = explicit.update(g, se)
    np.testing.assert_array_equal(np.asarray(ud["w"]), np.asarray(ue["w"]))
