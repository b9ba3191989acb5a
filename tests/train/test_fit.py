"""fit: convergence, equivalence with the bare step, history, data forms, continuation, progress bar."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsciml.train import FitResult, fit, make_train_step

from ._util import ADAM, make_batch, make_batch_from_key, make_model, mse, mse_aux


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
