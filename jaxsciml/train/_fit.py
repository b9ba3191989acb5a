"""The ``fit`` training loop (private).

``fit`` itself only validates its arguments, sets up the initial state and runs the host loop (progress, time budget,
evaluation, checkpoints, history). The parts it composes live in their own modules and are tested on their own:

- `_data`: where the batches come from (`plan_data`: on the device inside the compiled program, or `Batches` on the
  host);
- `_program`: the compiled multi-step program (one ``lax.while_loop`` of steps, checked per step and per call);
- `_loop`: the two ways of advancing the state (`ChunkRunner`, `StepRunner`);
- `_history`: the host-side `Recorder` (history, non-finite steps, optimiser health, progress bar).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any, Generic, Literal, TypeVar

import equinox as eqx
import optax
from jaxtyping import PRNGKeyArray, PyTree
from tqdm.auto import tqdm

from ._checkpoint import Checkpointer
from ._checks import _NONFINITE_FIT, check_count, check_loss_fn, check_max_time, check_nonfinite, check_optimizer
from ._data import Batches, check_steps_per_call, plan_data
from ._history import Recorder
from ._loop import AUTO_CAPACITY, ChunkRunner, StepRunner, TrainState
from ._program import cached_chunk, cached_train_step, init_optimizer
from ._step import NonFiniteStep, TrainStep
from ._timing import compile_seconds

NonFinite = Literal["skip", "raise"]
DataArg = Literal["auto", "step", "key"]


ModelT = TypeVar("ModelT")


@dataclasses.dataclass(frozen=True)
class FitResult(Generic[ModelT]):
    """What [`fit`][jaxsciml.train.fit] returns.

    **Fields:**

    - `model`: the trained model.
    - `opt_state`: the optimiser state after the last step.
    - `step`: the number of completed steps (skipped non-finite steps included).
    - `key`: the PRNG key after the last step (`None` if `fit` was called without one).
    - `history`: a dict of lists. Per training step (aligned lists): `"step"` (index of the batch, 0-based),
      `"loss"`, `"time"` (wall seconds of the step, compilation excluded; steps run in one device call share its
      time equally) and one list per scalar leaf of `aux` (named by its dict keys/attributes joined by `/`, or
      `"aux"` for a scalar aux). Per evaluation: `"eval_step"` (completed steps when evaluated) and `"eval_<name>"`
      (or `"eval"` for a scalar `eval_fn`). `"nonfinite_steps"`: steps whose update was skipped because of NaN/inf.
      With a `jaxsciml.optim` Shampoo/SOAP state in the optimiser, at each chunk boundary: `"health_step"` and the
      counters of [`jaxsciml.optim.health`][] (`"root_fallbacks"`, `"nonfinite_statistics"`), with a warning when one
      grows.
    - `wall_s`: wall seconds of this `fit` call (restoring, compiling, evaluating and checkpointing included).
    - `compile_s`: seconds of it spent tracing and compiling (as reported by `jax.monitoring`).
    - `step_s`: median seconds per training step in this call, compilation excluded (`nan` if no step ran).
    """

    model: ModelT
    opt_state: PyTree
    step: int
    key: PRNGKeyArray | None
    history: dict[str, list[Any]]
    wall_s: float = 0.0
    compile_s: float = 0.0
    step_s: float = math.nan


def fit(
    model: ModelT,
    loss_fn: Callable[[ModelT, Any], Any],
    optimizer: optax.GradientTransformation | optax.MultiSteps,
    data: Iterable[Any] | Callable[[Any], Any],
    num_steps: int,
    *,
    has_aux: bool = False,
    key: PRNGKeyArray | None = None,
    eval_fn: Callable[[ModelT], Any] | None = None,
    eval_every: int = 0,
    checkpointer: Checkpointer | None = None,
    checkpoint_every: int = 0,
    nonfinite: NonFinite = "skip",
    progress: bool = True,
    start: FitResult[ModelT] | None = None,
    resume: bool = True,
    data_arg: DataArg = "auto",
    train_step: TrainStep | None = None,
    desc: str = "fit",
    steps_per_call: int | None = None,
    max_time_s: float | None = None,
) -> FitResult[ModelT]:
    """Train `model` to step `num_steps` with an optax optimiser.

    Each step: draw a batch, compute `loss_fn(model, batch)` and its gradient (`eqx.filter_value_and_grad`, w.r.t. the
    inexact arrays of `model`), apply `optimizer`, with a NaN/inf guard -- the step of
    [`make_train_step`][jaxsciml.train.make_train_step] -- then record the loss.

    **Several steps per device call.** Small models take microseconds per step, so a Python loop with a host sync
    per step would dominate. When `data` is a jittable callable (or a list/tuple of same-shape array batches), `fit`
    runs up to `steps_per_call` steps inside one compiled `lax.while_loop` per device call, and records the loss (and
    scalar aux) of every step from per-step buffers. One compiled program serves every number of steps per call, so
    the result is bit-identical whatever `steps_per_call` (and across resumes). Calls end exactly at evaluation and
    checkpoint steps, so those intervals are honoured; the progress bar, history, `max_time_s` and warnings are
    handled between calls. A Python iterator, a custom `train_step`, or a callable that cannot be traced (it uses
    Python control flow on its argument, or has side effects -- detected as an output that does not depend on the
    argument) falls back to one step per call (with a warning for a callable, unless `steps_per_call=1`); that
    separately compiled step may differ from the multi-step program in the last bits for some models.

    **Data.** `data` is either

    - a callable, called once per step as `data(step)` (the 0-based step index, a traced integer when several steps
      run per call) or, if a `key` is given, `data(subkey)` with `key, subkey = jax.random.split(key)` each step
      (force either with `data_arg="step"` or `"key"`). It must be a pure function of its argument. Because the
      step and the key are stored in checkpoints, a resumed run sees exactly the batches an uninterrupted run would:
      this is the recommended form;
    - a re-iterable (list, tuple, an object whose `__iter__` returns a fresh iterator): cycled over epochs (step `s`
      uses batch `s % len(data)`); on resume the first `step` batches are skipped, so resumed runs also see the same
      batches. A list/tuple of same-structure, same-shape array batches is stacked on the device once;
    - a one-shot iterator (generator): consumed from its current position (so not reproducible across a resume);
      training stops early with a warning if it runs out.

    **Steps.** `num_steps` is the *total* number of steps: a run resumed from a checkpoint (or `start`) at step `s`
    performs `num_steps - s` more steps, so re-running the same script after a crash finishes the same job.

    **Arguments:**

    - `model`: the initial model (any pytree, typically an `eqx.Module`); also the template for restoring.
    - `loss_fn`: `loss_fn(model, batch) -> loss` (a scalar), or `(loss, aux)` with `has_aux=True`; scalar leaves
      of `aux` are recorded in the history. For data-parallel training the loss must be a *mean* over the batch.
    - `optimizer`: an optax `GradientTransformation`, or any object with its `init`/`update` pair (e.g.
      `optax.MultiSteps`); its state starts at `optimizer.init(eqx.filter(model, eqx.is_inexact_array))`.
    - `data`, `num_steps`: see above.
    - `key`: an optional PRNG key, split each step (see Data), saved in checkpoints and returned.
    - `eval_fn`, `eval_every`: `eval_fn(model)` (a scalar or a dict of scalars) is recorded after the last step
      and, if `eval_every > 0`, every `eval_every` completed steps.
    - `checkpointer`, `checkpoint_every`: a [`Checkpointer`][jaxsciml.train.Checkpointer]. If it holds a checkpoint
      (and `resume`, and no `start`), training resumes from the latest one (restored into the structure of
      `model`). A checkpoint is written every `checkpoint_every` steps (0: never periodically) and after the last
      step. On an exception inside the loop no checkpoint is written, so the last good one stays intact.
    - `nonfinite`: what to do with a step whose loss or gradient is NaN/inf, or whose update would turn a finite
      entry of the parameters or the optimiser state into NaN/inf (e.g. a huge gradient overflowing Adam's second
      moment): `"skip"` (default) leaves model and optimiser state unchanged, warns with the step number and records
      it in `history["nonfinite_steps"]`; `"raise"` raises `FloatingPointError` naming the step, before anything is
      written to the model or a checkpoint. Checkpoints therefore never hold such a state. Inside the multi-step
      program the loss and gradients are checked every step and the parameters and optimiser state once per device
      call (a per-step check of the whole state costs as much as a small model's step); a call that fails is replayed
      one step per call with the full check, so the skipped step and the result are those of a per-step guard.
    - `progress`: show a tqdm progress bar with the loss in its postfix.
    - `start`: a previous `FitResult` to continue from (model, optimiser state, step, key and history).
    - `train_step`: a step with the signature of `make_train_step(...)`'s result to use instead, e.g.
      [`make_sharded_train_step`][jaxsciml.train.make_sharded_train_step] for data parallelism (pass
      `replicate(model, mesh)` as `model` and a `data` that returns `shard_batch(...)`). It is called once per step
      and receives fit's state as is, so the `pmap` step (which needs a leading device axis everywhere) is meant for
      hand-written loops.
    - `desc`: the progress bar's label.
    - `steps_per_call`: the most steps run in one device call (>= 1). `None` (default): sized automatically (up to
      4096, about 0.2 s per call), falling back to one step per call where `data` does not allow more. An explicit
      value > 1 raises `ValueError` if `data` (or a custom `train_step`) does not allow it; `1` runs one step per
      call.
    - `max_time_s`: stop after about this many seconds of training (wall time of this call minus compilation),
      checked between calls (which are sized not to overshoot it much); the final evaluation and checkpoint still
      happen. `None`: no limit.

    **Returns:** a [`FitResult`][jaxsciml.train.FitResult] (with `wall_s`, `compile_s` and the median `step_s`).
    """
    t_start, c_start = time.perf_counter(), compile_seconds()
    check_loss_fn(loss_fn)
    check_optimizer(optimizer)
    num_steps = check_count(num_steps, "num_steps", minimum=1)
    check_nonfinite(nonfinite, _NONFINITE_FIT)
    eval_every = check_count(eval_every, "eval_every", minimum=0)
    checkpoint_every = check_count(checkpoint_every, "checkpoint_every", minimum=0)
    steps_per_call = check_steps_per_call(steps_per_call)
    max_time_s = check_max_time(max_time_s)
    if data_arg not in ("auto", "step", "key"):
        raise ValueError(f"`data_arg` must be 'auto', 'step' or 'key', got {data_arg!r}")
    if eval_fn is not None and not callable(eval_fn):
        raise TypeError(f"`eval_fn` must be callable or None, got {type(eval_fn).__name__}")
    if checkpointer is not None and not isinstance(checkpointer, Checkpointer):
        raise TypeError(
            f"`checkpointer` must be a jaxsciml.train.Checkpointer or None, got {type(checkpointer).__name__}"
        )
    if start is not None and not isinstance(start, FitResult):
        raise TypeError(f"`start` must be a FitResult or None, got {type(start).__name__}")
    if train_step is not None and not callable(train_step):
        raise TypeError(f"`train_step` must be callable or None, got {type(train_step).__name__}")

    state, history = _initial_state(model, optimizer, key, checkpointer, resume, start)
    if checkpointer is not None and not checkpointer.writable and state.step < num_steps:
        # fail before training rather than at the first checkpoint (restoring from read-only storage is fine).
        checkpointer._check_writable()
    saved_step = checkpointer.latest_step() if checkpointer is not None else None
    runner = _make_runner(
        loss_fn, optimizer, bool(has_aux), nonfinite, data, data_arg, state, num_steps, steps_per_call, train_step
    )

    def train_seconds() -> float:
        return time.perf_counter() - t_start - (compile_seconds() - c_start)

    def next_stop() -> int:
        """The next step at which to stop calling: an evaluation, a checkpoint or the end."""
        stop = num_steps
        if eval_fn is not None and eval_every:
            stop = min(stop, (state.step // eval_every + 1) * eval_every)
        if checkpointer is not None and checkpoint_every:
            stop = min(stop, (state.step // checkpoint_every + 1) * checkpoint_every)
        return stop

    bar = tqdm(total=num_steps, initial=min(state.step, num_steps), desc=desc, disable=not progress)
    recorder = Recorder(history, nonfinite, bar, progress)
    last_eval = recorder.last_eval()
    try:
        while state.step < num_steps:
            time_left = None if max_time_s is None else max_time_s - train_seconds()
            if time_left is not None and time_left <= 0:
                break
            stop_at = next_stop()
            if not runner.advance(state, stop_at, recorder, time_left, stacklevel=3):
                warnings.warn(
                    f"`data` ran out after step {state.step}; stopping before num_steps={num_steps}",
                    RuntimeWarning,
                    stacklevel=2,
                )
                break
            if state.step == stop_at:
                runner.flush(recorder, state, stacklevel=3)
                recorder.note_health(state.opt_state, state.step, stacklevel=3)
                if eval_fn is not None and eval_every and state.step % eval_every == 0:
                    recorder.evaluate(eval_fn, state.model, state.step)
                    last_eval = state.step
                if checkpointer is not None and checkpoint_every and state.step % checkpoint_every == 0:
                    checkpointer.save(state.step, state.model, state.opt_state, state.key, history, wait=False)
                    saved_step = state.step
        runner.flush(recorder, state, stacklevel=3)
        if not recorder.health_recorded_at(state.step):
            recorder.note_health(state.opt_state, state.step, stacklevel=3)
        if eval_fn is not None and last_eval != state.step:
            recorder.evaluate(eval_fn, state.model, state.step)
        if checkpointer is not None and saved_step != state.step:
            checkpointer.save(state.step, state.model, state.opt_state, state.key, history, wait=False)
    finally:
        bar.close()
        if checkpointer is not None:
            checkpointer.wait()
    return FitResult(
        model=state.model,
        opt_state=state.opt_state,
        step=state.step,
        key=state.key,
        history=history,
        wall_s=time.perf_counter() - t_start,
        compile_s=compile_seconds() - c_start,
        step_s=statistics.median(recorder.step_times) if recorder.step_times else math.nan,
    )


def _initial_state(
    model: PyTree,
    optimizer: Any,
    key: Any,
    checkpointer: Checkpointer | None,
    resume: bool,
    start: FitResult | None,
) -> tuple[TrainState, dict[str, list[Any]]]:
    """Where training starts: `start`, else the latest checkpoint (if `resume`), else `model` and a fresh
    optimiser state at step 0."""
    if start is not None:
        key = start.key if start.key is not None else key
        history = {k: list(v) for k, v in start.history.items()}
        return TrainState(start.model, start.opt_state, key, start.step), history
    opt_state = init_optimizer(optimizer, eqx.filter(model, eqx.is_inexact_array))
    if checkpointer is not None and resume and checkpointer.latest_step() is not None:
        model, opt_state, step, key_restored, history = checkpointer.restore(model, opt_state)
        return TrainState(model, opt_state, key_restored if key_restored is not None else key, step), history
    return TrainState(model, opt_state, key, 0), {}


def _make_runner(
    loss_fn: Callable[..., Any],
    optimizer: Any,
    has_aux: bool,
    nonfinite: NonFiniteStep,
    data: Any,
    data_arg: str,
    state: TrainState,
    num_steps: int,
    steps_per_call: int | None,
    train_step: TrainStep | None,
) -> ChunkRunner | StepRunner:
    """The compiled multi-step program where `data` allows it (see `plan_data`), else one step per call."""
    plan = None
    if state.step < num_steps:
        plan = plan_data(data, data_arg, state.key, state.step, steps_per_call, train_step is not None)
    if plan is None:
        batches = Batches(data, data_arg, state.key, state.step)
        own_step = train_step is None
        step_fn = train_step if train_step is not None else cached_train_step(loss_fn, optimizer, has_aux, nonfinite)
        return StepRunner(step_fn, own_step, batches)
    data_mode, data_fn, stacked = plan
    # One compiled program (buffers of `capacity` steps, the count per call dynamic) serves every
    # steps_per_call <= AUTO_CAPACITY, so results are bit-identical whatever the steps per call.
    capacity = max(steps_per_call or 0, AUTO_CAPACITY)
    program = cached_chunk(loss_fn, optimizer, has_aux, data_fn, data_mode, capacity)
    return ChunkRunner(program, stacked, steps_per_call, capacity)
