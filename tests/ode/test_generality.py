"""Generality of the ode pillar: PyTree states through every regularizer and model under jit/vmap/grad, implicit and
IMEX solvers with the error heuristic, fixed-step solves, a regularizer defined outside the package, weight schedules,
and shared-step vs per-example batching."""

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
    AbstractRegularizer,
    HeuristicRegularization,
    MLPVectorField,
    NeuralODE,
    NeuralSDE,
    NoRegularization,
    ODEClassifier,
    ODEOutput,
    SolverConfig,
    TayNODE,
    regularized_solve,
    solve_with_heuristics,
)

_REGS = {
    "none": NoRegularization(),
    "global": HeuristicRegularization(1.0, 0.1),
    "local unbiased": HeuristicRegularization(1.0, 0.1, local="unbiased"),
    "local biased": HeuristicRegularization(1.0, 0.1, local="biased"),
    "RNODE": RNODE(0.1, 0.1),
    "TayNODE": TayNODE(0.1),
    "STEER": STEER(0.2),
}


class _PVField(eqx.Module):
    """A damped nonlinear oscillator on the state ``(position (2,), velocity (2,))``."""

    w: jax.Array

    def __call__(self, t, state, args):
        x, v = state
        return v, -jnp.tanh(self.w @ x) - 0.1 * v


class _FlatPV(eqx.Module):
    """The same field on the flattened state ``[x, v]``."""

    pv: _PVField

    def __call__(self, t, y, args):
        dx, dv = self.pv(t, (y[:2], y[2:]), args)
        return jnp.concatenate([dx, dv])


@pytest.mark.parametrize("name", list(_REGS))
def test_pytree_state_matches_flat_state(x64, name):
    # A (position, velocity) tuple and the flat vector [x, v] are the same ODE: the RMS norms and the augmented
    # integrals run over all leaves, so penalties and heuristics agree to rounding (1e-7: the stiffness ratio divides
    # by a stage difference of size O(h^5 f), which amplifies the rounding of the per-leaf vs flat sums). RNODE draws
    # eps per leaf, and its Jacobian integral is part of the state the controller sees, so the step sequences differ:
    # only its kinetic term is compared, to the solve's tolerance.
    reg = _REGS[name]
    pv = _PVField(jnp.array([[1.0, 0.5], [-0.5, 2.0]]))
    x0, v0 = jnp.array([0.5, -1.0]), jnp.array([0.2, 0.3])
    ts = None if name == "STEER" else jnp.linspace(0.25, 2.0, 4)
    cfg = SolverConfig(rtol=1e-7, atol=1e-9)
    key = jax.random.key(0)
    tree = regularized_solve(pv, (x0, v0), 0.0, 2.0, ts=ts, config=cfg, regularizer=reg, key=key)
    flat = regularized_solve(
        _FlatPV(pv), jnp.concatenate([x0, v0]), 0.0, 2.0, ts=ts, config=cfg, regularizer=reg, key=key
    )
    np.testing.assert_allclose(jnp.concatenate(tree.ys, axis=-1), flat.ys, rtol=1e-6, atol=1e-9)
    if name == "RNODE":
        np.testing.assert_allclose(tree.extra["kinetic"], flat.extra["kinetic"], rtol=1e-5)
        return
    np.testing.assert_allclose(tree.error, flat.error, rtol=1e-7, atol=1e-14)
    np.testing.assert_allclose(tree.stiffness, flat.stiffness, rtol=1e-7, atol=1e-14)
    np.testing.assert_allclose(tree.penalty, flat.penalty, rtol=1e-7, atol=1e-14)
    assert int(tree.stats.num_fevals) == int(flat.stats.num_fevals)


@pytest.mark.parametrize(
    "name",
    ["global"] + [pytest.param(n, marks=pytest.mark.slow) for n in ("local unbiased", "RNODE", "TayNODE")],
)
def test_pytree_models_jit_vmap_grad(name):
    # dict and image-shaped states through NeuralODE under jit(grad(mean(vmap(...)))) (float32, default tolerances):
    # finite values, a positive penalty, non-zero parameter gradients.
    reg = _REGS[name]
    field = MLPVectorField(2 * 3 * 3 + 2, 16, 1, key=jax.random.key(1))  # flattens any PyTree with 20 elements
    model = NeuralODE(field, 0.0, 1.0)
    y0s = {"img": jax.random.normal(jax.random.key(2), (3, 2, 3, 3)), "v": jnp.ones((3, 2))}
    keys = jax.random.split(jax.random.key(3), 3)

    @eqx.filter_jit
    @eqx.filter_value_and_grad(has_aux=True)
    def loss(m):
        out = jax.vmap(lambda y, k: m(y, regularizer=reg, key=k))(y0s, keys)
        task = jnp.mean(out.ys["img"] ** 2) + jnp.mean(out.ys["v"] ** 2)
        return task + jnp.mean(out.penalty), out

    (val, out), g = loss(model)
    assert out.ys["img"].shape == (3, 2, 3, 3) and out.ys["v"].shape == (3, 2)
    assert np.isfinite(float(val)) and np.all(np.asarray(out.penalty) > 0)
    leaves = jax.tree_util.tree_leaves(eqx.filter(g, eqx.is_array))
    assert all(np.all(np.isfinite(x)) for x in leaves) and any(np.any(x != 0) for x in leaves)


def test_neural_sde_pytree_state():
    drift = MLPVectorField(4, 8, 1, key=jax.random.key(0))
    diffusion = MLPVectorField(4, 8, 1, key=jax.random.key(1), final_activation=lambda x: 0.1 * jax.nn.sigmoid(x))
    sde = NeuralSDE(drift, diffusion, 0.0, 1.0)
    y0 = (jnp.ones(2), jnp.zeros((1, 2)))
    out = sde(y0, key=jax.random.key(2), regularizer=HeuristicRegularization(1.0))
    assert out.ys[0].shape == (2,) and out.ys[1].shape == (1, 2) and float(out.penalty) > 0
    flat = sde(jnp.concatenate([y0[0], y0[1].ravel()]), key=jax.random.key(2))
    np.testing.assert_allclose(jnp.concatenate([out.ys[0], out.ys[1].ravel()]), flat.ys, rtol=1e-5)


# --------------------------------------------------------------------------------------------- implicit / fixed-step
def _stiff(t, y, args):
    return -jnp.array([50.0, 1.0]) * (y - jnp.cos(t))


def test_kvaerno5_error_heuristic_matches_replay(x64):
    # Kvaerno5 (SDIRK) with explicit root-finder tolerances so that a replay of each accepted step with the same
    # solver reproduces its error estimate; the recorded R_E equals the replayed sum (1e-8: Newton iterates agree to
    # the root finder's tolerance, far below the error estimate itself).
    root = dfx.VeryChord(rtol=1e-10, atol=1e-12)
    solver = dfx.Kvaerno5(root_finder=root)
    ctrl = dfx.PIDController(rtol=1e-5, atol=1e-7)
    y0 = jnp.array([2.0, 0.0])
    sol, h, stats = solve_with_heuristics(
        _stiff, solver, 0.0, 2.0, y0, stepsize_controller=ctrl, heuristics=("error",), saveat=dfx.SaveAt(steps=True)
    )
    n = int(stats.num_accepted)
    ts = np.concatenate([[0.0], np.asarray(sol.ts[:n])])
    ys = jnp.concatenate([y0[None], sol.ys[:n]])
    term = dfx.ODETerm(_stiff)

    @jax.jit
    def one(ta, tb, ya):
        y1, err, _, _, _ = solver.step(term, ta, tb, ya, None, solver.init(term, ta, tb, ya, None), False)
        scaled = err / (ctrl.atol + ctrl.rtol * jnp.maximum(jnp.abs(ya), jnp.abs(y1)))
        return jnp.sqrt(jnp.mean(scaled**2)) * (tb - ta)

    ref = sum(float(one(ts[i], ts[i + 1], ys[i])) for i in range(n))
    np.testing.assert_allclose(float(h.error), ref, rtol=1e-8)
    assert float(h.error) > 0 and int(stats.num_fevals) == -1  # implicit cost depends on the Newton iterations
    # the solution: y_i = particular + C_i exp(-a_i t); the a_1 = 50 transient has decayed at t = 2, the a_2 = 1 one not
    exact = np.array([50 * (50 * np.cos(2) + np.sin(2)) / 2501, (np.cos(2) + np.sin(2)) / 2 - 0.5 * np.exp(-2.0)])
    np.testing.assert_allclose(sol.ys[n - 1], exact, atol=2e-3)
    # the gradient of R_E through the implicit solve is finite
    g = jax.grad(
        lambda a: (
            solve_with_heuristics(
                lambda t, y, _: a * _stiff(t, y, None),
                dfx.Kvaerno5(),
                0.0,
                2.0,
                y0,
                stepsize_controller=ctrl,
                heuristics=("error",),
            )[1].error
        )
    )(1.0)
    assert np.isfinite(float(g))


def test_implicit_regularized_solve_and_stiffness_is_erk_only(x64):
    out = regularized_solve(
        _stiff,
        jnp.ones(2),
        0.0,
        1.0,
        config=SolverConfig(solver=dfx.Kvaerno5()),
        regularizer=HeuristicRegularization(1.0),
    )
    assert float(out.penalty) > 0
    for solver in (dfx.Kvaerno5(), dfx.KenCarp4()):
        with pytest.raises(ValueError, match="explicit Runge--Kutta"):
            solve_with_heuristics(_stiff, solver, 0.0, 1.0, jnp.ones(2), heuristics=("stiffness",))


def test_fixed_step_euler_without_heuristics(x64):
    ts = np.linspace(0.0, 1.0, 11)
    sol, h, stats = solve_with_heuristics(
        lambda t, y, a: -2.0 * y + t,
        dfx.Euler(),
        0.0,
        1.0,
        jnp.ones(2),
        stepsize_controller=dfx.StepTo(ts),
        heuristics=(),
    )
    y = np.ones(2)
    for a, b in zip(ts[:-1], ts[1:]):
        y = y + (b - a) * (-2.0 * y + a)
    np.testing.assert_allclose(sol.ys[-1], y, rtol=1e-13)
    assert int(stats.num_steps) == 10 and int(stats.num_fevals) == 10 and float(h.error) == 0.0


# -------------------------------------------------------------------------------- extensibility, schedules, batching
class EndpointL2(AbstractRegularizer):
    """A user-defined regularizer: ``weight * ||y(t1)||^2``, built from ``SolverConfig.solve``."""

    weight: float = 1.0

    def solve(self, vector_field, y0, t0, t1, *, ts, args, config, key, step):
        ys, h, stats = config.solve(vector_field, y0, t0, t1, ts=ts, args=args)
        last = ys if ts is None else jax.tree_util.tree_map(lambda y: y[-1], ys)
        pen = self.weight * sum(jnp.sum(y**2) for y in jax.tree_util.tree_leaves(last))
        return ODEOutput(ys, pen, h.error, h.stiffness, stats)


def test_user_defined_regularizer(x64):
    a = 0.7
    out = regularized_solve(
        lambda t, y, _: -a * y,
        jnp.array([1.0, 2.0]),
        0.0,
        1.0,
        config=SolverConfig(rtol=1e-10, atol=1e-12),
        regularizer=EndpointL2(3.0),
    )
    np.testing.assert_allclose(out.penalty, 3.0 * 5.0 * np.exp(-2 * a), rtol=1e-8)
    model = NeuralODE(MLPVectorField(2, 8, 1, key=jax.random.key(0)))
    g = eqx.filter_grad(lambda m: m(jnp.ones(2), regularizer=EndpointL2(1.0)).penalty)(model)
    assert any(np.any(x != 0) for x in jax.tree_util.tree_leaves(eqx.filter(g, eqx.is_array)))

    class Incomplete(AbstractRegularizer):
        weight: float = 1.0

    with pytest.raises(TypeError):
        Incomplete()


def test_weight_schedules(x64):
    f, y0 = (lambda t, y, _: -3.0 * jnp.sin(y)), jnp.array([1.0, -0.5])
    sched = optax.linear_schedule(100.0, 10.0, 10)
    reg = HeuristicRegularization(error_weight=sched, stiffness_weight=lambda s: 0.5)
    raw = regularized_solve(f, y0, 0.0, 1.0, regularizer=HeuristicRegularization(1.0, 1.0))
    run = jax.jit(lambda step: regularized_solve(f, y0, 0.0, 1.0, regularizer=reg, step=step).penalty)
    for step, lam in ((0, 100.0), (5, 55.0), (10, 10.0), (50, 10.0)):
        np.testing.assert_allclose(run(step), lam * raw.error + 0.5 * raw.stiffness, rtol=1e-10)
    with pytest.raises(ValueError, match="step="):
        regularized_solve(f, y0, 0.0, 1.0, regularizer=reg)


def test_shared_step_and_vmap_batching(x64):
    # Both modes solve the same ODEs: at tight tolerances the predictions agree (1e-6). Shared mode has one step
    # sequence (scalar stats) and the joint system's heuristics; vmap mode per-example stats and the mean penalty.
    # Penalties are compared to 1e-5: at rtol 1e-9 the stiffness ratio divides stage differences of size O(h^5 f),
    # so differently fused but equal computations differ by ~1e-6 relative.
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    clf = ODEClassifier(
        eqx.nn.Linear(5, 3, key=k1),
        NeuralODE(MLPVectorField(3, 16, 1, key=k2), config=SolverConfig(rtol=1e-9, atol=1e-9)),
        eqx.nn.Linear(3, 4, key=k3),
    )
    xs = jax.random.normal(jax.random.key(4), (6, 5))
    reg = HeuristicRegularization(1.0, 0.1)
    shared = eqx.filter_jit(lambda m: m.batched(xs, shared_steps=True, regularizer=reg))(clf)
    per = eqx.filter_jit(lambda m: m.batched(xs, shared_steps=False, regularizer=reg))(clf)
    np.testing.assert_allclose(shared.ys, per.ys, rtol=1e-6, atol=1e-8)
    assert shared.ys.shape == (6, 4) and shared.stats.num_steps.shape == () and per.stats.num_steps.shape == (6,)
    h0s = jax.vmap(clf.encoder)(xs)
    _, h, _ = solve_with_heuristics(
        lambda t, y, a: jax.vmap(clf.ode.field, in_axes=(None, 0, None))(t, y, a),
        dfx.Tsit5(),
        0.0,
        1.0,
        h0s,
        stepsize_controller=clf.ode.config.controller,
    )
    np.testing.assert_allclose(shared.penalty, h.error + 0.1 * h.stiffness, rtol=1e-5)
    np.testing.assert_allclose(
        per.penalty, jnp.mean(jax.vmap(lambda x: clf(x, regularizer=reg).penalty)(xs)), rtol=1e-5
    )
    # trajectories: batch axis first in both modes
    ts = jnp.linspace(0.1, 1.0, 3)
    a = clf.ode.batched(h0s, ts, shared_steps=True)
    b = clf.ode.batched(h0s, ts, shared_steps=False)
    assert a.ys.shape == b.ys.shape == (6, 3, 3)
    np.testing.assert_allclose(a.ys, b.ys, rtol=1e-6, atol=1e-8)
    g = eqx.filter_grad(lambda m: jnp.sum(m.batched(xs, regularizer=reg).ys) + m.batched(xs, regularizer=reg).penalty)(
        clf
    )
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(eqx.filter(g, eqx.is_array)))
