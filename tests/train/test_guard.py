"""NaN/inf guard: the step leaves the state unchanged; fit skips (with a report) or raises before any write."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsciml.train import Checkpointer, fit, make_train_step

from ._util import ADAM, make_batch, make_model, mse


def _equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


def _init():
    model = make_model()
    return model, ADAM.init(eqx.filter(model, eqx.is_inexact_array))


def _nan_batch(step):
    x, y = make_batch(step)
    return x, y.at[0, 0].set(jnp.nan)


BAD = (3, 7)


def _data_with_nans(step):
    return _nan_batch(step) if step in BAD else make_batch(step)


def test_step_guard_on_nan_loss():
    model, opt_state = _init()
    step = make_train_step(mse, ADAM)
    new_model, new_opt, loss, _, ok = step(model, opt_state, _nan_batch(0))
    assert not bool(ok) and np.isnan(float(loss))
    assert _equal(new_model, model) and _equal(new_opt, opt_state)  # nothing applied, Adam count not advanced
    good_model, good_opt, loss, _, ok = step(model, opt_state, make_batch(0))
    assert bool(ok) and np.isfinite(float(loss))
    assert not _equal(good_model, model) and int(good_opt[0].count) == 1


def test_step_guard_on_inf_gradient_with_finite_loss():
    """sqrt(|w - c|) at w == c: loss 0, gradient inf -> caught by the gradient check."""

    def loss(p, c):
        return jnp.sqrt(jnp.abs(p["w"] - c)).sum()

    params = {"w": jnp.array([1.0, 2.0])}
    opt_state = ADAM.init(params)
    new, new_opt, value, _, ok = make_train_step(loss, ADAM)(params, opt_state, jnp.array([1.0, 0.0]))
    assert np.isfinite(float(value)) and not bool(ok)
    assert _equal(new, params) and _equal(new_opt, opt_state)
    # "ignore" applies the update anyway (and still reports ok=False)
    bad, _, _, _, ok = make_train_step(loss, ADAM, nonfinite="ignore")(params, opt_state, jnp.array([1.0, 0.0]))
    assert not bool(ok) and not np.all(np.isfinite(np.asarray(bad["w"])))


def test_fit_skip_reports_steps_and_equals_training_without_bad_batches():
    with pytest.warns(RuntimeWarning, match=r"non-finite loss or gradient at step \d") as record:
        res = fit(make_model(), mse, ADAM, _data_with_nans, 10, progress=False)
    messages = [str(w.message) for w in record if "non-finite" in str(w.message)]
    assert len(messages) == 2 and "step 3 " in messages[0] and "step 7 " in messages[1]
    assert res.history["nonfinite_steps"] == list(BAD)
    assert res.step == 10 and np.isnan(res.history["loss"][3]) and np.isnan(res.history["loss"][7])
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(eqx.filter(res.model, eqx.is_array)))
    # the skipped steps are exact no-ops: same result as stepping over the good batches only
    model, opt_state = _init()
    step = make_train_step(mse, ADAM)
    for i in range(10):
        if i not in BAD:
            model, opt_state, *_ = step(model, opt_state, make_batch(i))
    assert _equal(res.model, model) and _equal(res.opt_state, opt_state)


def test_fit_raise_names_step_and_keeps_last_checkpoint(tmp_path):
    clean = fit(make_model(), mse, ADAM, make_batch, 2, progress=False)
    with Checkpointer(tmp_path) as ck:
        with pytest.raises(FloatingPointError, match="at step 3"):
            fit(make_model(), mse, ADAM, _data_with_nans, 10, nonfinite="raise", checkpointer=ck,
                checkpoint_every=2, progress=False)  # fmt: skip
        assert ck.all_steps() == [2]  # no checkpoint of step 3 or later was written
        m, s, step, _, h = ck.restore(make_model(1), clean.opt_state)
    assert step == 2 and _equal(m, clean.model) and _equal(s, clean.opt_state)
    assert h["loss"] == clean.history["loss"]


def test_exception_in_loop_leaves_last_checkpoint_intact(tmp_path):
    def data(step):
        if step == 5:
            raise RuntimeError("data pipeline failed")
        return make_batch(step)

    ref = fit(make_model(), mse, ADAM, make_batch, 4, progress=False)
    with Checkpointer(tmp_path) as ck:
        with pytest.raises(RuntimeError, match="data pipeline failed"):
            fit(make_model(), mse, ADAM, data, 10, checkpointer=ck, checkpoint_every=2, progress=False)
    with Checkpointer(tmp_path) as ck:  # a fresh handle, as after a crash
        assert ck.all_steps() == [2, 4]
        m, s, step, _, _ = ck.restore(make_model(1), ref.opt_state)
        assert step == 4 and _equal(m, ref.model) and _equal(s, ref.opt_state)
        # and resuming finishes the job exactly like an uninterrupted run
        resumed = fit(make_model(1), mse, ADAM, make_batch, 10, checkpointer=ck, progress=False)
    full = fit(make_model(), mse, ADAM, make_batch, 10, progress=False)
    assert _equal(resumed.model, full.model)
