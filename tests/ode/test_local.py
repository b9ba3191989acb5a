"""Local (stochastic) regularization: exact values on a linear problem, unchanged solution, gradients with
BacksolveAdjoint against finite differences, bad input."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsciml.ode import solve_with_heuristics, solve_with_local_heuristics


class _Field(eqx.Module):
    mlp: eqx.nn.MLP

    def __call__(self, t, y, args):
        return self.mlp(y)


def _field(key):
    return _Field(eqx.nn.MLP(2, 2, 16, 2, activation=jnp.tanh, key=key))


@pytest.mark.parametrize("strategy", ["unbiased", "biased"])
def test_linear_decay_stiffness_is_exact(x64, strategy):
    # y' = -lam y: the local stiffness rate is lam at every t*, so the estimate (t1 - t0) * mean(lam) is exact.
    lam = 12.0
    _, h, _ = solve_with_local_heuristics(
        lambda t, y, a: -lam * y,
        dfx.Tsit5(),
        0.0,
        1.5,
        jnp.ones(3),
        key=jax.random.key(0),
        strategy=strategy,
        num_samples=3,
        saveat=dfx.SaveAt(ts=jnp.linspace(0.0, 1.5, 4)),
    )
    np.testing.assert_allclose(float(h.stiffness), lam * 1.5, rtol=1e-10)
    assert float(h.error) > 0


@pytest.mark.parametrize("strategy", ["unbiased", pytest.param("biased", marks=pytest.mark.slow)])
def test_backsolve_gradients_match_finite_differences(x64, strategy):
    # BacksolveAdjoint with tight tolerances (rtol 1e-8): its gradient of y(t*) is accurate to ~1e-7 relative; a 5-point
    # central difference with eps 1e-4 has truncation ~1e-10. A fixed local step (local_dt) makes the loss smooth in
    # the parameters (the default, the mean accepted step, is piecewise constant).
    field = _field(jax.random.key(0))
    params, static = eqx.partition(field, eqx.is_array)
    y0 = jnp.array([1.0, -0.5])
    ts = jnp.linspace(0.2, 2.0, 5)
    ctrl = dfx.PIDController(rtol=1e-8, atol=1e-10)

    @eqx.filter_jit
    def loss(p, adjoint_is_backsolve):
        sol, h, _ = solve_with_local_heuristics(
            eqx.combine(p, static),
            dfx.Tsit5(),
            0.0,
            2.0,
            y0,
            key=jax.random.key(1),
            strategy=strategy,
            num_samples=2,
            stepsize_controller=ctrl,
            saveat=dfx.SaveAt(ts=ts),
            adjoint=dfx.BacksolveAdjoint() if adjoint_is_backsolve else dfx.RecursiveCheckpointAdjoint(),
            local_dt=0.1,
        )
        return jnp.sum(sol.ys**2) + 1e-3 * h.error + h.stiffness

    g = jax.grad(loss)(params, True)
    for a in jax.tree_util.tree_leaves(g):
        assert np.all(np.isfinite(a))
    if strategy == "unbiased":  # the discrete adjoint gives the same gradient (up to the backsolve's accuracy)
        g_discrete = jax.grad(loss)(params, False)
        for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_discrete)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    d = jax.tree_util.tree_unflatten(treedef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])
    eps = 1e-4
    sh = lambda s: loss(jax.tree_util.tree_map(lambda x, v: x + s * eps * v, params, d), True)
    fd = (-sh(2) + 8 * sh(1) - 8 * sh(-1) + sh(-2)) / (12 * eps)
    ad = sum(jnp.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(d)))
    np.testing.assert_allclose(float(ad), float(fd), rtol=1e-6)


def test_solution_unchanged_and_key_driven():
    field = _field(jax.random.key(3))
    y0 = jnp.array([0.3, 0.9])
    saveat = dfx.SaveAt(t0=True, ts=jnp.array([0.5, 1.0]), t1=True)
    plain, _, plain_stats = solve_with_heuristics(  # the same solve (same automatic first step), no heuristics
        field, dfx.Tsit5(), 0.0, 2.0, y0, saveat=saveat, heuristics=()
    )
    run = jax.jit(lambda k: solve_with_local_heuristics(field, dfx.Tsit5(), 0.0, 2.0, y0, key=k, saveat=saveat))
    outs = [run(jax.random.key(k)) for k in range(3)]
    for sol, _, stats in outs:
        np.testing.assert_allclose(sol.ts, plain.ts)
        np.testing.assert_allclose(sol.ys, plain.ys, rtol=1e-6, atol=1e-7)  # interpolated save point adds no step
        assert int(stats.num_accepted) == int(plain_stats.num_accepted)
    errors = [float(h.error) for _, h, _ in outs]
    assert len(set(errors)) == 3  # different keys sample different time points


def test_bad_input():
    f = lambda t, y, a: -y
    k = jax.random.key(0)
    with pytest.raises(ValueError, match="strategy"):
        solve_with_local_heuristics(f, dfx.Tsit5(), 0.0, 1.0, jnp.ones(2), key=k, strategy="random")
    with pytest.raises(ValueError, match="saveat=SaveAt.ts=.... or use strategy='unbiased'"):
        solve_with_local_heuristics(f, dfx.Tsit5(), 0.0, 1.0, jnp.ones(2), key=k, strategy="biased")
    for strategy in (
        "unbiased",
        "biased",
    ):  # unsorted save times are rejected by both strategies (were accepted by one)
        with pytest.raises(ValueError, match="saveat.ts must be non-decreasing"):
            bad = dfx.SaveAt(ts=jnp.array([0.5, 0.2]))
            solve_with_local_heuristics(f, dfx.Tsit5(), 0.0, 1.0, jnp.ones(2), key=k, strategy=strategy, saveat=bad)
    with pytest.raises(Exception, match="saveat.ts must be ordered"):  # traced ts: checked at run time
        run = lambda ts: solve_with_local_heuristics(
            f, dfx.Tsit5(), 0.0, 1.0, jnp.ones(2), key=k, saveat=dfx.SaveAt(ts=ts)
        )
        jax.block_until_ready(eqx.filter_jit(run)(jnp.array([0.5, 0.2]))[0].ys)
    with pytest.raises(ValueError, match="num_samples"):
        solve_with_local_heuristics(f, dfx.Tsit5(), 0.0, 1.0, jnp.ones(2), key=k, num_samples=0)
    with pytest.raises(ValueError, match="Bosh3"):
        solve_with_local_heuristics(f, dfx.Bosh3(), 0.0, 1.0, jnp.ones(2), key=k)
