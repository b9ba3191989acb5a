"""The ``fit`` training loop (private)."""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import equinox as eqx
import jax
import numpy as np
import optax
from jaxtyping import PyTree
from tqdm.auto import tqdm

from ._checkpoint import Checkpointer
from ._checks import _NONFINITE_FIT, check_count, check_loss_fn, check_nonfinite, check_optimizer
from ._step import TrainStep, make_train_step

_RESERVED = ("step", "loss", "time", "eval_step")


@dataclasses.dataclass(frozen=True)
class FitResult:
    """What [`fit`][jaxsciml.train.fit] returns.

    **Fields:**

    - `model`: the trained model.
    - `opt_state`: the optimiser state after the last step.
    - `step`: the number of completed steps (skipped non-finite steps included).
    - `key`: the PRNG key after the last step (`None` if `fit` was called without one).
    - `history`: a dict of lists. Per training step (aligned lists): `"step"` (index of the batch, 0-based),
      `"loss"`, `"time"` (wall seconds of the step incl. device sync; the first includes compilation) and one list
      per scalar leaf of `aux` (named by its dict keys/attributes joined by `/`, or `"aux"` for a scalar aux). Per
      evaluation: `"eval_step"` (completed steps when evaluated) and `"eval_<name>"` (or `"eval"` for a scalar
      `eval_fn`). `"nonfinite_steps"`: steps whose update was skipped because of NaN/inf.
    """

    model: PyTree
    opt_state: PyTree
    step: int
    key: Any
    history: dict[str, list[Any]]


def _scalar_items(tree: Any, prefix: str) -> list[tuple[str, float]]:
    """Named Python floats for the scalar array leaves of ``tree`` (non-scalar leaves are not recorded)."""
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
        out.append((name, float(np.asarray(leaf).item())))
    return out


class _Batches:
    """Turns ``data`` into ``get(step, key) -> batch`` (see `fit` for the contract)."""

    def __init__(self, data: Any, data_arg: str, key: Any, start_step: int):
        if data_arg not in ("auto", "step", "key"):
            raise ValueError(f"`data_arg` must be 'auto', 'step' or 'key', got {data_arg!r}")
        self._data = data
        self._iterator: Iterator[Any] | None = None
        self._mode: str
        if callable(data) and not isinstance(data, Iterable):
            arg = data_arg if data_arg != "auto" else ("key" if key is not None else "step")
            if arg == "key" and key is None:
                raise ValueError("`data_arg='key'` needs a PRNG `key` passed to fit")
            self._mode = "call_" + arg
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


def fit(
    model: PyTree,
    loss_fn: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    data: Iterable[Any] | Callable[[Any], Any],
    num_steps: int,
    *,
    has_aux: bool = False,
    key: Any = None,
    eval_fn: Callable[[PyTree], Any] | None = None,
    eval_every: int = 0,
    checkpointer: Checkpointer | None = None,
    checkpoint_every: int = 0,
    nonfinite: str = "skip",
    progress: bool = True,
    start: FitResult | None = None,
    resume: bool = True,
    data_arg: str = "auto",
    train_step: TrainStep | None = None,
    desc: str = "fit",
) -> FitResult:
    """Train `model` to step `num_steps` with an optax optimiser.

    Each step: draw a batch, compute `loss_fn(model, batch)` and its gradient (`eqx.filter_value_and_grad`, w.r.t. the
    inexact arrays of `model`), apply `optimizer` -- all in one `eqx.filter_jit`-compiled step
    ([`make_train_step`][jaxsciml.train.make_train_step]) -- then record the loss.

    **Data.** `data` is either

    - a callable, called once per step as `data(step)` (the 0-based step index) or, if a `key` is given,
      `data(subkey)` with `key, subkey = jax.random.split(key)` each step (force either with `data_arg="step"` or
      `"key"`). Because the step and the key are stored in checkpoints, a resumed run sees exactly the batches an
      uninterrupted run would: this is the recommended form;
    - a re-iterable (list, tuple, an object whose `__iter__` returns a fresh iterator): cycled over epochs; on resume
      the first `step` batches are skipped, so resumed runs also see the same batches;
    - a one-shot iterator (generator): consumed from its current position (so not reproducible across a resume);
      training stops early with a warning if it runs out.

    **Steps.** `num_steps` is the *total* number of steps: a run resumed from a checkpoint (or `start`) at step `s`
    performs `num_steps - s` more steps, so re-running the same script after a crash finishes the same job.

    **Arguments:**

    - `model`: the initial model (any pytree, typically an `eqx.Module`); also the template for restoring.
    - `loss_fn`: `loss_fn(model, batch) -> loss` (a scalar), or `(loss, aux)` with `has_aux=True`; scalar leaves
      of `aux` are recorded in the history. For data-parallel training the loss must be a *mean* over the batch.
    - `optimizer`: an optax `GradientTransformation`; its state starts at
      `optimizer.init(eqx.filter(model, eqx.is_inexact_array))`.
    - `data`, `num_steps`: see above.
    - `key`: an optional PRNG key, split each step (see Data), saved in checkpoints and returned.
    - `eval_fn`, `eval_every`: `eval_fn(model)` (a scalar or a dict of scalars) is recorded after the last step
      and, if `eval_every > 0`, every `eval_every` completed steps.
    - `checkpointer`, `checkpoint_every`: a [`Checkpointer`][jaxsciml.train.Checkpointer]. If it holds a checkpoint
      (and `resume`, and no `start`), training resumes from the latest one (restored into the structure of
      `model`). A checkpoint is written every `checkpoint_every` steps (0: never periodically) and after the last
      step. On an exception inside the loop no checkpoint is written, so the last good one stays intact.
    - `nonfinite`: what to do when the loss or a gradient is NaN/inf: `"skip"` (default) leaves model and optimiser
      state unchanged, warns with the step number and records it in `history["nonfinite_steps"]`; `"raise"` raises
      `FloatingPointError` naming the step, before anything is written to the model or a checkpoint.
    - `progress`: show a tqdm progress bar with the loss in its postfix.
    - `start`: a previous `FitResult` to continue from (model, optimiser state, step, key and history).
    - `train_step`: a step with the signature of `make_train_step(...)`'s result to use instead, e.g.
      [`make_sharded_train_step`][jaxsciml.train.make_sharded_train_step] for data parallelism (pass
      `replicate(model, mesh)` as `model` and a `data` that returns `shard_batch(...)`). It receives fit's state
      as is, so the `pmap` step (which needs a leading device axis everywhere) is meant for hand-written loops.
    - `desc`: the progress bar's label.

    **Returns:** a [`FitResult`][jaxsciml.train.FitResult].
    """
    check_loss_fn(loss_fn)
    check_optimizer(optimizer)
    num_steps = check_count(num_steps, "num_steps", minimum=1)
    check_nonfinite(nonfinite, _NONFINITE_FIT)
    eval_every = check_count(eval_every, "eval_every", minimum=0)
    checkpoint_every = check_count(checkpoint_every, "checkpoint_every", minimum=0)
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

    batches = _Batches(data, data_arg, key, step)
    if train_step is None:
        train_step = _cached_train_step(loss_fn, optimizer, bool(has_aux), nonfinite)

    def evaluate() -> None:
        assert eval_fn is not None
        history.setdefault("eval_step", []).append(step)
        for name, value in _scalar_items(eval_fn(model), "eval"):
            history.setdefault(name, []).append(value)

    last_eval = history["eval_step"][-1] if history.get("eval_step") else None
    bar = tqdm(total=num_steps, initial=min(step, num_steps), desc=desc, disable=not progress)
    try:
        while step < num_steps:
            subkey = None
            if key is not None:
                key, subkey = jax.random.split(key)
            try:
                batch = batches.get(step, subkey)
            except StopIteration:
                warnings.warn(
                    f"`data` ran out after step {step}; stopping before num_steps={num_steps}",
                    RuntimeWarning,
                    stacklevel=2,
                )
                break
            t0 = time.perf_counter()
            new_model, new_opt_state, loss, aux, ok = train_step(model, opt_state, batch)
            loss_value = float(loss)  # device sync
            ok = bool(np.all(np.asarray(ok)))
            dt = time.perf_counter() - t0
            if not ok:
                if nonfinite == "raise":
                    raise FloatingPointError(
                        f"non-finite loss or gradient at step {step} (loss={loss_value}); "
                        "the update was not applied and nothing was checkpointed"
                    )
                warnings.warn(
                    f"non-finite loss or gradient at step {step} (loss={loss_value}); update skipped",
                    RuntimeWarning,
                    stacklevel=2,
                )
                history["nonfinite_steps"].append(step)
            else:
                # (the step already leaves the state unchanged when not ok; this also guards custom steps)
                model, opt_state = new_model, new_opt_state
            history["step"].append(step)
            history["loss"].append(loss_value)
            history["time"].append(dt)
            for name, value in _scalar_items(aux, "aux"):
                history.setdefault(name, []).append(value)
            step += 1
            bar.update(1)
            if progress:
                bar.set_postfix(loss=f"{loss_value:.4g}", refresh=False)
            if eval_fn is not None and eval_every and step % eval_every == 0:
                evaluate()
                last_eval = step
            if checkpointer is not None and checkpoint_every and step % checkpoint_every == 0:
                checkpointer.save(step, model, opt_state, key, history, wait=False)
                saved_step = step
        if eval_fn is not None and last_eval != step:
            evaluate()
        if checkpointer is not None and saved_step != step:
            checkpointer.save(step, model, opt_state, key, history, wait=False)
    finally:
        bar.close()
        if checkpointer is not None:
            checkpointer.wait()
    return FitResult(model=model, opt_state=opt_state, step=step, key=key, history=history)
