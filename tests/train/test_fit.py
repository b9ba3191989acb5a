"""fit: convergence, equivalence with the bare step, history, data forms, continuation, progress bar."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsciml.train import FitResult, fit, make_train_step

from ._util import ADAM, make_batch, make_batch_from_key, make_model, mse, mse_aux, params_of


def _equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


def test_fit_reduces_loss_and_returns_result():
    res = fit(make_model(), mse, ADAM, make_batch, 100, progress=False)
    assert isinstance(res, FitResult)
    assert res.step == 100 and res.key is None
    h = res.history
    assert h["step"] == list(range(100))
    assert len(h["loss"]) == len(h["time"]) == 100
    assert h["nonfinite_steps"] == []
    # tanh-MLP on a smooth 3->2 map: Adam(1e-2) gets the loss down by more than 3x in 100 steps (observed ~4.7x).
    assert np.mean(h["loss"][-10:]) < 0.33 * np.mean(h["loss"][:10])
    assert all(t > 0 for t in h["time"])


def test_fit_equals_manual_step_loop():
    """fit is exactly a loop of make_train_step over data(step): bit-identical parameters and optimiser state."""
    model, opt = make_model(), ADAM
    res = fit(model, mse, opt, make_batch, 6, progress=False)
    step = make_train_step(mse, opt)
    m, s = model, opt.init(eqx.filter(model, eqx.is_inexact_array))
    losses = []
    for i in range(6):
        m, s, loss, aux, ok = step(m, s, make_batch(i))
        assert bool(ok) and aux is None
        losses.append(float(loss))
    assert _equal(res.model, m) and _equal(res.opt_state, s)
    assert res.history["loss"] == losses


def test_history_records_aux_scalars_and_eval():
    val = make_batch(10_000, 64)
    res = fit(
        make_model(),
        mse_aux,
        ADAM,
        make_batch,
        12,
        has_aux=True,
        eval_fn=lambda m: {"mse": mse(m, val)},
        eval_every=5,
        progress=False,
    )
    h = res.history
    assert len(h["max_err"]) == 12  # scalar aux leaf recorded; the per-example "pred" array is not
    assert "pred" not in h
    assert all(mx >= lo for mx, lo in zip(h["max_err"], h["loss"]))  # max >= mean of the squared errors
    assert h["eval_step"] == [5, 10, 12]  # every 5 steps and after the last one
    np.testing.assert_allclose(h["eval_mse"][-1], float(mse(res.model, val)), rtol=1e-6)
    # a scalar eval_fn without eval_every: evaluated once at the end
    res2 = fit(make_model(), mse, optax.sgd(1e-2), make_batch, 3, eval_fn=lambda m: mse(m, val), progress=False)
    assert res2.history["eval_step"] == [3] and len(res2.history["eval"]) == 1


def test_data_forms_list_cycles_and_iterator_runs_out():
    batches = [make_batch(i) for i in range(3)]
    opt = ADAM
    from_list = fit(make_model(), mse, opt, batches, 7, progress=False)
    from_call = fit(make_model(), mse, opt, lambda s: batches[s % 3], 7, progress=False)
    assert _equal(from_list.model, from_call.model)
    with pytest.warns(RuntimeWarning, match="ran out after step 3"):
        short = fit(make_model(), mse, opt, iter(batches), 7, progress=False)
    assert short.step == 3 and len(short.history["loss"]) == 3


def test_data_from_key_and_key_returned():
    key = jax.random.key(3)
    res = fit(make_model(), mse, ADAM, make_batch_from_key, 4, key=key, progress=False)
    # the loop splits the key once per step: key_{i+1}, sub_i = split(key_i); data gets sub_i.
    k, subs = key, []
    for _ in range(4):
        k, sub = jax.random.split(k)
        subs.append(sub)
    assert np.array_equal(jax.random.key_data(res.key), jax.random.key_data(k))
    ref = fit(make_model(), mse, ADAM, [make_batch_from_key(s) for s in subs], 4, progress=False)
    assert _equal(res.model, ref.model)


def test_start_continues_bit_identically():
    opt = ADAM
    full = fit(make_model(), mse_aux, opt, make_batch_from_key, 12, has_aux=True, key=jax.random.key(1), progress=False)
    half = fit(make_model(), mse_aux, opt, make_batch_from_key, 6, has_aux=True, key=jax.random.key(1), progress=False)
    rest = fit(make_model(7), mse_aux, opt, make_batch_from_key, 12, has_aux=True, key=None, start=half, progress=False)
    assert rest.step == 12
    assert _equal(rest.model, full.model) and _equal(rest.opt_state, full.opt_state)
    assert np.array_equal(jax.random.key_data(rest.key), jax.random.key_data(full.key))
    assert rest.history["loss"] == full.history["loss"]
    # already at num_steps: nothing to do
    again = fit(make_model(), mse, opt, make_batch, 12, start=FitResult(rest.model, rest.opt_state, 12, None, {}))
    assert again.step == 12 and again.history["loss"] == []


def test_extra_args_optimizer_receives_value():
    """GradientTransformationExtraArgs (reduce_on_plateau needs `value=loss`) is accepted and works."""
    opt = optax.chain(ADAM, optax.contrib.reduce_on_plateau(patience=2, factor=0.5))
    assert isinstance(opt, optax.GradientTransformationExtraArgs)
    res = fit(make_model(), mse, opt, make_batch, 20, progress=False)
    assert np.isfinite(res.history["loss"]).all()
    assert int(res.opt_state[1].count) >= 0


def test_progress_bar_shows_loss(capsys):
    fit(make_model(), mse, ADAM, make_batch, 5, progress=True, desc="unit")
    err = capsys.readouterr().err
    assert "unit" in err and "loss=" in err and "5/5" in err
    fit(make_model(), mse, ADAM, make_batch, 5, progress=False)
    assert capsys.readouterr().err == ""


def test_fit_with_plain_pytree_model():
    """Any pytree works as a model: least squares on a dict of arrays matches the normal-equations solution."""
    x = jax.random.normal(jax.random.key(0), (64, 3))
    w_true = jnp.array([1.0, -2.0, 0.5])
    y = x @ w_true + 0.3

    def loss(p, batch):
        xb, yb = batch
        return jnp.mean((xb @ p["w"] + p["b"] - yb) ** 2)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = fit({"w": jnp.zeros(3), "b": jnp.zeros(())}, loss, optax.adam(5e-2), [(x, y)], 600, progress=False)
    # noise-free data: the minimiser is exact; Adam reaches it to ~1e-3 in 600 steps.
    np.testing.assert_allclose(res.model["w"], w_true, atol=2e-3)
    np.testing.assert_allclose(res.model["b"], 0.3, atol=2e-3)


def test_steps_per_call_is_bit_identical():
    """K steps per device call vs one step per call: bit-identical parameters, optimiser state, key and per-step
    history, for K dividing the run or not, and for the automatic size. (Equality with the separately compiled
    per-step fallback is checked for this model in test_fit_equals_manual_step_loop.)"""
    kw = dict(has_aux=True, key=jax.random.key(5), progress=False)
    one = fit(make_model(), mse_aux, ADAM, make_batch_from_key, 11, steps_per_call=1, **kw)
    for k in (4, None):
        res = fit(make_model(), mse_aux, ADAM, make_batch_from_key, 11, steps_per_call=k, **kw)
        assert _equal(res.model, one.model) and _equal(res.opt_state, one.opt_state), k
        assert np.array_equal(jax.random.key_data(res.key), jax.random.key_data(one.key))
        for name in ("step", "loss", "max_err"):
            assert res.history[name] == one.history[name], (k, name)
    # timing fields: compile time reported apart from the median step time
    assert one.wall_s > 0 and one.compile_s >= 0 and one.step_s > 0
    assert len(res.history["time"]) == 11 and all(t >= 0 for t in res.history["time"])


def test_resume_with_steps_per_call_not_dividing_checkpoint_interval(tmp_path):
    """Chunks end exactly at checkpoint steps (K=3, checkpoint_every=5), and a run resumed from a checkpoint with a
    different K (4) finishes bit-identically to an uninterrupted one-step-per-call run."""
    from jaxsciml.train import Checkpointer

    full = fit(
        make_model(), mse, ADAM, make_batch_from_key, 13, key=jax.random.key(2), steps_per_call=1, progress=False
    )
    with Checkpointer(tmp_path, max_to_keep=10) as ck:
        part = fit(make_model(), mse, ADAM, make_batch_from_key, 8, key=jax.random.key(2), checkpointer=ck,
                   checkpoint_every=5, steps_per_call=3, progress=False)  # fmt: skip
        assert ck.all_steps() == [5, 8] and part.step == 8
    with Checkpointer(tmp_path, max_to_keep=10) as ck:  # a fresh handle, as after a crash
        rest = fit(make_model(1), mse, ADAM, make_batch_from_key, 13, key=jax.random.key(9), checkpointer=ck,
                   checkpoint_every=5, steps_per_call=4, progress=False)  # fmt: skip
        assert ck.all_steps() == [5, 8, 10, 13]
        _, _, s10, _, h10 = ck.restore(make_model(1), full.opt_state, step=10)
    assert rest.step == 13
    assert _equal(rest.model, full.model) and _equal(rest.opt_state, full.opt_state)
    assert np.array_equal(jax.random.key_data(rest.key), jax.random.key_data(full.key))
    assert rest.history["loss"] == full.history["loss"] and rest.history["step"] == list(range(13))
    assert s10 == 10 and h10["loss"] == full.history["loss"][:10]


def test_multisteps_optimizer_accepted():
    """optax.MultiSteps (init/update, not a GradientTransformation) accumulates 2 mini-steps per update."""
    opt = optax.MultiSteps(optax.adam(1e-2), every_k_schedule=2)
    one = fit(make_model(), mse, opt, make_batch, 1, progress=False)
    two = fit(make_model(), mse, opt, make_batch, 2, progress=False)
    assert _equal(one.model, make_model())  # first mini-step only accumulates
    # two mini-steps = one Adam step on the mean gradient of batches 0 and 1

    @eqx.filter_jit
    def reference(model):
        g = [eqx.filter_grad(mse)(model, make_batch(i)) for i in range(2)]
        mean_g = jax.tree_util.tree_map(lambda a, b: (a + b) / 2, *g)
        adam = optax.adam(1e-2)
        params = eqx.filter(model, eqx.is_inexact_array)
        updates, _ = adam.update(mean_g, adam.init(params), params)
        return eqx.apply_updates(model, updates)

    ref = reference(make_model())
    for a, b in zip(params_of(two.model), params_of(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)  # float32; summation order of the mean differs


def test_max_time_s_stops_early_and_still_finishes_cleanly():
    val = make_batch(10_000, 64)
    res = fit(make_model(), mse, ADAM, make_batch, 10**7, max_time_s=0.3, eval_fn=lambda m: mse(m, val),
              progress=False)  # fmt: skip
    assert 0 < res.step < 10**7 and len(res.history["loss"]) == res.step
    assert res.history["eval_step"] == [res.step]  # the final evaluation still happens
    # training time (wall minus compile) stops near the budget; generous bound for a loaded CI machine
    assert res.wall_s - res.compile_s < 0.3 + 5.0


def test_untraceable_data_falls_back_with_a_warning():
    batches = [make_batch(i) for i in range(3)]
    with pytest.warns(RuntimeWarning, match="`data` could not be traced.*falling back to one step per device call"):
        res = fit(make_model(), mse, ADAM, lambda s: batches[s % 3], 4, progress=False)
    assert res.step == 4
    with pytest.warns(RuntimeWarning, match=r"`data\(step\)` does not depend on `step`"):
        res = fit(make_model(), mse, ADAM, lambda s: batches[0], 2, progress=False)
    assert res.step == 2
