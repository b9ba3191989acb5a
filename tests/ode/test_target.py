"""TargetCost: the dual-ascent update on the log-weight, bad input, and a small training run that reaches a stated
prediction NFE."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsciml.ode import MLPVectorField, NeuralODE, SolverConfig, SolveStats, TargetCost, TargetCostState


def _stats(nfe, accepted=None):
    nfe = jnp.asarray(nfe)
    acc = nfe if accepted is None else jnp.asarray(accepted)
    return SolveStats(nfe, acc, jnp.zeros_like(acc), nfe, jnp.zeros(nfe.shape, bool))


def test_update_is_dual_ascent_on_the_log_weight():
    tc = TargetCost(target=20.0, init_weight=2.0, learning_rate=0.5, min_weight=1e-2, max_weight=10.0)
    s = tc.init()
    assert isinstance(s, TargetCostState) and not bool(s.saturated)
    np.testing.assert_allclose(s.weight, 2.0, rtol=1e-6)
    s1 = tc.update(s, _stats(jnp.array([30.0, 50.0])))  # batch mean 40 = twice the target: lam *= 2^0.5
    np.testing.assert_allclose(s1.weight, 2.0 * 2.0**0.5, rtol=1e-6)
    np.testing.assert_allclose(s1.cost, 40.0)
    assert int(s1.count) == 1
    s2 = tc.update(s1, _stats(10.0))  # half the target: lam *= 2^-0.5, back to 2
    np.testing.assert_allclose(s2.weight, 2.0, rtol=1e-6)
    hi = s
    for _ in range(20):
        hi = tc.update(hi, _stats(1e4))
    np.testing.assert_allclose(hi.weight, 10.0, rtol=1e-6)  # clipped at max_weight
    assert bool(hi.saturated) and not bool(s2.saturated)
    # under jit, and the regularizer carries the weight without a gradient
    s3 = jax.jit(tc.update)(s, _stats(40.0))
    np.testing.assert_allclose(s3.log_weight, math.log(2.0) + 0.5 * math.log(2.0), rtol=1e-6)
    g = jax.grad(lambda lw: tc.regularizer(eqx.tree_at(lambda t: t.log_weight, s, lw)).error_weight)(s.log_weight)
    assert float(g) == 0.0
    steps = TargetCost(target=4.0, cost="accepted_steps", learning_rate=1.0)
    np.testing.assert_allclose(steps.update(steps.init(), _stats(100.0, accepted=8.0)).weight, 2.0, rtol=1e-6)


def test_bad_input():
    for kw, name in [
        (dict(target=0.0), "target"),
        (dict(target=10.0, learning_rate=-1.0), "learning_rate"),
        (dict(target=10.0, init_weight=float("nan")), "init_weight"),
        (dict(target=10.0, init_weight=1e-9), "min_weight <= init_weight"),
        (dict(target=10.0, cost="flops"), "cost must be one of"),
        (dict(target=10.0, local="unbiased"), "cost='accepted_steps'"),
        (dict(target=10.0, local="sometimes", cost="steps"), "local"),
        (dict(target=10.0, stall_growth=1.0), "stall_growth"),
        (dict(target=10.0, ema_decay=1.0), "ema_decay"),
        (dict(target=10.0, min_improvement=-0.1), "min_improvement"),
    ]:
        with pytest.raises(ValueError, match=name):
            TargetCost(**kw)
    tc = TargetCost(target=10.0)
    with pytest.raises(TypeError, match="state must be a TargetCostState"):
        tc.regularizer(1.0)
    with pytest.raises(TypeError, match="SolveStats"):
        tc.update(tc.init(), {"num_fevals": 3})
    with pytest.raises(Exception, match="num_fevals = -1"):  # an implicit solver's unknown cost
        jax.block_until_ready(tc.update(tc.init(), _stats(-1.0)).cost)


def test_stall_safeguard_stops_raising_the_weight():
    # The cost stays at 4x an unreachable target: each update doubles lam (eta = 0.5, log-step 0.5 ln 4), until lam is
    # stall_growth = 8 times its value when the cost last fell (the first update); then it stays, flagged saturated.
    tc = TargetCost(target=10.0, learning_rate=0.5, stall_growth=8.0, ema_decay=0.0)
    update = jax.jit(tc.update)
    s, weights = tc.init(), []
    for _ in range(10):
        s = update(s, _stats(40.0))
        weights.append(float(s.weight))
    np.testing.assert_allclose(weights[:4], [2.0, 4.0, 8.0, 8.0], rtol=1e-5)
    np.testing.assert_allclose(weights[-1], 8.0, rtol=1e-5)
    assert bool(s.saturated)
    # the cost falls (by more than min_improvement): the anchor moves to lam = 8 and lam may rise again
    s = update(s, _stats(30.0))
    np.testing.assert_allclose(s.weight, 8.0 * 3.0**0.5, rtol=1e-5)
    assert not bool(s.saturated)
    # without the safeguard the same costs drive lam to max_weight
    free = TargetCost(target=10.0, learning_rate=0.5, stall_growth=None, max_weight=1e3)
    f = free.init()
    for _ in range(12):
        f = free.update(f, _stats(40.0))
    np.testing.assert_allclose(f.weight, 1e3, rtol=1e-5)
    # a cost still falling (0.5% per update, 1% counts as progress) is never stopped, and falls of lam are never capped
    s = tc.init()
    for k in range(15):  # lam doubles each update: 2^15 < max_weight = 1e6
        s = update(s, _stats(40.0 * 0.995**k))
        assert not bool(s.saturated), k
    assert float(s.weight) > 1e3
    low = update(s, _stats(5.0))
    np.testing.assert_allclose(low.log_weight, s.log_weight + 0.5 * math.log(0.5), rtol=1e-5)


@pytest.mark.slow  # ~15 s idle, ~30 s on the shared 2-core machine (mostly compilation)
def test_training_reaches_a_target_nfe():
    # A neural ODE fitted to the flow of a rotation (y(1) = expm(A) y0) at rtol 1e-6: the untrained model costs
    # NFE_0 per solve; asking for 0.75 NFE_0 brings the training solves' mean NFE (last 20 of 100 steps) within 10% of
    # it, with the weight raised from its initial value. Float32, batch 8.
    field = MLPVectorField(2, 16, 2, key=jax.random.key(0))
    field = jax.tree_util.tree_map(lambda x: 2.0 * x if eqx.is_inexact_array(x) else x, field)
    model = NeuralODE(field, 0.0, 1.0, SolverConfig(rtol=1e-6, atol=1e-8))
    rot = jax.scipy.linalg.expm(jnp.array([[0.0, -1.0], [1.0, 0.0]]))
    y_probe = jax.random.normal(jax.random.key(99), (16, 2))
    nfe0 = float(jnp.mean(jax.vmap(lambda y: model(y).stats.num_fevals)(y_probe)))
    tc = TargetCost(target=0.75 * nfe0, learning_rate=0.1)
    opt = optax.adam(1e-2)

    @eqx.filter_jit
    def step(m, opt_state, tc_state, y0):
        def loss(m):
            out = jax.vmap(lambda y: m(y, regularizer=tc.regularizer(tc_state)))(y0)
            return jnp.mean((out.ys - y0 @ rot.T) ** 2) + jnp.mean(out.penalty), out.stats

        (_, stats), g = eqx.filter_value_and_grad(loss, has_aux=True)(m)
        updates, opt_state = opt.update(g, opt_state, eqx.filter(m, eqx.is_array))
        return eqx.apply_updates(m, updates), opt_state, tc.update(tc_state, stats)

    m, opt_state, s = model, opt.init(eqx.filter(model, eqx.is_array)), tc.init()
    costs = []
    for i in range(100):
        m, opt_state, s = step(m, opt_state, s, jax.random.normal(jax.random.key(i), (8, 2)))
        costs.append(float(s.cost))
    reached = float(np.mean(costs[-20:]))
    assert abs(reached - tc.target) <= 0.1 * tc.target, (reached, tc.target, nfe0)
    assert float(s.weight) > tc.init_weight
