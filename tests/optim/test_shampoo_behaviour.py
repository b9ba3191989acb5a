"""Shampoo composition, robustness and input validation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsciml.optim import STATIC_ARGS, make_plan, scale_by_shampoo, scale_by_soap, shampoo, soap
from jaxsciml.optim._blocking import from_blocks, to_blocks
from jaxsciml.optim._roots import eigh_inverse_root, newton_inverse_root, safe_update


def mixed_params(key=jax.random.key(0)):
    k = jax.random.split(key, 4)
    return {
        "conv": jax.random.normal(k[0], (3, 3, 4, 8)),
        "dense": jax.random.normal(k[1], (20, 6)),
        "bias": jax.random.normal(k[2], (6,)),
        "scale": jnp.asarray(1.5),
    }


def grads_like(params, seed):
    keys = jax.random.split(jax.random.key(seed), len(jax.tree_util.tree_leaves(params)))
    leaves, treedef = jax.tree_util.tree_flatten(params)
    return jax.tree_util.tree_unflatten(treedef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def run(opt, params, steps=3, jit=True):
    state = opt.init(params)
    upd = jax.jit(opt.update) if jit else opt.update
    for s in range(steps):
        u, state = upd(grads_like(params, s), state, params)
    return u, state


def test_plans_and_block_roundtrip():
    assert make_plan((3, 3, 4, 8), 128).merged == (36, 8)
    p = make_plan((3, 3, 16, 32), 128)
    assert p.merged == (9, 16, 32) and p.kind == "block"
    assert make_plan((7,), 4).kind == "diag" and make_plan((), 4).kind == "diag"
    assert make_plan((1, 1), 4).kind == "diag"
    assert make_plan((300, 5), None, max_preconditioner_dim=100).kind == "diag"
    p = make_plan((7, 9), 4)
    assert p.block == (4, 4) and p.counts == (2, 3) and p.num_blocks == 6
    x = jnp.arange(63.0).reshape(7, 9)
    xb = to_blocks(x, p)
    assert xb.shape == (6, 4, 4)
    np.testing.assert_array_equal(xb[0], x[:4, :4])
    np.testing.assert_array_equal(xb[5][:3, :1], x[4:, 8:])
    np.testing.assert_array_equal(from_blocks(xb, p), x)


def test_mixed_pytree_jit_matches_eager(x64):
    """float64 so that jit vs eager differ only by rounding (float32 roots of nearly singular blocks are noisier)."""
    params = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), mixed_params())
    opt = shampoo(1e-2, block_size=8, precondition_every=2, weight_decay=1e-3)

    u_jit, s_jit = run(opt, params, steps=2, jit=True)
    u_eager, _ = run(opt, params, steps=2, jit=False)
    for a, b in zip(jax.tree_util.tree_leaves(u_jit), jax.tree_util.tree_leaves(u_eager)):
        assert a.shape == b.shape and bool(jnp.all(jnp.isfinite(a)))
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)
    assert int(s_jit[0].count) == 2
    # every state leaf is an array (no Python scalars that change)
    assert all(isinstance(x, jax.Array) for x in jax.tree_util.tree_leaves(s_jit))


def test_chain_inject_hyperparams_schedule_and_multisteps():
    params = {k: v for k, v in mixed_params().items() if k != "conv"}
    sched = optax.linear_schedule(1e-2, 1e-3, 10)
    opt = optax.inject_hyperparams(shampoo, static_args=STATIC_ARGS)(
        learning_rate=sched, block_size=8, precondition_every=2, weight_decay=1e-4
    )
    u, state = run(opt, params)
    assert np.isclose(float(state.hyperparams["learning_rate"]), float(sched(2)))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(u))
    # inject the epsilon/beta2 too: still works (they are traced inside update)
    opt2 = optax.inject_hyperparams(scale_by_shampoo, static_args=STATIC_ARGS)(beta2=0.99, epsilon=1e-5, block_size=8)
    run(opt2, params)
    chained = optax.chain(optax.clip_by_global_norm(1.0), scale_by_shampoo(block_size=8), optax.scale(-1e-2))
    run(chained, params)
    ms = optax.MultiSteps(shampoo(1e-2, block_size=8), every_k_schedule=2)
    u, _ = run(ms, params, steps=2)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(u))
    masked = optax.masked(shampoo(1e-2, block_size=8), {"dense": True, "bias": False, "scale": False})
    run(masked, params)


def test_inject_hyperparams_without_static_args_is_clear():
    opt = optax.inject_hyperparams(shampoo)(learning_rate=1e-2, block_size=8)
    with pytest.raises(TypeError, match="block_size"):
        run(opt, mixed_params())


def test_apply_if_finite_and_internal_skip():
    params = {"w": jnp.ones((6, 4)), "b": jnp.ones(4)}
    opt = optax.apply_if_finite(shampoo(1e-2, block_size=None, precondition_every=1), max_consecutive_errors=3)
    state = opt.init(params)
    good = {"w": jnp.arange(24.0).reshape(6, 4) / 10, "b": jnp.ones(4)}
    bad = {"w": good["w"].at[0, 0].set(jnp.nan), "b": jnp.ones(4)}
    upd = jax.jit(opt.update)
    u, state = upd(good, state, params)
    u, state = upd(bad, state, params)
    assert all(bool(jnp.all(u_ == 0)) for u_ in jax.tree_util.tree_leaves(u))
    assert int(state.notfinite_count) == 1

    # scale_by_shampoo alone: the NaN step never reaches the statistics
    inner = scale_by_shampoo(block_size=None, precondition_every=1)
    s0 = inner.init(params)
    iupd = jax.jit(inner.update)
    _, s1 = iupd(good, s0)
    u2, s2 = iupd(bad, s1)
    for a, b in zip(jax.tree_util.tree_leaves(s1.stats), jax.tree_util.tree_leaves(s2.stats)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(
        jax.tree_util.tree_leaves((s1.roots, s1.graft, s1.mu)), jax.tree_util.tree_leaves((s2.roots, s2.graft, s2.mu))
    ):
        np.testing.assert_array_equal(a, b)
    assert int(s2.count) == 1 and int(s2.skipped) == 1
    assert all(bool(jnp.all(x == 0)) for x in jax.tree_util.tree_leaves(u2))
    _, s3 = iupd(good, s2)
    assert int(s3.count) == 2 and all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(s3))


def test_root_failure_keeps_previous_root():
    a = jnp.stack([jnp.zeros((3, 3)), jnp.full((3, 3), jnp.nan), jnp.diag(jnp.array([4.0, 1.0, 0.25]))])
    prev = jnp.stack([2.0 * jnp.eye(3)] * 3)
    r, ok = eigh_inverse_root(a, 0.5, 1e-6)
    assert ok.tolist() == [False, False, True]
    out = safe_update(r, ok, prev)
    np.testing.assert_array_equal(out[:2], prev[:2])
    np.testing.assert_allclose(jnp.diag(out[2]), jnp.array([0.5, 1.0, 2.0]), rtol=1e-5)
    rn, okn = newton_inverse_root(a, 2, 1e-6)
    assert okn.tolist() == [False, False, True]
    np.testing.assert_allclose(jnp.diag(rn[2]), jnp.array([0.5, 1.0, 2.0]), rtol=1e-4)


def test_zero_gradients_never_nan():
    params = mixed_params()
    opt = shampoo(1e-2, block_size=8, precondition_every=1)
    state = opt.init(params)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    u, state = jax.jit(opt.update)(zeros, state, params)
    assert all(bool(jnp.all(x == 0)) for x in jax.tree_util.tree_leaves(u))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(state))
    # roots stay the identity after a failed (all-zero statistics) refresh
    np.testing.assert_array_equal(state[0].roots[1][0][0], jnp.eye(state[0].roots[1][0].shape[-1]))


def test_bf16_params():
    params = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), mixed_params())
    opt = shampoo(1e-2, block_size=8, precondition_every=1)
    u, state = run(opt, params)
    for x in jax.tree_util.tree_leaves(u):
        assert x.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(x)))
    assert state[0].stats[1][0][0].dtype == jnp.float32


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(block_size=0), "block_size"),
        (dict(block_size=-3), "block_size"),
        (dict(exponent_override=0.0), "exponent_override"),
        (dict(exponent_override=-0.25), "exponent_override"),
        (dict(epsilon=0.0), "epsilon"),
        (dict(epsilon=-1e-6), "epsilon"),
        (dict(graft="lion"), "graft"),
        (dict(root_method="cholesky"), "root_method"),
        (dict(precondition_every=0), "precondition_every"),
        (dict(beta2=0.0), "beta2"),
        (dict(beta1=1.0), "beta1"),
        (dict(root_method="newton", exponent_override=0.3), "exponent_override"),
        (dict(quantize_eigenvectors=True, root_method="newton"), "quantize_eigenvectors"),
        (dict(power_iterations=0), "power_iterations"),
    ],
)
def test_bad_input_raises_at_construction(kwargs, name):
    with pytest.raises(ValueError, match=name):
        scale_by_shampoo(**kwargs)


def test_bad_types_raise():
    with pytest.raises(TypeError, match="block_size"):
        scale_by_shampoo(block_size=4.5)
    with pytest.raises(TypeError, match="mesh"):
        scale_by_shampoo(mesh="devices")
    with pytest.raises(ValueError, match="weight_decay"):
        shampoo(1e-2, weight_decay=-1.0)
    with pytest.raises(TypeError, match="complex"):
        scale_by_shampoo().init({"w": jnp.ones((3, 3), jnp.complex64)})


def test_shampoo_beats_adam_on_ill_conditioned_regression():
    """Least squares with a condition number 1e3 design: Shampoo (EMA statistics, Adam graft) reaches a
    loss at least 2x lower than Adam's (both with the best of 3 learning rates) in 60 steps."""
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.normal(size=(64, 16)))
    x = jnp.asarray(u * np.logspace(0, 3, 16) / 30, jnp.float32)
    w_true = jnp.asarray(rng.normal(size=(16, 4)), jnp.float32)
    y = x @ w_true

    def loss(w):
        return 0.5 * jnp.mean(jnp.sum((x @ w - y) ** 2, -1))

    def train(opt, steps=60):
        w = jnp.zeros((16, 4))
        st = opt.init(w)

        @jax.jit
        def step(w, st):
            g = jax.grad(loss)(w)
            u, st = opt.update(g, st, w)
            return optax.apply_updates(w, u), st

        for _ in range(steps):
            w, st = step(w, st)
        return float(loss(w))

    l0 = float(loss(jnp.zeros((16, 4))))
    best_adam = min(train(optax.adam(lr)) for lr in (0.03, 0.1, 0.3))
    best_sh = min(
        train(shampoo(lr, block_size=None, precondition_every=1, beta2=0.99, graft="adam")) for lr in (0.03, 0.1, 0.3)
    )
    assert best_sh < 0.5 * best_adam < l0


@pytest.mark.parametrize("factory", [scale_by_shampoo, scale_by_soap])
@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_, jnp.uint8])
def test_integer_and_boolean_leaves_rejected_with_path(factory, dtype):
    params = {"net": {"w": jnp.ones((4, 3)), "steps": jnp.zeros((2, 2), dtype)}}
    with pytest.raises(TypeError, match=r"\['net'\]\['steps'\].*floating-point"):
        factory().init(params)
    # an integer update reaching update() (e.g. a hand-made gradient) is rejected as well
    state = factory().init({"w": jnp.ones((4, 3))})
    with pytest.raises(TypeError, match=r"\['w'\]"):
        factory().update({"w": jnp.ones((4, 3), dtype)}, state)


@pytest.mark.parametrize("factory", [shampoo, soap])
def test_none_leaves_and_masked_subtrees(factory):
    """None leaves are skipped; under optax.masked only the selected subtree is preconditioned (the rest passes
    through unchanged, here: untouched by the inner optimizer) and a masked-out integer leaf is fine."""
    params = {"w": jnp.linspace(-1.0, 1.0, 20).reshape(5, 4), "b": jnp.ones(4), "none": None, "count": jnp.int32(3)}
    grads = {"w": jnp.cos(params["w"]), "b": jnp.ones(4), "none": None, "count": jnp.int32(0)}
    mask = {"w": True, "b": True, "none": False, "count": False}
    opt = optax.masked(factory(1e-2, block_size=4, precondition_every=1), mask)
    state = opt.init(params)
    upd = jax.jit(opt.update)
    u, state = upd(grads, state, params)
    u, state = upd(grads, state, params)
    assert u["none"] is None and int(u["count"]) == 0
    assert bool(jnp.all(jnp.isfinite(u["w"]))) and float(jnp.max(jnp.abs(u["w"]))) > 0
    # the masked inner optimizer on the selected leaves equals the plain optimizer on just those leaves
    sub = {"w": params["w"], "b": params["b"]}
    inner = factory(1e-2, block_size=4, precondition_every=1)
    s2 = inner.init(sub)
    g2 = {"w": grads["w"], "b": grads["b"]}
    upd2 = jax.jit(inner.update)
    u2, s2 = upd2(g2, s2, sub)
    u2, s2 = upd2(g2, s2, sub)
    # float32 roots of the rank-deficient 2-step statistics differ by ~1e-3 relative between two compiled programs
    np.testing.assert_allclose(u["w"], u2["w"], rtol=1e-2, atol=2e-5)
    np.testing.assert_allclose(u["b"], u2["b"], rtol=1e-2, atol=2e-5)


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_bias_correction_matches_optax_ema(x64, nesterov):
    """With a fixed gradient sequence the Shampoo directions do not depend on the momentum, so ``beta1 > 0`` must
    equal the ``beta1 = 0`` directions passed through an EMA: ``optax.ema(debias=False)`` for the default
    ``bias_correction=False`` (distributed_shampoo's moving-average momentum), ``debias=True`` for Adam's correction;
    with ``nesterov`` the direction is ``beta1 m_t + (1 - beta1) d_t`` (debiased as optax's nadam when corrected).
    Float64: the comparison is exact up to round-off (1e-12)."""
    params = {"w": jnp.ones((20, 6), jnp.float64), "b": jnp.ones(6, jnp.float64)}  # a blocked matrix and a vector
    beta1 = 0.9
    kw = dict(block_size=16, precondition_every=2, graft="rmsprop", graft_beta2=0.99, beta2=0.99)
    plain = scale_by_shampoo(beta1=0.0, **kw)
    opts = {bc: scale_by_shampoo(beta1=beta1, nesterov=nesterov, bias_correction=bc, **kw) for bc in (True, False)}
    states = {bc: o.init(params) for bc, o in opts.items()}
    updates = {bc: jax.jit(o.update) for bc, o in opts.items()}
    s0, plain_update = plain.init(params), jax.jit(plain.update)
    mu = jax.tree_util.tree_map(jnp.zeros_like, params)
    emas = {bc: optax.ema(beta1, debias=bc) for bc in (True, False)}
    ema_states = {bc: e.init(params) for bc, e in emas.items()}
    for t in range(1, 6):
        g = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), grads_like(params, t))
        d, s0 = plain_update(g, s0)
        mu = jax.tree_util.tree_map(lambda m, x: beta1 * m + (1 - beta1) * x, mu, d)
        for bc in opts:
            u, states[bc] = updates[bc](g, states[bc])
            if nesterov:
                if bc:
                    want = jax.tree_util.tree_map(
                        lambda m, x, t=t: beta1 * m / (1 - beta1 ** (t + 1)) + (1 - beta1) * x / (1 - beta1**t), mu, d
                    )
                else:
                    want = jax.tree_util.tree_map(lambda m, x: beta1 * m + (1 - beta1) * x, mu, d)
            else:
                want, ema_states[bc] = emas[bc].update(d, ema_states[bc])
            for a, b in zip(jax.tree_util.tree_leaves(u), jax.tree_util.tree_leaves(want)):
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_bias_correction_must_be_bool():
    with pytest.raises(TypeError, match="bias_correction"):
        shampoo(0.1, bias_correction="no")
    with pytest.raises(TypeError, match="nesterov"):
        scale_by_shampoo(nesterov=1)
