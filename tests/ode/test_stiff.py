"""Stiff problems with implicit solvers: the gradient of the error heuristic R_E through Kvaerno5 (SDIRK) and KenCarp4
(IMEX) is finite and equals central finite differences, and the wrapper leaves diffrax's step sequence unchanged.

Problems (float64, rtol 1e-6, atol 1e-8): Lotka--Volterra ``x' = a x - b x y, y' = -c y + d x y`` on ``t <= 10`` and
Robertson's chemical kinetics (``k = 0.04, 3e7, 1e4``) on ``t <= 1``. diffrax's default root finder for these solvers
(``VeryChord`` at the controller's tolerances) fails to converge on many steps; such a step gets an infinite error
estimate and is rejected. Before the fix its infinite ``R_E`` increment turned the backward pass into NaN
(``EquinoxRuntimeError: A linear solver received non-finite input``). The stiffness heuristic R_S is defined for
explicit stages only (see :func:`jaxsciml.ode.stiffness_stage_pair`), so only R_E is differentiated here.
"""

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
import pytest

from jaxsciml.ode import solve_with_heuristics

RTOL, ATOL = 1e-6, 1e-8


def _lv(p):
    a, b, c, d = jnp.exp(p)
    return lambda t, y, args: jnp.stack([a * y[0] - b * y[0] * y[1], -c * y[1] + d * y[0] * y[1]])


def _lv_imex(p):
    a, b, c, d = jnp.exp(p)
    explicit = lambda t, y, args: jnp.stack([-b * y[0] * y[1], d * y[0] * y[1]])
    implicit = lambda t, y, args: jnp.stack([a * y[0], -c * y[1]])
    return dfx.MultiTerm(dfx.ODETerm(explicit), dfx.ODETerm(implicit))


def _rob(p):
    k1, k2, k3 = jnp.exp(p)
    return lambda t, y, args: jnp.stack(
        [-k1 * y[0] + k3 * y[1] * y[2], k1 * y[0] - k3 * y[1] * y[2] - k2 * y[1] ** 2, k2 * y[1] ** 2]
    )


def _rob_imex(p):
    k1, k2, k3 = jnp.exp(p)
    explicit = lambda t, y, args: jnp.stack([-k1 * y[0], k1 * y[0], jnp.zeros_like(y[0])])
    implicit = lambda t, y, args: jnp.stack([k3 * y[1] * y[2], -k3 * y[1] * y[2] - k2 * y[1] ** 2, k2 * y[1] ** 2])
    return dfx.MultiTerm(dfx.ODETerm(explicit), dfx.ODETerm(implicit))


_PROBLEMS = {
    "lotka_volterra": (_lv, _lv_imex, [1.5, 1.0, 3.0, 1.0], [1.0, 1.0], 10.0),
    "robertson": (_rob, _rob_imex, [0.04, 3e7, 1e4], [1.0, 0.0, 0.0], 1.0),
}


def _setup(problem, solver_name):
    field, imex, k, y0, t1 = _PROBLEMS[problem]
    make = field if solver_name == "Kvaerno5" else imex
    return make, jnp.log(jnp.asarray(k)), jnp.asarray(y0), t1


def _r_e(make, solver, y0, t1, controller, p, **kw):
    dt0 = None if isinstance(controller, dfx.StepTo) else 1e-4
    _, h, _ = solve_with_heuristics(
        make(p),
        solver,
        0.0,
        t1,
        y0,
        dt0=dt0,
        stepsize_controller=controller,
        heuristics=("error",),
        max_steps=4000,
        **kw,
    )
    return h.error


def _accepted_ts(make, solver, y0, t1, p):
    sol, _, stats = solve_with_heuristics(
        make(p),
        solver,
        0.0,
        t1,
        y0,
        dt0=1e-4,
        stepsize_controller=dfx.PIDController(rtol=RTOL, atol=ATOL),
        heuristics=(),
        saveat=dfx.SaveAt(steps=True),
        max_steps=4000,
    )
    n = int(stats.num_accepted)
    return jnp.concatenate([jnp.zeros(1), sol.ts[:n]]), stats


@pytest.mark.parametrize("problem", ["lotka_volterra", pytest.param("robertson", marks=pytest.mark.slow)])
def test_kvaerno5_default_root_finder_gradient_is_finite_and_exact(x64, problem):
    # The failing case: diffrax's default VeryChord root finder, many failed (inf-error) rejected steps. The
    # gradient through the adaptive solve is finite and equals that of the same solver replayed along its accepted
    # step sequence (StepTo: no rejected steps at all), i.e. rejected and failed steps contribute exactly nothing.
    make, p, y0, t1 = _setup(problem, "Kvaerno5")
    # the default root finder with the tolerances diffrax would give it (those of the controller), spelled out so
    # that the StepTo replay uses the same one
    solver = dfx.Kvaerno5(root_finder=dfx.VeryChord(rtol=RTOL, atol=ATOL, norm=optx.rms_norm))
    ctrl = dfx.PIDController(rtol=RTOL, atol=ATOL)
    ts, stats = _accepted_ts(make, solver, y0, t1, p)
    assert int(stats.num_rejected) > 10  # the failed/rejected steps this test is about do occur
    g_adaptive = jax.jit(jax.grad(lambda q: _r_e(make, solver, y0, t1, ctrl, q)))(p)
    g_replay = jax.jit(jax.grad(lambda q: _r_e(make, solver, y0, t1, dfx.StepTo(ts), q, rtol=RTOL, atol=ATOL)))(p)
    assert np.all(np.isfinite(np.asarray(g_adaptive)))
    np.testing.assert_allclose(g_adaptive, g_replay, rtol=1e-8, atol=1e-14)


_SLOW = pytest.mark.slow  # ~15-20 s each on 2 shared cores (run with --runslow)


@pytest.mark.parametrize(
    "problem, solver_name",
    [
        pytest.param("robertson", "KenCarp4", marks=_SLOW),
        pytest.param("robertson", "Kvaerno5", marks=_SLOW),
        pytest.param("lotka_volterra", "Kvaerno5", marks=_SLOW),
        pytest.param("lotka_volterra", "KenCarp4", marks=_SLOW),
    ],
)
def test_implicit_gradient_matches_finite_differences(x64, problem, solver_name):
    # diffrax treats step sizes as constants, so the derivative to compare with is the one along the accepted step
    # sequence: the adaptive gradient equals the replay's (StepTo) and the replay's equals a 5-point central finite
    # difference (eps 1e-4 on log-rates: truncation ~1e-10). A Newton root finder at 1e-12 makes each implicit stage a
    # smooth function of the parameters to rounding (the FD then resolves R_E to ~1e-9 relative); tolerance 1e-6.
    make, p, y0, t1 = _setup(problem, solver_name)
    root = optx.Newton(rtol=1e-12, atol=1e-14)
    solver = getattr(dfx, solver_name)(root_finder=root)
    ctrl = dfx.PIDController(rtol=RTOL, atol=ATOL)
    ts, _ = _accepted_ts(make, solver, y0, t1, p)
    fixed = jax.jit(lambda q: _r_e(make, solver, y0, t1, dfx.StepTo(ts), q, rtol=RTOL, atol=ATOL))
    g_adaptive = jax.jit(jax.grad(lambda q: _r_e(make, solver, y0, t1, ctrl, q)))(p)
    g_fixed = jax.jit(jax.grad(fixed))(p)
    assert np.all(np.isfinite(np.asarray(g_adaptive)))
    # 1e-7: the Newton iterates agree to the root finder's 1e-12, which the Robertson gradients amplify to ~2e-8
    np.testing.assert_allclose(g_adaptive, g_fixed, rtol=1e-7, atol=1e-14)
    direction = jax.random.normal(jax.random.key(0), p.shape, p.dtype)
    eps = 1e-4
    shifted = lambda s: float(fixed(p + s * eps * direction))
    fd = (-shifted(2) + 8 * shifted(1) - 8 * shifted(-1) + shifted(-2)) / (12 * eps)
    ad = float(jnp.dot(g_fixed, direction))
    assert abs(ad) > 1e-3 * float(fixed(p))  # a non-trivial derivative
    np.testing.assert_allclose(ad, fd, rtol=1e-6)


@pytest.mark.parametrize("solver_name", ["Kvaerno5", "KenCarp4"])
def test_wrapper_leaves_step_sequence_unchanged(x64, solver_name):
    # Same dt0: the accepted times, and the numbers of accepted and rejected steps, are those of plain diffrax.
    make, p, y0, t1 = _setup("robertson", solver_name)
    solver = getattr(dfx, solver_name)()
    ctrl = dfx.PIDController(rtol=RTOL, atol=ATOL)
    terms = make(p)
    terms = dfx.ODETerm(terms) if callable(terms) else terms
    plain = dfx.diffeqsolve(
        terms, solver, 0.0, t1, 1e-4, y0, stepsize_controller=ctrl, saveat=dfx.SaveAt(steps=True), max_steps=10000
    )
    sol, h, stats = solve_with_heuristics(
        make(p),
        solver,
        0.0,
        t1,
        y0,
        dt0=1e-4,
        stepsize_controller=ctrl,
        heuristics=("error",),
        saveat=dfx.SaveAt(steps=True),
        max_steps=10000,
    )
    assert int(stats.num_accepted) == int(plain.stats["num_accepted_steps"])
    assert int(stats.num_rejected) == int(plain.stats["num_rejected_steps"]) > 0
    n = int(stats.num_accepted)
    np.testing.assert_array_equal(sol.ts[:n], plain.ts[:n])
    np.testing.assert_array_equal(sol.ys[:n], plain.ys[:n])
    assert np.isfinite(float(h.error)) and float(h.error) > 0
