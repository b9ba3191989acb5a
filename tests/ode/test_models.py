"""Regularizers (analytic values on linear ODEs), models (shapes, vmap, grad), the neural SDE step reduction, bad
input, and training inside the sharded data-parallel step of jaxsciml.train."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsciml.ode import (
    RNODE,
    STEER,
    HeuristicRegularization,
    LatentODE,
    MLPVectorField,
    NeuralODE,
    NeuralSDE,
    ODEClassifier,
    SolverConfig,
    TayNODE,
    regularized_solve,
    solve_with_heuristics,
    taylor_derivative,
)

A = 0.7  # y' = -A y in the analytic tests


def _linear(t, y, args):
    return -A * y


TIGHT = SolverConfig(rtol=1e-10, atol=1e-12)


def test_taylor_derivative_linear_and_time_dependent(x64):
    y = jnp.array([1.0, -2.0, 0.5])
    for k in (1, 2, 3, 4):
        np.testing.assert_allclose(taylor_derivative(_linear, 0.3, y, None, k), (-A) ** k * y, rtol=1e-12)
    # y' = (sin t, y0): y'' = (cos t, sin t), y''' = (-sin t, cos t)
    f = lambda t, y, a: jnp.stack([jnp.sin(t), y[0]])
    y = jnp.array([0.2, 0.1])
    np.testing.assert_allclose(taylor_derivative(f, 0.4, y, None, 2), [np.cos(0.4), np.sin(0.4)], rtol=1e-12)
    np.testing.assert_allclose(taylor_derivative(f, 0.4, y, None, 3), [-np.sin(0.4), np.cos(0.4)], rtol=1e-12)


def test_rnode_and_taynode_integrals_are_analytic(x64):
    # y = y0 exp(-A t): int_0^T ||f||^2 = A^2 |y0|^2 (1 - e^{-2AT}) / (2A); ||eps^T df/dy||^2 = A^2 ||eps||^2;
    # int ||y^(K)||^2 / n = A^{2K} |y0|^2 (1 - e^{-2AT}) / (2A n). Tolerance 1e-7: the solve's rtol is 1e-10.
    y0, T = jnp.array([1.0, -2.0, 0.5]), 1.5
    decay = (1 - np.exp(-2 * A * T)) / (2 * A)
    key = jax.random.key(3)
    out = regularized_solve(_linear, y0, 0.0, T, config=TIGHT, regularizer=RNODE(0.5, 2.0), key=key)
    eps = jax.random.normal(key, y0.shape, y0.dtype)
    np.testing.assert_allclose(out.extra["kinetic"], A**2 * jnp.sum(y0**2) * decay, rtol=1e-7)
    np.testing.assert_allclose(out.extra["jacobian"], A**2 * jnp.sum(eps**2) * T, rtol=1e-7)
    np.testing.assert_allclose(out.penalty, 0.5 * out.extra["kinetic"] + 2.0 * out.extra["jacobian"], rtol=1e-12)
    np.testing.assert_allclose(out.ys, y0 * np.exp(-A * T), rtol=1e-8)
    for k in (2, 3):
        out = regularized_solve(_linear, y0, 0.0, T, config=TIGHT, regularizer=TayNODE(0.1, order=k))
        np.testing.assert_allclose(out.extra["taylor"], A ** (2 * k) * jnp.sum(y0**2) * decay / 3, rtol=1e-7)
        np.testing.assert_allclose(out.penalty, 0.1 * out.extra["taylor"], rtol=1e-12)


def test_steer_end_time(x64):
    y0, T, b = jnp.array([1.0, 2.0]), 1.0, 0.4
    for i in range(3):
        out = regularized_solve(_linear, y0, 0.0, T, config=TIGHT, regularizer=STEER(b), key=jax.random.key(i))
        t1 = float(out.extra["t1"])
        assert T - b <= t1 <= T + b
        np.testing.assert_allclose(out.ys, y0 * np.exp(-A * t1), rtol=1e-8)
    with pytest.raises(ValueError, match="endpoint"):
        regularized_solve(_linear, y0, 0.0, T, ts=jnp.linspace(0, 1, 3), regularizer=STEER(b), key=jax.random.key(0))
    with pytest.raises(ValueError, match="b must be smaller"):
        regularized_solve(_linear, y0, 0.0, T, regularizer=STEER(1.5), key=jax.random.key(0))


def test_heuristic_penalty_matches_solve(x64):
    field = MLPVectorField(2, 8, 1, key=jax.random.key(0))
    y0 = jnp.array([0.5, -1.0])
    cfg = SolverConfig(rtol=1e-5, atol=1e-7)
    out = NeuralODE(field, 0.0, 2.0, cfg)(y0, regularizer=HeuristicRegularization(2.0, 0.5))
    sol, h, stats = solve_with_heuristics(field, dfx.Tsit5(), 0.0, 2.0, y0, stepsize_controller=cfg.controller)
    np.testing.assert_allclose(out.penalty, 2.0 * h.error + 0.5 * h.stiffness, rtol=1e-12)
    np.testing.assert_allclose(out.ys, sol.ys[-1], rtol=1e-12)
    assert int(out.stats.num_fevals) == int(stats.num_fevals) > 0


def test_models_vmap_grad_and_local_backsolve():
    key = jax.random.key(0)
    k1, k2, k3 = jax.random.split(key, 3)
    cfg = SolverConfig(adjoint=dfx.BacksolveAdjoint())
    clf = ODEClassifier(
        eqx.nn.Linear(5, 4, key=k1),
        NeuralODE(MLPVectorField(4, 16, 1, key=k2), config=cfg),
        eqx.nn.Linear(4, 3, key=k3),
    )
    xs = jax.random.normal(key, (6, 5))
    keys = jax.random.split(key, 6)
    reg = HeuristicRegularization(1.0, 0.1, local="unbiased")

    @eqx.filter_jit
    @eqx.filter_value_and_grad(has_aux=True)
    def loss(m):
        out = jax.vmap(lambda x, k: m(x, regularizer=reg, key=k))(xs, keys)
        return jnp.mean(jax.nn.logsumexp(out.ys, axis=-1)) + jnp.mean(out.penalty), out

    (val, out), g = loss(clf)
    assert out.ys.shape == (6, 3) and out.penalty.shape == (6,)
    assert np.all(np.asarray(out.penalty) > 0) and np.isfinite(float(val))
    leaves = jax.tree_util.tree_leaves(eqx.filter(g, eqx.is_array))
    assert all(np.all(np.isfinite(x)) for x in leaves)
    assert any(np.any(np.asarray(x) != 0) for x in jax.tree_util.tree_leaves(g.ode))

    lat = LatentODE(3, 4, 8, 16, key=key)
    ts = jnp.sort(jax.random.uniform(k1, (7,)))
    xs = jax.random.normal(k2, (7, 3))
    mask = jnp.array([1.0, 0, 1, 1, 0, 1, 1])
    out = lat(ts, xs, mask, regularizer=HeuristicRegularization(1.0))
    assert out.ys.shape == (7, 3) and float(out.error) > 0
    # unobserved entries do not influence the prediction
    out2 = lat(ts, xs.at[1].set(100.0).at[4].set(-5.0), mask, regularizer=HeuristicRegularization(1.0))
    np.testing.assert_allclose(out.ys, out2.ys, rtol=1e-6)


def test_bad_input():
    with pytest.raises(ValueError, match="error_weight"):
        HeuristicRegularization(error_weight=-1.0)
    with pytest.raises(ValueError, match="stiffness_weight"):
        HeuristicRegularization(1.0, float("nan"))
    with pytest.raises(ValueError, match="kinetic_weight"):
        RNODE(kinetic_weight=-0.1)
    with pytest.raises(ValueError, match="weight"):
        TayNODE(weight=-1.0)
    with pytest.raises(ValueError, match="order"):
        TayNODE(order=0)
    with pytest.raises(ValueError, match="rtol"):
        SolverConfig(rtol=0.0)
    with pytest.raises(ValueError, match="atol"):
        SolverConfig(atol=-1e-6)
    with pytest.raises(TypeError, match="solver=Euler"):
        SolverConfig(solver=dfx.Euler())
    field = MLPVectorField(2, 8, 1, key=jax.random.key(0))
    with pytest.raises(ValueError, match="t1"):
        NeuralODE(field, 1.0, 1.0)
    node = NeuralODE(field)
    with pytest.raises(ValueError, match="y0"):
        node(jnp.ones(3))
    with pytest.raises(ValueError, match="key"):
        node(jnp.ones(2), regularizer=RNODE())
    flag = NeuralODE(lambda t, y, a: -1e4 * y, config=SolverConfig(max_steps=4, on_max_steps="flag"))
    assert bool(flag(jnp.ones(2)).stats.hit_max_steps)
    # issue 21's cryptic cases, now errors that name the argument
    with pytest.raises(ValueError, match="dt0 must be a non-zero"):
        SolverConfig(dt0=0.0)
    with pytest.raises(TypeError, match="KenCarp4 is an IMEX solver.*Kvaerno5"):
        SolverConfig(solver=dfx.KenCarp4())
    with pytest.raises(ValueError, match="local='biased'.*ts=None.*local='unbiased'"):
        node(jnp.ones(2), regularizer=HeuristicRegularization(1.0, local="biased"), key=jax.random.key(0))


def _sde(scale_noise=0.05):
    k1, k2 = jax.random.split(jax.random.key(0))
    drift = MLPVectorField(2, 16, 2, key=k1)
    drift = eqx.tree_at(lambda d: d.mlp.layers[-1].weight, drift, drift.mlp.layers[-1].weight * 8)
    diffusion = MLPVectorField(2, 8, 1, key=k2, final_activation=lambda x: scale_noise * jax.nn.sigmoid(x))
    return NeuralSDE(drift, diffusion, 0.0, 1.0, rtol=1e-2, atol=1e-2, dtmin=1e-4)


@pytest.mark.slow  # ~65 s on a 2-core CI machine; NeuralSDE also runs in test_generality's default tests
def test_neural_sde_error_regularization_reduces_steps():
    # Same model, data, noise and optimiser; only the error weight differs. After 25 Adam steps the regularized SDE
    # takes fewer solver steps on fresh Brownian paths.
    y0s = jax.random.normal(jax.random.key(1), (8, 2))
    keys = jax.random.split(jax.random.key(2), 8)
    test_keys = jax.random.split(jax.random.key(3), 8)
    target = jnp.array([1.0, -1.0])
    opt = optax.adam(3e-3)

    def train(lam):
        m = _sde()
        reg = HeuristicRegularization(lam) if lam > 0 else None
        st = opt.init(eqx.filter(m, eqx.is_array))

        @eqx.filter_jit
        def step(m, st):
            def loss(m):
                out = jax.vmap(lambda y, k: m(y, key=k, regularizer=reg))(y0s, keys)
                return jnp.mean((out.ys - target) ** 2) + jnp.mean(out.penalty)

            g = eqx.filter_grad(loss)(m)
            u, st = opt.update(g, st, eqx.filter(m, eqx.is_array))
            return eqx.apply_updates(m, u), st

        for _ in range(25):
            m, st = step(m, st)
        out = eqx.filter_jit(jax.vmap(lambda y, k: m(y, key=k)))(y0s, test_keys)
        return float(jnp.mean(out.stats.num_steps)), float(jnp.mean(out.error))

    steps_unreg, _ = train(0.0)
    steps_reg, _ = train(1.0)
    assert steps_reg < steps_unreg, (steps_reg, steps_unreg)


def test_sde_bad_regularizer():
    sde = _sde()
    with pytest.raises(ValueError, match="stiffness"):
        sde(jnp.ones(2), key=jax.random.key(0), regularizer=HeuristicRegularization(1.0, 1.0))
    with pytest.raises(ValueError, match="RNODE"):
        sde(jnp.ones(2), key=jax.random.key(0), regularizer=RNODE())


def test_trains_in_sharded_data_parallel_step(devices4):
    from jaxsciml.train import data_mesh, make_sharded_train_step, replicate, shard_batch

    mesh = data_mesh(devices4)
    node = NeuralODE(MLPVectorField(2, 16, 1, key=jax.random.key(0)), 0.0, 1.0)
    reg = HeuristicRegularization(0.1, 0.01)
    y0 = jax.random.normal(jax.random.key(1), (8, 2))
    batch = {"y0": y0, "target": 0.5 * y0}

    def loss_fn(model, batch):
        out = jax.vmap(lambda y: model(y, regularizer=reg))(batch["y0"])
        return jnp.mean((out.ys - batch["target"]) ** 2) + jnp.mean(out.penalty)

    opt = optax.adam(1e-2)
    step = make_sharded_train_step(loss_fn, opt, mesh)
    model = replicate(node, mesh)
    opt_state = replicate(opt.init(eqx.filter(node, eqx.is_array)), mesh)
    sharded = shard_batch(batch, mesh)
    first = float(loss_fn(node, batch))
    for _ in range(15):
        model, opt_state, loss, *_ = step(model, opt_state, sharded)
    # the sharded step computes the same loss as a single-device evaluation, and training decreases it
    np.testing.assert_allclose(float(loss_fn(model, batch)), float(loss_fn(jax.device_get(model), batch)), rtol=1e-5)
    assert float(loss_fn(model, batch)) < 0.7 * first
