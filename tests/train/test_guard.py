"""NaN/inf guard: the step leaves the state unchanged; fit skips (with a report) or raises before any write.

The guard covers the loss, the gradients, and the *new* parameters and optimiser state (a finite but huge gradient
overflows the second-moment statistics of Adam and Shampoo); it holds inside fit's multi-step device calls."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsciml.optim import shampoo
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
    """Jittable (fit runs it inside its multi-step loop): a NaN target at the steps in BAD."""
    x, y = make_batch(step)
    bad = jnp.any(jnp.asarray(step) == jnp.array(BAD))
    return x, y.at[0, 0].set(jnp.where(bad, jnp.nan, y[0, 0]))


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
    with pytest.warns(RuntimeWarning, match=r"non-finite loss, gradient or update at step \d") as record:
        res = fit(make_model(), mse, ADAM, _data_with_nans, 10, steps_per_call=4, progress=False)
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


HUGE_AT = 2


def _huge_gradient_loss(p, scale):
    """Linear in the parameters: the gradient is `scale` everywhere, the loss finite even for scale 1e20."""
    return jnp.sum(p["w"]) * scale + jnp.sum(p["w"] ** 2)


def _huge_scale(step):
    return jnp.where(step == HUGE_AT, 1e20, 1.0).astype(jnp.float32)


@pytest.mark.parametrize(
    "opt",
    [optax.adam(1e-2), shampoo(1e-2, block_size=8, precondition_every=1)],
    ids=["adam", "shampoo"],
)
def test_huge_finite_gradient_is_skipped(opt):
    """A gradient of 1e20 (finite; float32) squares to inf in the second-moment statistics. The loss and the gradient
    are finite, so only the check of the new optimiser state catches it: the step is skipped and reported, and model
    and optimiser state are bit-identical to those before it."""
    params = {"w": jnp.linspace(-1.0, 1.0, 24, dtype=jnp.float32).reshape(6, 4)}
    g = jax.grad(_huge_gradient_loss)(params, jnp.float32(1e20))["w"]
    assert jnp.all(jnp.isfinite(g)) and not jnp.all(jnp.isfinite(jnp.square(g)))
    before = fit(params, _huge_gradient_loss, opt, _huge_scale, HUGE_AT, progress=False)
    with pytest.warns(RuntimeWarning, match=f"at step {HUGE_AT} "):
        res = fit(params, _huge_gradient_loss, opt, _huge_scale, HUGE_AT + 1, steps_per_call=3, progress=False)
    assert res.history["nonfinite_steps"] == [HUGE_AT]
    assert np.isfinite(res.history["loss"][HUGE_AT])  # the loss alone would not have caught it
    assert _equal(res.model, before.model) and _equal(res.opt_state, before.opt_state)
    # the bare step reports it too and returns its inputs unchanged
    step = make_train_step(_huge_gradient_loss, opt)
    new, new_state, loss, _, ok = step(before.model, before.opt_state, jnp.float32(1e20))
    assert not bool(ok) and np.isfinite(float(loss))
    assert _equal(new, before.model) and _equal(new_state, before.opt_state)
    # without the guard the state would hold inf
    _, bad_state, _, _, _ = make_train_step(_huge_gradient_loss, opt, nonfinite="ignore")(
        before.model, before.opt_state, jnp.float32(1e20)
    )
    assert not all(
        np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(eqx.filter(bad_state, eqx.is_inexact_array))
    )


@pytest.mark.parametrize("steps_per_call", [None, 8, 1])
def test_state_only_overflow_mid_call_equals_the_per_step_guard(steps_per_call):
    """The multi-step program checks the state only at the end of a call; a call whose state overflowed is replayed
    one step at a time. Training through such a call ends where a per-step guarded loop ends, with the same report."""
    params = {"w": jnp.linspace(-1.0, 1.0, 24, dtype=jnp.float32).reshape(6, 4)}
    opt = optax.adam(1e-2)
    with pytest.warns(RuntimeWarning, match=f"at step {HUGE_AT} "):
        res = fit(params, _huge_gradient_loss, opt, _huge_scale, 8, steps_per_call=steps_per_call, progress=False)
    assert res.history["nonfinite_steps"] == [HUGE_AT] and res.step == 8 and res.history["step"] == list(range(8))
    p, s = params, opt.init(params)
    step = make_train_step(_huge_gradient_loss, opt)
    for i in range(8):
        p, s, *_ = step(p, s, _huge_scale(i))
    np.testing.assert_allclose(res.model["w"], p["w"], rtol=1e-6, atol=1e-7)  # two compiled programs: float32 ulps
    assert int(res.opt_state[0].count) == int(s[0].count) == 7


def test_state_entries_that_start_non_finite_are_allowed():
    """reduce_on_plateau starts its best value at inf: a state entry that was already non-finite does not count."""
    opt = optax.chain(ADAM, optax.contrib.reduce_on_plateau(patience=2))
    res = fit(make_model(), mse, opt, make_batch, 3, progress=False)
    assert res.history["nonfinite_steps"] == [] and int(res.opt_state[0][0].count) == 3


def test_optimizer_health_is_recorded_and_warned():
    """fit records `jaxsciml.optim.health` at chunk boundaries and warns when a counter grows: a healthy Shampoo run
    records zeros; a state whose root-fallback counter has grown (as after an overflowed statistic) is reported."""
    params = {"w": jnp.ones((6, 4)), "b": jnp.zeros(4)}

    def loss(p, x):
        return jnp.mean((x @ p["w"] + p["b"]) ** 2)

    def data(step):
        return jax.random.normal(jax.random.fold_in(jax.random.key(0), step), (8, 6))

    opt = shampoo(1e-2, precondition_every=2)
    res = fit(params, loss, opt, data, 6, progress=False)
    assert res.history["health_step"][-1] == 6
    assert res.history["root_fallbacks"] == [0] * len(res.history["health_step"])
    assert res.history["nonfinite_statistics"] == [0] * len(res.history["health_step"])

    (state,) = [s for s in jax.tree_util.tree_leaves(res.opt_state, is_leaf=lambda x: hasattr(x, "root_fallbacks"))
                if hasattr(s, "root_fallbacks")]  # fmt: skip
    sick = eqx.tree_at(lambda t: t.root_fallbacks, state, jnp.asarray(3, jnp.int32))
    sick_opt_state = jax.tree_util.tree_map(
        lambda x: sick if x is state else x, res.opt_state, is_leaf=lambda x: x is state
    )
    with pytest.warns(RuntimeWarning, match="3 new root fallbacks"):
        res2 = fit(params, loss, opt, data, 8, start=dataclasses.replace(res, opt_state=sick_opt_state), progress=False)
    assert res2.history["root_fallbacks"][-1] == 3


def test_finiteness_checks_over_mixed_dtypes_match_leafwise():
    """`all_finite` / `stays_finite` concatenate the leaves of each dtype into one reduction: same answers as a
    leaf-by-leaf check, with a NaN/inf in any leaf of any dtype, and entries non-finite before allowed to stay so."""
    from jaxsciml.train._step import all_finite, stays_finite

    def tree(nan_at=None, inf16=False):
        t = {"a": jnp.ones((3, 2)), "b": jnp.ones(4, jnp.float16), "c": jnp.ones(()), "i": jnp.arange(3)}
        if nan_at is not None:
            t[nan_at] = t[nan_at].at[(0,) * t[nan_at].ndim].set(jnp.nan)
        if inf16:
            t["b"] = t["b"].at[1].set(jnp.inf)
        return t

    assert bool(all_finite(tree()))
    for leaf in ("a", "b", "c"):
        assert not bool(all_finite(tree(leaf)))
        assert not bool(stays_finite(tree(), tree(leaf)))  # finite -> NaN
        assert bool(stays_finite(tree(leaf), tree(leaf)))  # NaN before: may stay NaN
    assert not bool(stays_finite(tree(), tree(inf16=True)))
    assert bool(stays_finite(tree(inf16=True), tree(inf16=True)))
    # a leaf whose dtype changes is compared with its old value on its own
    old, new = {"x": jnp.array([jnp.inf, 1.0])}, {"x": jnp.array([jnp.inf, 2.0], jnp.float16)}
    assert bool(stays_finite(old, new))
    assert not bool(stays_finite({"x": jnp.ones(2)}, new))
