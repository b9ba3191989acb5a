"""Heuristic-recording solves: exact agreement with a replay of the accepted steps, analytic stiffness values,
finite-difference gradients, function-evaluation counts and bad input."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsciml.ode import HeuristicSolver, initial_step_size, solve_with_heuristics, stiffness_stage_pair
from tests.helpers import assert_transformable


def _mlp_field(key, scale=3.0, dim=2):
    mlp = eqx.nn.MLP(dim, dim, 16, 2, activation=jnp.tanh, key=key)
    mlp = jax.tree_util.tree_map(lambda x: x * scale if eqx.is_array(x) else x, mlp)
    return mlp


def _field(mlp):
    return lambda t, y, args: mlp(y)


def _dt0(solver, f, y0, t0, t1, ctrl):
    """The first step solve_with_heuristics takes with dt0=None (Hairer's estimate)."""
    order = solver.order(dfx.ODETerm(f))
    return initial_step_size(f, t0, t1, y0, None, order=order, rtol=ctrl.rtol, atol=ctrl.atol)


def _replay(solver, f, y0, t0, t1, ctrl, record_stiffness):
    """Re-solve saving every accepted step, then recompute the heuristics step by step with the inner solver."""
    term = dfx.ODETerm(f)
    dt0 = _dt0(solver, f, y0, t0, t1, ctrl)
    sol = dfx.diffeqsolve(
        term, solver, t0, t1, dt0, y0, stepsize_controller=ctrl, saveat=dfx.SaveAt(steps=True), max_steps=4000
    )
    n = int(sol.stats["num_accepted_steps"])
    ts = np.concatenate([[t0], np.asarray(sol.ts[:n])])
    ys = jnp.concatenate([y0[None], sol.ys[:n]])
    w = HeuristicSolver(solver, rtol=ctrl.rtol, atol=ctrl.atol, record_stiffness=record_stiffness)

    @jax.jit
    def one(ta, tb, ya):
        state = solver.init(term, ta, tb, ya, None)
        y1, y_err, info, _, _ = solver.step(term, ta, tb, ya, None, state, False)
        stiff = w.local_stiffness(info) if record_stiffness else 0.0
        return y1, w.local_error(ya, y1, y_err) * (tb - ta), stiff

    err, stiff = 0.0, 0.0
    for i in range(n):
        y1, e, s = one(ts[i], ts[i + 1], ys[i])
        np.testing.assert_allclose(y1, ys[i + 1], rtol=1e-13, atol=1e-13)  # same step sequence as the solve
        err += float(e)
        stiff += float(s)
    return err, stiff, sol


@pytest.mark.parametrize(
    "solver, stiff",
    [(dfx.Tsit5(), True), (dfx.Dopri5(), True), (dfx.Dopri8(), True), (dfx.Bosh3(), False), (dfx.Heun(), False)],
)
def test_matches_replay_of_accepted_steps(x64, solver, stiff):
    # Tolerance 1e-10 (relative): both sides sum the same float64 numbers, only the summation order may differ.
    # A burst in the time dependence around t = 1.5 forces rejected steps for every solver.
    mlp = _mlp_field(jax.random.key(0))
    f = lambda t, y, args: mlp(y) * (1 + 20 * jnp.exp(-100 * (t - 1.5) ** 2))
    y0 = jnp.array([1.0, -0.5])
    ctrl = (
        dfx.PIDController(rtol=1e-3, atol=1e-5)
        if isinstance(solver, dfx.Heun)
        else dfx.PIDController(rtol=1e-5, atol=1e-7)
    )
    heur = ("error", "stiffness") if stiff else ("error",)
    sol, h, stats = solve_with_heuristics(f, solver, 0.0, 3.0, y0, stepsize_controller=ctrl, heuristics=heur)
    err, st, ref = _replay(solver, f, y0, 0.0, 3.0, ctrl, stiff)
    assert int(stats.num_rejected) > 0, "the problem should have rejected steps so that their exclusion is tested"
    assert int(stats.num_accepted) == int(ref.stats["num_accepted_steps"])
    np.testing.assert_allclose(float(h.error), err, rtol=1e-10)
    assert float(h.error) > 0
    if stiff:
        np.testing.assert_allclose(float(h.stiffness), st, rtol=1e-10)
        assert float(h.stiffness) > 0
    else:
        assert float(h.stiffness) == 0.0
    # The wrapper changes nothing about the solve itself (same first step).
    dt0 = _dt0(solver, f, y0, 0.0, 3.0, ctrl)
    plain = dfx.diffeqsolve(dfx.ODETerm(f), solver, 0.0, 3.0, dt0, y0, stepsize_controller=ctrl)
    np.testing.assert_array_equal(np.asarray(sol.ys), np.asarray(plain.ys))
    assert int(plain.stats["num_steps"]) == int(stats.num_steps)


@pytest.mark.parametrize("solver", [dfx.Tsit5(), dfx.Dopri5(), dfx.Dopri8()])
def test_stiffness_of_linear_decay_is_exact(x64, solver):
    # y' = -lam y: every stage pair gives |f(a) - f(b)| / |a - b| = lam exactly, so R_S = lam (t1 - t0).
    lam = 37.0
    _, h, _ = solve_with_heuristics(
        lambda t, y, a: -lam * y,
        solver,
        0.0,
        2.0,
        jnp.ones(3),
        stepsize_controller=dfx.PIDController(rtol=1e-6, atol=1e-9),
    )
    np.testing.assert_allclose(float(h.stiffness), lam * 2.0, rtol=1e-10)


def test_stiffness_equals_direct_function_evaluation(x64):
    # Rebuild the two stage points Y_a, Y_b of one Tsit5 step and evaluate f there directly.
    mlp = _mlp_field(jax.random.key(3))
    f = _field(mlp)
    term = dfx.ODETerm(f)
    solver = dfx.Tsit5()
    y0, t0, t1 = jnp.array([0.3, 0.7]), 0.1, 0.25
    _, _, info, _, _ = solver.step(term, t0, t1, y0, None, solver.init(term, t0, t1, y0, None), False)
    a, b = stiffness_stage_pair(solver)
    tab = solver.tableau
    ks = info["k"]
    ya = y0 + jnp.tensordot(jnp.asarray(tab.a_lower[a - 1]), ks[:a], axes=1)
    yb = y0 + jnp.tensordot(jnp.asarray(tab.b_sol), ks, axes=1)  # FSAL stage: y_{k+1}
    lam = jnp.linalg.norm(mlp(ya) - mlp(yb)) / jnp.linalg.norm(ya - yb)
    w = HeuristicSolver(solver, rtol=1e-3, atol=1e-6, record_stiffness=True)
    np.testing.assert_allclose(float(w.local_stiffness(info)), float(lam) * (t1 - t0), rtol=1e-10)


def test_stage_pairs():
    assert stiffness_stage_pair(dfx.Tsit5()) == (5, 6)
    assert stiffness_stage_pair(dfx.Dopri5()) == (5, 6)
    assert stiffness_stage_pair(dfx.Dopri8()) == (12, 13)
    for s in (dfx.Bosh3(), dfx.Heun(), dfx.Euler()):
        with pytest.raises(ValueError, match="stiffness"):
            stiffness_stage_pair(s)


def _accepted_ts(f, solver, y0, ctrl, t1):
    sol = dfx.diffeqsolve(
        dfx.ODETerm(f),
        solver,
        0.0,
        t1,
        _dt0(solver, f, y0, 0.0, t1, ctrl),
        y0,
        stepsize_controller=ctrl,
        saveat=dfx.SaveAt(steps=True),
        max_steps=500,
    )
    n = int(sol.stats["num_accepted_steps"])
    return jnp.concatenate([jnp.zeros(1), sol.ts[:n]])


def test_gradients_match_finite_differences(x64):
    # diffrax treats step sizes as constants in the backward pass, so the exact derivative to compare with is the one
    # along the fixed accepted step sequence: replay it with StepTo and compare with a 5-point central finite
    # difference (eps 1e-4: truncation O(eps^4) ~ 1e-10; the error estimate is a difference of two nearby solutions,
    # so its rounding noise ~1e-11 divided by eps gives ~1e-7; tolerance 1e-6 relative).
    mlp = _mlp_field(jax.random.key(1), scale=2.0)
    params, static = eqx.partition(mlp, eqx.is_array)
    y0 = jnp.array([0.8, -0.2])
    ctrl = dfx.PIDController(rtol=1e-4, atol=1e-6)
    solver = dfx.Tsit5()

    def heur(p, controller, **kw):
        m = eqx.combine(p, static)
        _, h, _ = solve_with_heuristics(_field(m), solver, 0.0, 2.0, y0, stepsize_controller=controller, **kw)
        return jnp.stack([h.error, h.stiffness])

    ts = _accepted_ts(_field(mlp), solver, y0, ctrl, 2.0)
    fixed = jax.jit(lambda p: heur(p, dfx.StepTo(ts), rtol=ctrl.rtol, atol=ctrl.atol))
    np.testing.assert_allclose(fixed(params), heur(params, ctrl), rtol=1e-12)
    jac_fixed = jax.jacrev(fixed)(params)
    jac_adaptive = jax.jacrev(lambda p: heur(p, ctrl))(params)
    for a, b in zip(jax.tree_util.tree_leaves(jac_fixed), jax.tree_util.tree_leaves(jac_adaptive)):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-12)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    d = jax.tree_util.tree_unflatten(treedef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])
    eps = 1e-4
    shifted = lambda s: fixed(jax.tree_util.tree_map(lambda x, v: x + s * eps * v, params, d))
    fd = (-shifted(2) + 8 * shifted(1) - 8 * shifted(-1) + shifted(-2)) / (12 * eps)
    ad = sum(jnp.tensordot(a, b, axes=b.ndim) for a, b in zip(jax.tree_util.tree_leaves(jac_fixed), leaves_of(d)))
    np.testing.assert_allclose(ad, fd, rtol=1e-6)
    assert np.all(np.abs(np.asarray(ad)) > 1e-3)  # a non-trivial derivative


def leaves_of(tree):
    return jax.tree_util.tree_leaves(tree)


def test_num_fevals_counts_every_evaluation(x64):
    count = []

    def f(t, y, args):
        jax.debug.callback(lambda: count.append(1))
        return -3.0 * y + jnp.sin(5 * t)

    for solver in (dfx.Tsit5(), dfx.Heun()):
        count.clear()
        _, _, stats = jax.jit(
            lambda y, solver=solver: solve_with_heuristics(
                f,
                solver,
                0.0,
                1.0,
                y,
                heuristics=("error",),
                stepsize_controller=dfx.PIDController(rtol=1e-4, atol=1e-6),
            )
        )(jnp.ones(2))
        jax.effects_barrier()
        # diffrax evaluates the stages inside a loop traced once; the count is of runtime evaluations.
        assert int(stats.num_rejected) > 0  # rejected steps cost evaluations too
        assert int(stats.num_fevals) == len(count), (type(solver).__name__, int(stats.num_fevals), len(count))


def test_transformations(x64):
    # jit / vmap over (params, y0) / grad vs finite differences, on a fixed grid of 8 steps (the error heuristic is
    # rescaled to O(1)). The stiffness ratio divides by a stage difference of size O(h^5), so its finite differences
    # carry rounding noise ~1e-5 relative at eps = 1e-5; tolerance 1e-3.
    mlp = _mlp_field(jax.random.key(4), scale=2.0)
    params, static = eqx.partition(mlp, eqx.is_array)

    def fn(p, y0):
        _, h, _ = solve_with_heuristics(
            _field(eqx.combine(p, static)),
            dfx.Tsit5(),
            0.0,
            2.0,
            y0,
            stepsize_controller=dfx.StepTo(jnp.linspace(0, 2, 9)),
            rtol=1e-4,
            atol=1e-6,
        )
        return 1e-3 * h.error, h.stiffness

    assert_transformable(fn, params, jnp.array([0.5, -0.3]), fd_eps=1e-5, fd_rtol=1e-3)


def test_vmap_over_y0_matches_loop(x64):
    # float64: in float32 the embedded error estimate and the stage difference of the stiffness estimate are at the
    # level of rounding noise for atol = 1e-6, so batched and unbatched matmuls need not agree to 1e-5.
    mlp = _mlp_field(jax.random.key(5), scale=1.0)
    y0s = jax.random.normal(jax.random.key(6), (4, 2))

    def run(y0):
        sol, h, s = solve_with_heuristics(_field(mlp), dfx.Tsit5(), 0.0, 1.0, y0)
        return sol.ys[-1], h.error, h.stiffness, s.num_steps

    out = jax.jit(jax.vmap(run))(y0s)
    for i in range(4):
        single = run(y0s[i])
        for a, b in zip(out, single):
            np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-6)


class TestBadInput:
    f = staticmethod(lambda t, y, a: -y)

    def test_solver_without_error_estimate(self):
        with pytest.raises(TypeError, match="solver=Euler"):
            solve_with_heuristics(self.f, dfx.Euler(), 0.0, 1.0, jnp.ones(2))
        with pytest.raises(TypeError, match="solver=Euler"):  # a fixed controller still needs an error estimate
            solve_with_heuristics(
                self.f, dfx.Euler(), 0.0, 1.0, jnp.ones(2), stepsize_controller=dfx.StepTo([0.0, 1.0]), rtol=1, atol=1
            )

    @pytest.mark.parametrize(
        "rtol, atol, name", [(0.0, 1e-6, "rtol"), (1e-3, -1.0, "atol"), (float("nan"), 1e-6, "rtol")]
    )
    def test_bad_tolerances(self, rtol, atol, name):
        with pytest.raises(ValueError, match=name):
            solve_with_heuristics(
                self.f, dfx.Tsit5(), 0.0, 1.0, jnp.ones(2), stepsize_controller=dfx.PIDController(rtol=rtol, atol=atol)
            )

    def test_equal_times(self):
        with pytest.raises(ValueError, match="t1"):
            solve_with_heuristics(self.f, dfx.Tsit5(), 1.0, 1.0, jnp.ones(2))

    def test_mismatched_shapes(self):
        with pytest.raises(ValueError, match="y0"):
            solve_with_heuristics(lambda t, y, a: jnp.ones(3), dfx.Tsit5(), 0.0, 1.0, jnp.ones(2))

    def test_mismatched_pytree_keys_are_named(self):
        y0 = {"a": jnp.ones(2), "b": jnp.ones(2)}
        with pytest.raises(ValueError, match=r"y0's structure.*\['b'\].*\['c'\]"):
            solve_with_heuristics(lambda t, y, a: {"a": y["a"], "c": y["b"]}, dfx.Tsit5(), 0.0, 1.0, y0)

    @pytest.mark.parametrize("dt0, match", [(0.0, "dt0 must be a non-zero"), (-0.1, "dt0 must have the sign")])
    def test_bad_dt0_fails_before_the_solve(self, dt0, match):
        with pytest.raises(ValueError, match=match):  # was: runs to max_steps, "maximum number of solver steps"
            solve_with_heuristics(self.f, dfx.Tsit5(), 0.0, 1.0, jnp.ones(2), dt0=dt0)

    def test_imex_solver_needs_multiterm(self):
        with pytest.raises(TypeError, match=r"KenCarp4 is an IMEX solver.*MultiTerm"):
            solve_with_heuristics(self.f, dfx.KenCarp4(), 0.0, 1.0, jnp.ones(2), heuristics=("error",))

    @pytest.mark.parametrize("order", [-1, 0, 2.5])
    def test_initial_step_order(self, order):
        with pytest.raises(ValueError, match="order must be a positive int"):
            initial_step_size(self.f, 0.0, 1.0, jnp.ones(2), None, order=order, rtol=1e-3, atol=1e-6)

    def test_unsorted_or_outside_ts(self):
        for ts, match in (([0.5, 0.2], "non-decreasing"), ([0.2, 1.5], r"lie in \[t0, t1\]")):
            with pytest.raises(ValueError, match=match):
                solve_with_heuristics(self.f, dfx.Tsit5(), 0.0, 1.0, jnp.ones(2), saveat=dfx.SaveAt(ts=jnp.array(ts)))
        with pytest.raises(ValueError, match="non-increasing"):  # backward time: ts run from t0 down to t1
            solve_with_heuristics(
                self.f, dfx.Tsit5(), 1.0, 0.0, jnp.ones(2), saveat=dfx.SaveAt(ts=jnp.array([0.2, 0.8]))
            )

    def test_unknown_heuristic_and_stiffness_on_bosh3(self):
        with pytest.raises(ValueError, match="heuristics"):
            solve_with_heuristics(self.f, dfx.Tsit5(), 0.0, 1.0, jnp.ones(2), heuristics=("energy",))
        with pytest.raises(ValueError, match="Bosh3"):
            solve_with_heuristics(self.f, dfx.Bosh3(), 0.0, 1.0, jnp.ones(2), heuristics=("stiffness",))

    def test_backsolve_needs_local_regularization(self):
        with pytest.raises(ValueError, match="local"):
            solve_with_heuristics(self.f, dfx.Tsit5(), 0.0, 1.0, jnp.ones(2), adjoint=dfx.BacksolveAdjoint())

    def test_non_pid_controller_needs_tolerances(self):
        with pytest.raises(ValueError, match="rtol"):
            solve_with_heuristics(
                self.f, dfx.Tsit5(), 0.0, 1.0, jnp.ones(2), dt0=0.1, stepsize_controller=dfx.ConstantStepSize()
            )

    def test_max_steps_flag_and_raise(self):
        stiff = lambda t, y, a: -1e4 * y
        sol, h, stats = solve_with_heuristics(
            stiff, dfx.Tsit5(), 0.0, 1.0, jnp.ones(2), max_steps=5, on_max_steps="flag"
        )
        assert bool(stats.hit_max_steps) and int(stats.num_steps) == 5
        _, _, ok = solve_with_heuristics(self.f, dfx.Tsit5(), 0.0, 1.0, jnp.ones(2), on_max_steps="flag")
        assert not bool(ok.hit_max_steps)
        with pytest.raises(Exception, match="maximum number of solver steps"):
            solve_with_heuristics(stiff, dfx.Tsit5(), 0.0, 1.0, jnp.ones(2), max_steps=5, on_max_steps="raise")
        with pytest.raises(ValueError, match="on_max_steps"):
            solve_with_heuristics(self.f, dfx.Tsit5(), 0.0, 1.0, jnp.ones(2), on_max_steps="ignore")
