"""The parts `fit` is made of, each on its own: where batches come from (`_data`), the compiled multi-step program
(`_program`), the two runners (`_loop`), the recorder (`_history`) and the guard's keep-or-replace (`_step`)."""

import itertools
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tqdm.auto import tqdm

from jaxsciml.train._data import Batches, plan_data
from jaxsciml.train._history import Recorder, named_scalars
from jaxsciml.train._loop import ChunkRunner, StepRunner, TrainState
from jaxsciml.train._program import build_chunk, cached_train_step
from jaxsciml.train._step import keep_if_not, make_train_step

from ._util import ADAM, make_batch, make_batch_from_key, make_model, mse, mse_aux


def _init(model):
    return ADAM.init(eqx.filter(model, eqx.is_inexact_array))


def _recorder(nonfinite="skip"):
    return Recorder({}, nonfinite, tqdm(disable=True), False)


# ------------------------------------------------------------------------------------------------------------ _data
def test_batches_reiterable_cycles_and_fast_forwards():
    data = [0, 1, 2]
    b = Batches(data, "auto", None, start_step=4)  # a resumed run at step 4 starts at batch 4 % 3
    assert [b.get(s, None) for s in range(4, 10)] == [1, 2, 0, 1, 2, 0]
    it = Batches(iter([5, 6]), "auto", None, start_step=4)  # a one-shot iterator is consumed where it is
    assert [it.get(0, None), it.get(1, None)] == [5, 6]
    with pytest.raises(StopIteration):
        it.get(2, None)
    with pytest.raises(ValueError, match="empty"):
        Batches([], "auto", None, 0)
    assert Batches(lambda s: s * 2, "step", None, 0).get(3, None) == 6
    assert Batches(lambda k: k, "auto", "K", 0).get(3, "sub") == "sub"  # with a key, data(key) by default


def test_plan_data_decides_where_batches_come_from():
    key = jax.random.key(0)
    assert plan_data(make_batch, "auto", None, 0, None, False) == ("step", make_batch, None)
    assert plan_data(make_batch_from_key, "auto", key, 0, None, False) == ("key", make_batch_from_key, None)
    assert plan_data(make_batch, "step", key, 0, None, False)[0] == "step"  # forced
    # a list of same-shape batches is stacked on the device
    batches = [make_batch(i) for i in range(3)]
    mode, fn, stacked = plan_data(batches, "auto", None, 0, None, False)
    assert mode == "stacked" and fn is None and stacked[0].shape == (3, 32, 3)
    np.testing.assert_array_equal(stacked[0][2], batches[2][0])
    # a callable that ignores its argument would be frozen into a constant: one step per call, with a warning
    fixed = make_batch(0)
    with pytest.warns(RuntimeWarning, match="does not depend on"):
        assert plan_data(lambda s: fixed, "auto", None, 0, None, False) is None
    with pytest.raises(ValueError, match="does not depend on its argument"):
        plan_data(lambda s: fixed, "auto", None, 0, 4, False)
    # iterators and custom steps run from the host; steps_per_call=1 asks for nothing more
    assert plan_data(iter(batches), "auto", None, 0, None, False) is None
    with pytest.raises(ValueError, match="custom `train_step`"):
        plan_data(make_batch, "auto", None, 0, 4, True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plan_data(make_batch, "auto", None, 0, 1, True) is None
    with pytest.raises(ValueError, match="needs a PRNG `key`"):
        plan_data(make_batch, "key", None, 0, None, False)


# ---------------------------------------------------------------------------------------------------------- _program
def test_program_equals_the_single_step_and_stops_on_raise():
    """n steps of the compiled while_loop = n calls of the jitted single step (float32 tolerances: two separately
    compiled programs), whatever n; it stops after the first step with a non-finite loss or gradient, and reports at the
    end of the call whether the parameters and optimiser state stayed finite."""
    model = make_model()
    opt_state = _init(model)
    program = build_chunk(mse_aux, ADAM, True, make_batch, "step", 16)
    m, s, key, done, losses, oks, auxs, state_ok = program(
        model, opt_state, None, jnp.asarray(3), jnp.asarray(5, jnp.int32), None
    )
    assert int(done) == 5 and key is None and bool(np.all(oks[:5])) and set(auxs) == {"max_err"} and bool(state_ok)
    step = make_train_step(mse_aux, ADAM, has_aux=True)
    m2, s2 = model, opt_state
    for i in range(3, 8):
        m2, s2, loss, aux, ok = step(m2, s2, make_batch(i))
        np.testing.assert_allclose(losses[i - 3], loss, rtol=1e-5)
        np.testing.assert_allclose(auxs["max_err"][i - 3], aux["max_err"], rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(m), jax.tree_util.tree_leaves(m2)):
        if isinstance(a, jax.Array):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

    def bad_at_2(i):
        x, y = make_batch(i)
        return jnp.where(i == 2, jnp.nan, x), y

    stopping = build_chunk(mse, ADAM, False, bad_at_2, "step", 16)
    m3, _, _, done, losses, oks, _, state_ok = stopping(
        model, opt_state, None, jnp.asarray(0), jnp.asarray(6, jnp.int32), None
    )
    assert int(done) == 3 and list(np.asarray(oks[:3])) == [True, True, False] and np.isnan(losses[2])
    assert not bool(state_ok)  # the NaN gradient reached the parameters: the end-of-call check sees it too


# ------------------------------------------------------------------------------------------------------ _history
def test_recorder_names_warns_and_raises():
    rec = _recorder()
    with pytest.warns(RuntimeWarning, match="at step 11"):
        rec.record(10, np.array([1.0, np.nan]), np.array([True, False]), {"a": [3, 4]}, 0.5, 2)
    h = rec.history
    assert h["step"] == [10, 11] and h["loss"][0] == 1.0 and h["time"] == [0.25, 0.25] and h["a"] == [3, 4]
    assert h["nonfinite_steps"] == [11]
    with pytest.raises(FloatingPointError, match="at step 0"):
        _recorder("raise").record(0, np.array([np.inf]), np.array([False]), {}, 0.1, 2)
    names = [n for n, _ in named_scalars({"loss": 1.0, "x": {"y": jnp.ones(())}, "v": jnp.ones(3)}, "aux")]
    assert names == ["aux/loss", "x/y"]  # reserved names prefixed; non-scalars not recorded
    rec.evaluate(lambda m: {"err": m}, 2.5, 12)
    assert h["eval_step"] == [12] and h["eval_err"] == [2.5] and rec.last_eval() == 12


# ---------------------------------------------------------------------------------------------------------- _loop
def test_runners_advance_to_the_same_state():
    """The multi-step runner and the host's one-step runner advance the state to the same place, stop exactly at
    `stop_at`, and record the same history (float32 tolerances)."""
    model = make_model()
    key = jax.random.key(3)
    states, recs = [], []
    chunk = ChunkRunner(build_chunk(mse, ADAM, False, make_batch_from_key, "key", 8), None, None, 8)
    stepper = StepRunner(cached_train_step(mse, ADAM, False, "skip"), True, Batches(make_batch_from_key, "key", key, 0))
    for runner in (chunk, stepper):
        state, rec = TrainState(model, _init(model), key, 0), _recorder()
        for _ in itertools.count():
            assert runner.advance(state, 13, rec, None, 2)
            assert state.step <= 13
            if state.step == 13:
                break
        runner.flush(rec, state, 2)
        states.append(state)
        recs.append(rec)
    assert recs[0].history["step"] == recs[1].history["step"] == list(range(13))
    np.testing.assert_allclose(recs[0].history["loss"], recs[1].history["loss"], rtol=1e-5)
    np.testing.assert_array_equal(jax.random.key_data(states[0].key), jax.random.key_data(states[1].key))
    for a, b in zip(jax.tree_util.tree_leaves(states[0].model), jax.tree_util.tree_leaves(states[1].model)):
        if isinstance(a, jax.Array):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # a one-shot iterator that runs out: advance says so, having recorded what it did
    state, rec = TrainState(model, _init(model), None, 0), _recorder()
    short = StepRunner(
        cached_train_step(mse, ADAM, False, "skip"), True, Batches(iter([make_batch(0)]), "auto", None, 0)
    )
    assert short.advance(state, 5, rec, None, 2) and not short.advance(state, 5, rec, None, 2)
    assert state.step == 1 and rec.history["step"] == [0]


# ------------------------------------------------------------------------------------------------------------ _step
def test_keep_if_not_selects_and_vmaps():
    new = {"a": jnp.ones(3), "n": jnp.asarray(2, jnp.int32)}
    old = {"a": jnp.zeros(3), "n": jnp.asarray(1, jnp.int32)}
    for ok, want in ((True, new), (False, old)):
        got = jax.jit(keep_if_not)(jnp.asarray(ok), new, old)
        assert all(np.array_equal(got[k], want[k]) for k in new)
    oks = jnp.array([True, False])
    got = jax.vmap(keep_if_not)(oks, jax.tree_util.tree_map(lambda x: jnp.stack([x, x]), new),
                                jax.tree_util.tree_map(lambda x: jnp.stack([x, x]), old))  # fmt: skip
    np.testing.assert_array_equal(got["a"], [[1, 1, 1], [0, 0, 0]])
    np.testing.assert_array_equal(got["n"], [2, 1])
