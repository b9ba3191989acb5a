"""The ``fit`` training loop (private)."""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import PyTree
from tqdm.auto import tqdm

from ..optim import health as optim_health
from ._checkpoint import Checkpointer
from ._checks import _NONFINITE_FIT, check_count, check_loss_fn, check_max_time, check_nonfinite, check_optimizer
from ._step import TrainStep, make_train_step, step_body

NonFinite = Literal["skip", "raise"]
DataArg = Literal["auto", "step", "key"]

_RESERVED = ("step", "loss", "time", "eval_step")
# Without `steps_per_call`, a device call runs up to this many steps, sized so that one call takes about
# `_TARGET_CALL_S` (progress, `max_time_s` and interrupts are then handled a few times a second).
_AUTO_CAPACITY = 1000
_AUTO_FIRST = 10
_TARGET_CALL_S = 0.2


@dataclasses.dataclass(frozen=True)
class FitResult:
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

    model: PyTree
    opt_state: PyTree
    step: int
    key: Any
    history: dict[str, list[Any]]
    wall_s: float = 0.0
    compile_s: float = 0.0
    step_s: float = math.nan


# ------------------------------------------------------------------------------------------ compile-time accounting
_COMPILE_EVENTS = frozenset(
    {
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "/jax/core/compile/backend_compile_duration",
    }
)
_compile_lock = threading.Lock()
_compile_total = [0.0]


def _on_duration_event(event: str, duration: float, **kwargs: Any) -> None:
    if event in _COMPILE_EVENTS:
        with _compile_lock:
            _compile_total[0] += duration


jax.monitoring.register_event_duration_secs_listener(_on_duration_event)


def _compile_seconds() -> float:
    """Seconds spent tracing/lowering/compiling in this process so far (any thread)."""
    with _compile_lock:
        return _compile_total[0]


# --------------------------------------------------------------------------------------------------- history names
def _named_scalars(tree: Any, prefix: str) -> list[tuple[str, Any]]:
    """``(name, leaf)`` for the one-element array (or number) leaves of ``tree``; works on tracers too."""
    if tree is None:
        return []
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if not (isinstance(leaf, jax.Array | np.ndarray | float | int) and np.size(leaf) == 1):
            continue
        parts = []
        for k in path:
            if isinstance(k, jax.tree_util.DictKey):
                parts.append(str(k.key))
            elif isinstance(k, jax.tree_util.GetAttrKey):
                parts.append(k.name)
            elif isinstance(k, jax.tree_util.SequenceKey):
                parts.append(str(k.idx))
            else:
                parts.append(str(k))
        name = "/".join(parts)
        if prefix == "aux":
            name = name or "aux"
            if name in _RESERVED or name.startswith("eval") or name == "nonfinite_steps":
                name = "aux/" + name
        else:
            name = f"{prefix}_{name}" if name else prefix
        out.append((name, leaf))
    return out


def _scalar_items(tree: Any, prefix: str) -> list[tuple[str, float]]:
    """Named Python floats for the scalar array leaves of ``tree`` (non-scalar leaves are not recorded)."""
    return [(name, float(np.asarray(leaf).item())) for name, leaf in _named_scalars(tree, prefix)]


def _data_mode(data: Any, data_arg: str, key: Any) -> str:
    """``"step"`` or ``"key"``: what a callable ``data`` is called with."""
    arg = data_arg if data_arg != "auto" else ("key" if key is not None else "step")
    if arg == "key" and key is None:
        raise ValueError("`data_arg='key'` needs a PRNG `key` passed to fit")
    return arg


class _Batches:
    """Turns ``data`` into ``get(step, key) -> batch`` (see `fit` for the contract)."""

    def __init__(self, data: Any, data_arg: str, key: Any, start_step: int):
        self._data = data
        self._iterator: Iterator[Any] | None = None
        self._mode: str
        if callable(data) and not isinstance(data, Iterable):
            self._mode = "call_" + _data_mode(data, data_arg, key)
            return
        if not isinstance(data, Iterable):
            raise TypeError(
                "`data` must be an iterable of batches or a callable `data(step)` / `data(key)`, "
                f"got {type(data).__name__}"
            )
        if isinstance(data, Iterator):
            # A one-shot iterator: consumed from where it is; cannot be rewound for a resumed run.
            self._mode = "iterator"
            self._iterator = data
        else:
            # A re-iterable (list, tuple, dataset object): cycled epoch after epoch; on resume, fast-forwarded to the
            # restored step so that a resumed run sees the same batches as an uninterrupted one.
            self._mode = "reiterable"
            self._iterator = iter(data)
        self._peeked: list[Any] = []
        try:
            self._peeked.append(next(self._iterator))
        except StopIteration:
            raise ValueError("`data` is empty: it yielded no batch") from None
        if self._mode == "reiterable":
            for _ in range(start_step):
                self._next()

    def _next(self) -> Any:
        if self._peeked:
            return self._peeked.pop()
        assert self._iterator is not None
        try:
            return next(self._iterator)
        except StopIteration:
            if self._mode == "iterator":
                raise
            self._iterator = iter(self._data)
            try:
                return next(self._iterator)
            except StopIteration:
                raise ValueError("`data` yielded no batch on a new epoch") from None

    def get(self, step: int, key: Any) -> Any:
        if self._mode == "call_step":
            return self._data(step)
        if self._mode == "call_key":
            return self._data(key)
        return self._next()


# ------------------------------------------------------------------------------------- several steps per device call
def _depends_on_input(closed: Any) -> bool:
    """Whether any output of a traced ``data`` depends on its argument (forward dependency over the jaxpr)."""
    jaxpr = closed.jaxpr
    dep = {v for v in jaxpr.invars}
    for eqn in jaxpr.eqns:
        if any(not isinstance(v, jax.extend.core.Literal) and v in dep for v in eqn.invars):
            dep.update(eqn.outvars)
    return any(not isinstance(v, jax.extend.core.Literal) and v in dep for v in jaxpr.outvars)


def _trace_depends(data: Callable[[Any], Any], arg: jax.ShapeDtypeStruct) -> bool:
    """Trace ``data`` on an abstract ``arg`` (raises if it does not trace); whether its output depends on ``arg``."""
    return _depends_on_input(jax.make_jaxpr(data)(arg))


_trace_depends_cache = functools.lru_cache(maxsize=32)(_trace_depends)


def _cached_depends(data: Callable[[Any], Any], arg: jax.ShapeDtypeStruct) -> bool:
    """``_trace_depends`` memoised (tracing costs milliseconds, a lot for a short ``fit`` of a small model)."""
    try:
        return _trace_depends_cache(data, arg)
    except TypeError:  # unhashable data
        return _trace_depends(data, arg)


def _stack_batches(data: Any) -> Any:
    """A list/tuple of same-structure, same-shape array batches stacked along a new leading axis (or ``None``)."""
    if not isinstance(data, list | tuple) or not data:
        return None
    leaves0, treedef = jax.tree_util.tree_flatten(data[0])
    if not leaves0:
        return None
    spec0 = [(np.shape(x), x.dtype) for x in leaves0]
    columns: list[list[Any]] = [[] for _ in leaves0]
    for batch in data:
        leaves, td = jax.tree_util.tree_flatten(batch)
        if td != treedef or any(not isinstance(x, jax.Array | np.ndarray) for x in leaves):
            return None
        if [(np.shape(x), x.dtype) for x in leaves] != spec0:
            return None
        for col, x in zip(columns, leaves):
            col.append(x)
    return jax.tree_util.tree_unflatten(treedef, [jnp.stack(col) for col in columns])


def _build_chunk(
    loss_fn: Callable[..., Any],
    optimizer: Any,
    has_aux: bool,
    nonfinite: str,
    data: Callable[[Any], Any] | None,
    data_mode: str,
    capacity: int,
) -> Callable[..., Any]:
    """``run(model, opt_state, key, step0, n, stacked)``: up to ``capacity`` steps (``n`` of them, fewer if
    ``nonfinite == "raise"`` meets a non-finite step) in one ``lax.while_loop``, one compiled program for every ``n``.

    Each step is exactly fit's per-step loop: ``key, sub = split(key)`` when a key is carried, the batch
    ``data(step)`` / ``data(sub)`` / ``stacked[step % len]``, then ``step_body`` (with its non-finite guard).
    Returns ``(model, opt_state, key, steps_done, losses, oks, aux_columns)``; the per-step buffers have length
    ``capacity`` and are valid up to ``steps_done``.
    """

    def run(model, opt_state, key, step0, n, stacked):
        params, static_m = eqx.partition(model, eqx.is_array)
        state, static_s = eqx.partition(opt_state, eqx.is_array)

        def one(params, state, key, i):
            sub = None
            if key is not None:
                key, sub = jax.random.split(key)
            step = step0 + i
            if data_mode == "step":
                batch = data(step)
            elif data_mode == "key":
                batch = data(sub)
            else:
                size = jax.tree_util.tree_leaves(stacked)[0].shape[0]
                batch = jax.tree_util.tree_map(lambda a: a[step % size], stacked)
            m, s, loss, aux, ok = step_body(
                loss_fn, optimizer, has_aux, nonfinite, eqx.combine(params, static_m), eqx.combine(state, static_s),
                batch,
            )  # fmt: skip
            aux = {name: jnp.reshape(leaf, ()) for name, leaf in _named_scalars(aux, "aux")}
            return eqx.filter(m, eqx.is_array), eqx.filter(s, eqx.is_array), key, loss, aux, ok

        i0 = jnp.zeros((), n.dtype)
        shapes = jax.eval_shape(one, params, state, key, i0)
        losses = jnp.full((capacity,), jnp.nan, shapes[3].dtype)
        oks = jnp.ones((capacity,), bool)
        auxs = {name: jnp.zeros((capacity,), sd.dtype) for name, sd in shapes[4].items()}

        def cond(carry):
            i, stop = carry[0], carry[-1]
            return (i < n) & ~stop

        def body(carry):
            i, params, state, key, losses, oks, auxs, _ = carry
            params, state, key, loss, aux, ok = one(params, state, key, i)
            losses = losses.at[i].set(loss)
            oks = oks.at[i].set(ok)
            auxs = {name: col.at[i].set(aux[name]) for name, col in auxs.items()}
            stop = ~ok if nonfinite == "raise" else jnp.array(False)
            return i + 1, params, state, key, losses, oks, auxs, stop

        carry = (i0, params, state, key, losses, oks, auxs, jnp.array(False))
        done, params, state, key, losses, oks, auxs, _ = jax.lax.while_loop(cond, body, carry)
        return eqx.combine(params, static_m), eqx.combine(state, static_s), key, done, losses, oks, auxs

    return eqx.filter_jit(run)


_chunk_cache = functools.lru_cache(maxsize=32)(_build_chunk)


def _cached_chunk(*args: Any) -> Callable[..., Any]:
    """``_build_chunk`` memoised on its arguments, so repeated ``fit`` calls reuse one compiled program."""
    try:
        return _chunk_cache(*args)
    except TypeError:  # unhashable loss_fn / optimizer / data
        return _build_chunk(*args)


def _cached_train_step(loss_fn: Callable[..., Any], optimizer: Any, has_aux: bool, nonfinite: str) -> TrainStep:
    """``make_train_step`` memoised on its arguments, so repeated ``fit`` calls with the same loss function and
    optimiser object reuse one compiled step (instead of recompiling a fresh closure each call)."""
    try:
        return _train_step_cache(loss_fn, optimizer, has_aux, nonfinite)
    except TypeError:  # unhashable loss_fn / optimizer (e.g. an optimizer holding arrays)
        return make_train_step(loss_fn, optimizer, has_aux=has_aux, nonfinite=nonfinite)


@functools.lru_cache(maxsize=32)
def _train_step_cache(loss_fn: Callable[..., Any], optimizer: Any, has_aux: bool, nonfinite: str) -> TrainStep:
    return make_train_step(loss_fn, optimizer, has_aux=has_aux, nonfinite=nonfinite)


def _chunk_plan(
    data: Any, data_arg: str, key: Any, step: int, steps_per_call: int | None, custom_step: bool
) -> tuple[str, Callable[[Any], Any] | None, Any] | None:
    """How ``fit`` can run several steps per call: ``(data_mode, data_fn, stacked)``, or ``None`` for the per-step
    loop (Python iterators, a custom ``train_step``, ``steps_per_call=1``, or a ``data`` callable that does not
    trace). Raises if ``steps_per_call > 1`` was asked for but is impossible; warns about a callable that does not
    trace only when ``steps_per_call`` is automatic (``None``)."""
    asked = steps_per_call is not None and steps_per_call > 1

    def refuse(why: str) -> None:
        if asked:
            raise ValueError(
                f"`steps_per_call={steps_per_call}` needs `data` to be a jittable callable `data(step)` / `data(key)` "
                f"or a list/tuple of same-shape array batches, and fit's own step; but {why}. Pass "
                "`steps_per_call=None` to let fit fall back to one step per call"
            )

    if custom_step:
        refuse("a custom `train_step` was given (it is called once per step)")
        return None
    if callable(data) and not isinstance(data, Iterable):
        mode = _data_mode(data, data_arg, key)
        arg = jax.random.split(key)[1] if mode == "key" else jnp.asarray(step)
        try:
            depends = _cached_depends(data, jax.ShapeDtypeStruct(arg.shape, arg.dtype))
        except Exception as e:  # noqa: BLE001 -- any failure to trace means: call it from Python
            refuse(f"`data` could not be traced ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
            if steps_per_call is None:
                warnings.warn(
                    f"`data` could not be traced with a traced `{mode}` ({type(e).__name__}), so it cannot run inside "
                    "a compiled multi-step loop: falling back to one step per device call (slower for small models). "
                    f"Make `data({mode})` a pure, jittable function of its argument to get several steps per call",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return None
        if not depends:
            refuse(f"`data({mode})` does not depend on its argument (it would be traced once into a constant)")
            if steps_per_call is None:
                warnings.warn(
                    f"`data({mode})` does not depend on `{mode}`: it is either a fixed batch or has side effects that "
                    "tracing would freeze into a constant, so fit calls it once per step from Python (one step per "
                    "device call). For a fixed batch pass `data=[batch]`, which runs several steps per call",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return None
        return mode, data, None
    stacked = _stack_batches(data)
    if stacked is None:
        refuse(f"`data` is a {type(data).__name__} (only lists/tuples of same-shape array batches are stacked)")
        return None
    return "stacked", None, stacked


def _check_steps_per_call(value: Any) -> int | None:
    if value is None:
        return None
    return check_count(value, "steps_per_call", minimum=1)


def fit(
    model: PyTree,
    loss_fn: Callable[..., Any],
    optimizer: optax.GradientTransformation | optax.MultiSteps,
    data: Iterable[Any] | Callable[[Any], Any],
    num_steps: int,
    *,
    has_aux: bool = False,
    key: Any = None,
    eval_fn: Callable[[PyTree], Any] | None = None,
    eval_every: int = 0,
    checkpointer: Checkpointer | None = None,
    checkpoint_every: int = 0,
    nonfinite: NonFinite = "skip",
    progress: bool = True,
    start: FitResult | None = None,
    resume: bool = True,
    data_arg: DataArg = "auto",
    train_step: TrainStep | None = None,
    desc: str = "fit",
    steps_per_call: int | None = None,
    max_time_s: float | None = None,
) -> FitResult:
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
      written to the model or a checkpoint. Checkpoints therefore never hold such a state.
    - `progress`: show a tqdm progress bar with the loss in its postfix.
    - `start`: a previous `FitResult` to continue from (model, optimiser state, step, key and history).
    - `train_step`: a step with the signature of `make_train_step(...)`'s result to use instead, e.g.
      [`make_sharded_train_step`][jaxsciml.train.make_sharded_train_step] for data parallelism (pass
      `replicate(model, mesh)` as `model` and a `data` that returns `shard_batch(...)`). It is called once per step
      and receives fit's state as is, so the `pmap` step (which needs a leading device axis everywhere) is meant for
      hand-written loops.
    - `desc`: the progress bar's label.
    - `steps_per_call`: the most steps run in one device call (>= 1). `None` (default): sized automatically (up to
      1000, about 0.2 s per call), falling back to one step per call where `data` does not allow more. An explicit
      value > 1 raises `ValueError` if `data` (or a custom `train_step`) does not allow it; `1` runs one step per
      call.
    - `max_time_s`: stop after about this many seconds of training (wall time of this call minus compilation),
      checked between calls (which are sized not to overshoot it much); the final evaluation and checkpoint still
      happen. `None`: no limit.

    **Returns:** a [`FitResult`][jaxsciml.train.FitResult] (with `wall_s`, `compile_s` and the median `step_s`).
    """
    t_start, c_start = time.perf_counter(), _compile_seconds()
    check_loss_fn(loss_fn)
    check_optimizer(optimizer)
    num_steps = check_count(num_steps, "num_steps", minimum=1)
    check_nonfinite(nonfinite, _NONFINITE_FIT)
    eval_every = check_count(eval_every, "eval_every", minimum=0)
    checkpoint_every = check_count(checkpoint_every, "checkpoint_every", minimum=0)
    steps_per_call = _check_steps_per_call(steps_per_call)
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

    # ----------------------------------------------------------------- initial state
    if start is not None:
        model, opt_state, step = start.model, start.opt_state, start.step
        key = start.key if start.key is not None else key
        history = {k: list(v) for k, v in start.history.items()}
    else:
        opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
        step, history = 0, {}
        if checkpointer is not None and resume and checkpointer.latest_step() is not None:
            model, opt_state, step, key_restored, history = checkpointer.restore(model, opt_state)
            key = key_restored if key_restored is not None else key
    for name in ("step", "loss", "time", "nonfinite_steps"):
        history.setdefault(name, [])
    saved_step = checkpointer.latest_step() if checkpointer is not None else None
    has_aux = bool(has_aux)

    plan = None
    if step < num_steps:
        plan = _chunk_plan(data, data_arg, key, step, steps_per_call, train_step is not None)
    if plan is None:
        batches = _Batches(data, data_arg, key, step)
        own_step = train_step is None
        if train_step is None:
            train_step = _cached_train_step(loss_fn, optimizer, has_aux, nonfinite)
    else:
        data_mode, data_fn, stacked = plan
        # One compiled program (buffers of `capacity` steps, the count per call dynamic) serves every
        # steps_per_call <= _AUTO_CAPACITY, so results are bit-identical whatever the steps per call.
        capacity = max(steps_per_call or 0, _AUTO_CAPACITY)
        chunk = _cached_chunk(loss_fn, optimizer, has_aux, nonfinite, data_fn, data_mode, capacity)
        auto_n = min(capacity, _AUTO_FIRST)

    def evaluate() -> None:
        assert eval_fn is not None
        history.setdefault("eval_step", []).append(step)
        for name, value in _scalar_items(eval_fn(model), "eval"):
            history.setdefault(name, []).append(value)

    step_times: list[float] = []
    last_health: dict[str, int] = {}

    def note_health() -> None:
        """Record the optimiser's own health counters (Shampoo/SOAP root fallbacks, non-finite statistics; see
        `jaxsciml.optim.health`) at a chunk boundary, and warn when one has grown since the last record."""
        counters = {k: int(v) for k, v in jax.device_get(optim_health(opt_state)).items()}
        if not counters:
            return
        history.setdefault("health_step", []).append(step)
        for name, value in counters.items():
            history.setdefault(name, []).append(value)
            grown = value - last_health.get(name, 0)
            if grown > 0:
                warnings.warn(
                    f"the optimiser reports {grown} new {name.replace('_', ' ')} by step {step} ({value} in all): "
                    "a statistic overflowed or an inverse root failed, so the previous root is being kept",
                    RuntimeWarning,
                    stacklevel=3,
                )
        last_health.update(counters)

    def record(first: int, losses: Any, oks: Any, auxs: dict[str, Any], seconds: float, depth: int) -> None:
        """Append ``len(losses)`` steps starting at ``first`` to the history; handle the non-finite ones (warnings
        point at fit's caller, ``depth`` frames up from here)."""
        count = len(losses)
        for j in np.flatnonzero(~np.asarray(oks, bool)):
            s, value = first + int(j), float(losses[j])
            if nonfinite == "raise":
                raise FloatingPointError(
                    f"non-finite loss, gradient or update at step {s} (loss={value}); "
                    "the update was not applied and nothing was checkpointed"
                )
            warnings.warn(
                f"non-finite loss, gradient or update at step {s} (loss={value}); update skipped",
                RuntimeWarning,
                stacklevel=depth,
            )
            history["nonfinite_steps"].append(s)
        per_step = seconds / count
        history["step"].extend(range(first, first + count))
        history["loss"].extend(np.asarray(losses, np.float64).tolist())
        history["time"].extend([per_step] * count)
        step_times.extend([per_step] * count)
        for name, col in auxs.items():
            history.setdefault(name, []).extend(np.asarray(col).tolist())
        bar.update(count)
        if progress:
            bar.set_postfix(loss=f"{float(losses[-1]):.4g}", refresh=False)

    def train_seconds() -> float:
        return time.perf_counter() - t_start - (_compile_seconds() - c_start)

    def next_stop() -> int:
        """The next step at which to stop calling: an evaluation, a checkpoint or the end."""
        stop = num_steps
        if eval_fn is not None and eval_every:
            stop = min(stop, (step // eval_every + 1) * eval_every)
        if checkpointer is not None and checkpoint_every:
            stop = min(stop, (step // checkpoint_every + 1) * checkpoint_every)
        return stop

    last_eval = history["eval_step"][-1] if history.get("eval_step") else None
    bar = tqdm(total=num_steps, initial=min(step, num_steps), desc=desc, disable=not progress)
    pending: list[tuple[Any, Any, dict[str, Any]]] = []  # per-step loop: device results not yet fetched
    pending_since = [time.perf_counter(), _compile_seconds()]

    def flush(depth: int = 4) -> None:
        """Fetch the pending per-step results in one transfer and record them."""
        if not pending:
            return
        fetched = jax.device_get(pending)
        losses, oks, auxs = [f[0] for f in fetched], [f[1] for f in fetched], [f[2] for f in fetched]
        first = step - len(pending)
        names = list(auxs[0])
        seconds = max(
            time.perf_counter() - pending_since[0] - (_compile_seconds() - pending_since[1]), 0.0
        )  # fmt: skip
        pending.clear()
        record(first, np.asarray(losses), np.asarray(oks), {n: [a[n] for a in auxs] for n in names}, seconds, depth + 1)

    try:
        while step < num_steps:
            if max_time_s is not None and train_seconds() >= max_time_s:
                break
            stop_at = next_stop()
            if plan is not None:
                n = min(stop_at - step, steps_per_call or auto_n)
                typical = statistics.median(step_times[-64:]) if step_times else None
                if max_time_s is not None and typical:
                    n = max(1, min(n, int((max_time_s - train_seconds()) / typical)))
                t0, c0 = time.perf_counter(), _compile_seconds()
                out = chunk(model, opt_state, key, jnp.asarray(step), jnp.asarray(n, jnp.int32), stacked)
                new_model, new_opt_state, new_key, done, losses, oks, auxs = out
                done, losses, oks, auxs = jax.device_get((done, losses, oks, auxs))
                done = int(done)
                seconds = max(time.perf_counter() - t0 - (_compile_seconds() - c0), 0.0)
                record(step, losses[:done], oks[:done], {k: v[:done] for k, v in auxs.items()}, seconds, 3)
                model, opt_state, key = new_model, new_opt_state, new_key
                step += done
                if steps_per_call is None and seconds > 0:
                    auto_n = int(min(capacity, max(1, _TARGET_CALL_S * done / seconds)))
            else:
                if not pending:
                    pending_since[:] = [time.perf_counter(), _compile_seconds()]
                subkey = None
                if key is not None:
                    key, subkey = jax.random.split(key)
                try:
                    batch = batches.get(step, subkey)
                except StopIteration:
                    flush()
                    warnings.warn(
                        f"`data` ran out after step {step}; stopping before num_steps={num_steps}",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    break
                new_model, new_opt_state, loss, aux, ok = train_step(model, opt_state, batch)
                aux_items = dict(_named_scalars(aux, "aux"))
                if own_step:
                    # fit's own step already leaves the state unchanged on a non-finite step: no sync needed here.
                    model, opt_state = new_model, new_opt_state
                    pending.append((loss, ok, aux_items))
                    step += 1
                    if step == stop_at or time.perf_counter() - pending_since[0] > _TARGET_CALL_S:
                        flush()
                else:
                    # a custom step may not guard itself: check `ok` before adopting its result.
                    pending.append((loss, jnp.all(ok), aux_items))
                    step += 1
                    is_ok = bool(np.all(np.asarray(ok)))
                    flush()
                    if is_ok:
                        model, opt_state = new_model, new_opt_state
            if step == stop_at:
                flush()
                note_health()
                if eval_fn is not None and eval_every and step % eval_every == 0:
                    evaluate()
                    last_eval = step
                if checkpointer is not None and checkpoint_every and step % checkpoint_every == 0:
                    checkpointer.save(step, model, opt_state, key, history, wait=False)
                    saved_step = step
        flush()
        if not history.get("health_step") or history["health_step"][-1] != step:
            note_health()
        if eval_fn is not None and last_eval != step:
            evaluate()
        if checkpointer is not None and saved_step != step:
            checkpointer.save(step, model, opt_state, key, history, wait=False)
    finally:
        bar.close()
        if checkpointer is not None:
            checkpointer.wait()
    return FitResult(
        model=model,
        opt_state=opt_state,
        step=step,
        key=key,
        history=history,
        wall_s=time.perf_counter() - t_start,
        compile_s=_compile_seconds() - c_start,
        step_s=statistics.median(step_times) if step_times else math.nan,
    )
