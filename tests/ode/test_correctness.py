"""Correctness of the ode pillar beyond the forward-time basics: backward time (t1 < t0) for every regularizer against
the mirrored forward problem, the automatic initial step (Hairer's estimate) against a NumPy implementation, the
expectation of the local estimator against the global sum, and NaN/inf in y0."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsciml.ode import (
    RNODE,
    STEER,
    HeuristicRegularization,
    NoRegularization,
    SolverConfig,
    TayNODE,
    initial_step_size,
    regularized_solve,
    solve_with_heuristics,
    solve_with_local_heuristics,
)


class _Field(eqx.Module):
    """A time-dependent nonlinear field ``f(t, y) = (1 + 0.5 sin 3t) tanh(W y) - 0.3 y``."""

    w: jax.Array

    def __call__(self, t, y, args):
        return (1 + 0.5 * jnp.sin(3 * t)) * jnp.tanh(self.w @ y) - 0.3 * y


class _Mirrored(eqx.Module):
    """``z'(s) = -f(-s, z)``: the forward-time problem whose solution is ``z(s) = y(-s)``."""

    f: eqx.Module

    def __call__(self, s, z, args):
        return jax.tree_util.tree_map(jnp.negative, self.f(-s, z, args))


def _field():
    return _Field(jnp.array([[0.5, -2.0, 0.3], [1.5, 0.2, -0.7], [-0.4, 1.1, 0.1]]))


_REGULARIZERS = {
    "heuristics global": HeuristicRegularization(1.0, 0.1),
    "local unbiased": HeuristicRegularization(1.0, 0.1, local="unbiased", num_samples=3),
    "local biased": HeuristicRegularization(1.0, 0.1, local="biased", num_samples=3),
    "RNODE": RNODE(0.5, 0.2),
    "TayNODE": TayNODE(0.1, order=2),
}


@pytest.mark.parametrize("name", list(_REGULARIZERS))
def test_backward_time_equals_mirrored_forward(x64, name):
    # diffrax solves t1 < t0 as the mirrored problem in s = -t, so every value must agree with the explicitly mirrored
    # forward solve to rounding (tolerance 1e-9 relative; float64, rtol 1e-7 solves). Both directions are checked to
    # be positive; the forward problem is the mirror of the backward one.
    f, reg = _field(), _REGULARIZERS[name]
    y0 = jnp.array([0.4, -0.8, 0.6])
    cfg = SolverConfig(rtol=1e-7, atol=1e-9)
    ts = jnp.array([1.5, 1.0, 0.5, 0.0])  # ordered in the direction of integration
    key = jax.random.key(3)
    back = regularized_solve(f, y0, 2.0, 0.0, ts=ts, config=cfg, regularizer=reg, key=key)
    fwd = regularized_solve(_Mirrored(f), y0, -2.0, 0.0, ts=-ts, config=cfg, regularizer=reg, key=key)
    assert float(back.penalty) > 0 and float(fwd.penalty) > 0
    np.testing.assert_allclose(back.penalty, fwd.penalty, rtol=1e-9)
    np.testing.assert_allclose(back.error, fwd.error, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(back.stiffness, fwd.stiffness, rtol=1e-9, atol=1e-14)
    for k in back.extra:
        assert float(back.extra[k]) > 0
        np.testing.assert_allclose(back.extra[k], fwd.extra[k], rtol=1e-9)
    np.testing.assert_allclose(back.ys, fwd.ys, rtol=1e-9, atol=1e-12)
    assert int(back.stats.num_fevals) == int(fwd.stats.num_fevals)


def test_backward_rnode_taynode_analytic(x64):
    # y' = -a y from t0 = 1.5 back to 0: y(t) = y0 exp(-a (t - 1.5)); int |f|^2 |dt| = a^2 |y0|^2 (e^{2 a T} - 1) / 2a.
    a, T, y0 = 0.7, 1.5, jnp.array([1.0, -2.0])
    cfg = SolverConfig(rtol=1e-10, atol=1e-12)
    out = regularized_solve(
        lambda t, y, _: -a * y, y0, T, 0.0, config=cfg, regularizer=RNODE(1.0, 0.0), key=jax.random.key(0)
    )
    np.testing.assert_allclose(out.extra["kinetic"], a**2 * 5.0 * (np.exp(2 * a * T) - 1) / (2 * a), rtol=1e-7)
    out = regularized_solve(lambda t, y, _: -a * y, y0, T, 0.0, config=cfg, regularizer=TayNODE(1.0, order=2))
    np.testing.assert_allclose(out.extra["taylor"], a**4 * 5.0 / 2 * (np.exp(2 * a * T) - 1) / (2 * a), rtol=1e-7)


def test_backward_steer_and_no_regularization(x64):
    f, y0 = _field(), jnp.array([0.4, -0.8, 0.6])
    cfg = SolverConfig(rtol=1e-8, atol=1e-10)
    for i in range(3):
        out = regularized_solve(f, y0, 2.0, 0.0, config=cfg, regularizer=STEER(0.5), key=jax.random.key(i))
        t_end = float(out.extra["t1"])
        assert -0.5 <= t_end <= 0.5 and float(out.penalty) == 0.0
        ref = regularized_solve(_Mirrored(f), y0, -2.0, -t_end, config=cfg)
        np.testing.assert_allclose(out.ys, ref.ys, rtol=1e-9)
    out = regularized_solve(f, y0, 2.0, 0.0, config=cfg, regularizer=NoRegularization())
    np.testing.assert_allclose(out.ys, regularized_solve(_Mirrored(f), y0, -2.0, 0.0, config=cfg).ys, rtol=1e-9)


# ------------------------------------------------------------------------------------------------- initial step size
def _hairer_numpy(f, t0, t1, y0, order, rtol, atol):
    """Hairer, Norsett, Wanner, Solving ODEs I, Sec. II.4, written out in NumPy (RMS norm)."""
    y0 = np.asarray(y0, float)
    d = np.sign(t1 - t0)
    sc = atol + rtol * np.abs(y0)
    rms = lambda x: np.sqrt(np.mean((x / sc) ** 2))
    f0 = np.asarray(f(t0, y0))
    d0, d1 = rms(y0), rms(f0)
    h0 = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
    f1 = np.asarray(f(t0 + d * h0, y0 + d * h0 * f0))
    d2 = rms(f1 - f0) / h0
    h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** (1.0 / (order + 1))
    return d * min(100 * h0, h1, abs(t1 - t0))


@pytest.mark.parametrize("t0, t1", [(0.0, 3.0), (3.0, 0.0)])
def test_initial_step_matches_numpy(x64, t0, t1):
    w = np.array([[0.5, -2.0, 0.3], [1.5, 0.2, -0.7], [-0.4, 1.1, 0.1]])
    f_np = lambda t, y: (1 + 0.5 * np.sin(3 * t)) * np.tanh(w @ y) - 0.3 * y
    y0 = np.array([0.4, -0.8, 0.6])
    for rtol, atol, order in ((1e-3, 1e-6, 5), (1e-8, 1e-8, 4), (1e-2, 1e-2, 8)):
        h = initial_step_size(_field(), t0, t1, jnp.asarray(y0), None, order=order, rtol=rtol, atol=atol)
        np.testing.assert_allclose(float(h), _hairer_numpy(f_np, t0, t1, y0, order, rtol, atol), rtol=1e-12)
    # zero initial state and field: the d0/d1 < 1e-5 branch
    h = initial_step_size(lambda t, y, a: 0 * y, 0.0, 1.0, jnp.zeros(2), None, order=5, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(float(h), 1e-6, rtol=1e-12)
    np.testing.assert_allclose(float(h), _hairer_numpy(lambda t, y: 0 * y, 0.0, 1.0, np.zeros(2), 5, 1e-3, 1e-6))


def test_auto_initial_step_cuts_nfe_on_smooth_problem(x64):
    # y' = -0.5 y on [0, 1] at rtol 1e-3: one or two steps of size O(0.5) suffice. Starting at h = 0.01 (diffrax 0.7.2's
    # choice) the controller grows the step at most x10 per step, so it needs at least three steps: 0.01, 0.1, 0.89.
    # Hairer's estimate starts near the right size; its own two evaluations are counted.
    f = lambda t, y, a: -0.5 * y
    ctrl = dfx.PIDController(rtol=1e-3, atol=1e-6)
    _, _, auto = solve_with_heuristics(f, dfx.Tsit5(), 0.0, 1.0, jnp.ones(4), stepsize_controller=ctrl)
    _, _, fixed = solve_with_heuristics(f, dfx.Tsit5(), 0.0, 1.0, jnp.ones(4), dt0=0.01, stepsize_controller=ctrl)
    assert int(auto.num_steps) <= 2 < 3 <= int(fixed.num_steps), (int(auto.num_steps), int(fixed.num_steps))
    assert int(auto.num_fevals) == 6 * int(auto.num_steps) + 1 + 2
    assert int(fixed.num_fevals) == 6 * int(fixed.num_steps) + 1


# --------------------------------------------------------------------------------------------- local estimator mean
def _lotka_volterra(t, y, args):
    return jnp.stack([1.5 * y[0] - y[0] * y[1], -3.0 * y[1] + y[0] * y[1]])


def test_local_estimator_expectation_equals_global(x64):
    # Lotka-Volterra on [0, 10] (82 accepted Tsit5 steps). M = 1024 independent single-sample estimates; their mean
    # must equal the global R_E, R_S within 4 standard errors (a false failure has probability < 1e-4) plus 1% for the
    # O(tol) difference between the re-taken step and the accepted one. The old mean-step-size estimator was 2x off.
    y0, ctrl = jnp.array([1.0, 1.0]), dfx.PIDController(rtol=1e-6, atol=1e-6)
    _, glob, _ = solve_with_heuristics(_lotka_volterra, dfx.Tsit5(), 0.0, 10.0, y0, stepsize_controller=ctrl)
    m = 1024
    run = jax.jit(
        jax.vmap(
            lambda k: solve_with_local_heuristics(
                _lotka_volterra, dfx.Tsit5(), 0.0, 10.0, y0, key=k, stepsize_controller=ctrl
            )[1]
        )
    )
    loc = run(jax.random.split(jax.random.key(0), m))
    for g, s in ((glob.error, loc.error), (glob.stiffness, loc.stiffness)):
        s, g = np.asarray(s), float(g)
        stderr = s.std(ddof=1) / np.sqrt(m)
        assert abs(s.mean() - g) <= 4 * stderr + 0.01 * g, (s.mean(), g, stderr)
        assert stderr < 0.05 * g  # the test has power: it would catch a 20% bias


def test_local_fevals_counted(x64):
    f = lambda t, y, a: -2.0 * y
    ctrl = dfx.PIDController(rtol=1e-5, atol=1e-7)
    _, _, plain = solve_with_heuristics(f, dfx.Tsit5(), 0.0, 1.0, jnp.ones(2), stepsize_controller=ctrl, heuristics=())
    _, _, loc = solve_with_local_heuristics(
        f, dfx.Tsit5(), 0.0, 1.0, jnp.ones(2), key=jax.random.key(0), num_samples=3, stepsize_controller=ctrl
    )
    # each sample: a step back to the accepted step's start and the re-taken step, 7 evaluations each (FSAL init)
    assert int(loc.num_fevals) == int(plain.num_fevals) + 3 * 2 * 7


# ------------------------------------------------------------------------------------------------------ bad values
def test_nan_or_inf_in_y0_fails_fast():
    f = lambda t, y, a: -y
    for bad in (jnp.array([1.0, jnp.nan]), jnp.array([jnp.inf, 0.0])):
        with pytest.raises(Exception, match="NaN or inf"):
            solve_with_heuristics(f, dfx.Tsit5(), 0.0, 1.0, bad)
        with pytest.raises(Exception, match="NaN or inf"):
            jax.jit(lambda y: regularized_solve(f, y, 0.0, 1.0, regularizer=HeuristicRegularization(1.0)).ys)(bad)
    with pytest.raises(Exception, match="NaN or inf"):
        neg = lambda t, y, a: jax.tree_util.tree_map(jnp.negative, y)
        regularized_solve(neg, {"a": jnp.ones(2), "b": jnp.array([jnp.nan])}, 0.0, 1.0)
