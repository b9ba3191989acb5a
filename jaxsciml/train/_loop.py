"""How ``fit`` advances the training state on the host: many steps per device call, or one (private).

Both runners have the same small interface, so ``fit``'s host loop (progress, evaluation, checkpoints, time budget)
does not care which one runs: ``advance(state, stop_at, recorder, time_left, stacklevel)`` performs at least one
step and at most ``stop_at - state.step``, recording them (possibly later: ``flush``).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
import weakref
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PyTree

from ._data import Batches
from ._history import Recorder, named_scalars
from ._step import TrainStep
from ._timing import compile_seconds

# Without `steps_per_call`, a device call runs up to this many steps, sized so that one call takes about
# `TARGET_CALL_S` (progress, `max_time_s` and interrupts are then handled a few times a second).
AUTO_CAPACITY = 4096
AUTO_FIRST = 10
TARGET_CALL_S = 0.2


@dataclasses.dataclass
class TrainState:
    """What a step changes: the model, the optimiser state, the PRNG key (or `None`) and the completed steps."""

    model: PyTree
    opt_state: PyTree
    key: Any
    step: int


def _seconds_since(t0: float, c0: float) -> float:
    """Wall seconds since ``(t0, c0) = (perf_counter(), compile_seconds())``, compilation excluded."""
    return max(time.perf_counter() - t0 - (compile_seconds() - c0), 0.0)


# The steps per call learned by the last `ChunkRunner` of a (memoised) program, so that the next `fit` call with it
# starts at the right size instead of probing with `AUTO_FIRST` steps again.
_LEARNED_N: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def _learned(program: Any) -> int:
    try:
        return _LEARNED_N.get(program, AUTO_FIRST)
    except TypeError:
        return AUTO_FIRST


def _remember(program: Any, n: int) -> None:
    try:
        _LEARNED_N[program] = n
    except TypeError:  # not weak-referenceable: nothing learned
        pass


class ChunkRunner:
    """Runs the compiled multi-step program (`_program.build_chunk`) for up to ``steps_per_call`` steps per call;
    with ``steps_per_call=None`` the count per call is sized from the measured step time (about `TARGET_CALL_S`).

    The program checks the loss and gradients of every step but the parameters and optimiser state only at the end
    of a call (a per-step check of the whole state costs as much as the step on a small model). A call that fails
    either check is not adopted: it is replayed from its start one step per call with the same program, where the
    end-of-call check is a per-step check, up to and including the first failing step, which is recorded as
    non-finite and not applied (`"skip"`), or raised on (`"raise"`). The result is that of a per-step guard.
    """

    def __init__(self, program: Callable[..., Any], stacked: Any, steps_per_call: int | None, capacity: int) -> None:
        self.program = program
        self.stacked = stacked
        self.steps_per_call = steps_per_call
        self.capacity = capacity
        self.auto_n = min(capacity, _learned(program))

    def _call(self, state: TrainState, n: int) -> tuple[Any, ...]:
        out = self.program(
            state.model, state.opt_state, state.key, jnp.asarray(state.step), jnp.asarray(n, jnp.int32), self.stacked
        )
        model, opt_state, key, done, losses, oks, auxs, state_ok = out
        done, losses, oks, auxs, state_ok = jax.device_get((done, losses, oks, auxs, state_ok))
        done = int(done)
        return model, opt_state, key, done, losses[:done], oks[:done], {k: v[:done] for k, v in auxs.items()}, state_ok

    def advance(
        self, state: TrainState, stop_at: int, recorder: Recorder, time_left: float | None, stacklevel: int
    ) -> bool:
        n = min(stop_at - state.step, self.steps_per_call or self.auto_n)
        typical = statistics.median(recorder.step_times[-64:]) if recorder.step_times else None
        if time_left is not None and typical:
            n = max(1, min(n, int(time_left / typical)))
        t0, c0 = time.perf_counter(), compile_seconds()
        model, opt_state, key, done, losses, oks, auxs, state_ok = self._call(state, n)
        if bool(state_ok) and bool(np.all(oks)):
            seconds = _seconds_since(t0, c0)
            recorder.record(state.step, losses, oks, auxs, seconds, stacklevel + 1)
            state.model, state.opt_state, state.key = model, opt_state, key
            state.step += done
            if self.steps_per_call is None and seconds > 0:
                self.auto_n = int(min(self.capacity, max(1, TARGET_CALL_S * done / seconds)))
                _remember(self.program, self.auto_n)
            return True
        self._replay(state, done, recorder, (t0, c0), stacklevel + 1)
        return True

    def _replay(
        self, state: TrainState, limit: int, recorder: Recorder, since: tuple[float, float], stacklevel: int
    ) -> None:
        """Steps one per call (at most ``limit``) until the first that fails the full check; that one is recorded
        as not ok, and its update is not applied (the key and the step count still advance, as in a guarded step)."""
        first, losses, oks, columns = state.step, [], [], []
        for _ in range(limit):
            model, opt_state, key, _, loss, ok, aux, state_ok = self._call(state, 1)
            ok = bool(ok[0]) and bool(state_ok)
            losses.append(loss[0])
            oks.append(ok)
            columns.append({k: v[0] for k, v in aux.items()})
            state.key = key
            state.step += 1
            if not ok:
                break
            state.model, state.opt_state = model, opt_state
        names = list(columns[0]) if columns else []
        auxs = {name: np.asarray([c[name] for c in columns]) for name in names}
        recorder.record(first, np.asarray(losses), np.asarray(oks), auxs, _seconds_since(*since), stacklevel + 1)

    def flush(self, recorder: Recorder, state: TrainState, stacklevel: int) -> None:
        """Nothing is pending: every call records its steps."""


class StepRunner:
    """One step per call from the host: batches from `Batches`, fit's own (memoised) step or a custom
    ``train_step``. Results of fit's own step are fetched in one transfer every `TARGET_CALL_S` or at ``stop_at``
    (no host sync per step); a custom step is synchronised every step, since it may not guard itself."""

    def __init__(self, train_step: TrainStep, own_step: bool, batches: Batches) -> None:
        self.train_step = train_step
        self.own_step = own_step
        self.batches = batches
        self.pending: list[tuple[Any, Any, dict[str, Any]]] = []
        self.pending_since = (time.perf_counter(), compile_seconds())

    def advance(
        self, state: TrainState, stop_at: int, recorder: Recorder, time_left: float | None, stacklevel: int
    ) -> bool:
        """One step; ``False`` (nothing done) if ``data`` ran out."""
        if not self.pending:
            self.pending_since = (time.perf_counter(), compile_seconds())
        subkey = None
        if state.key is not None:
            state.key, subkey = jax.random.split(state.key)
        try:
            batch = self.batches.get(state.step, subkey)
        except StopIteration:
            self.flush(recorder, state, stacklevel + 1)
            return False
        model, opt_state, loss, aux, ok = self.train_step(state.model, state.opt_state, batch)
        aux_items = dict(named_scalars(aux, "aux"))
        if self.own_step:
            # fit's own step already leaves the state unchanged on a non-finite step: no sync needed here.
            state.model, state.opt_state = model, opt_state
            self.pending.append((loss, ok, aux_items))
            state.step += 1
            if state.step == stop_at or time.perf_counter() - self.pending_since[0] > TARGET_CALL_S:
                self.flush(recorder, state, stacklevel + 1)
        else:
            # a custom step may not guard itself: check `ok` before adopting its result.
            self.pending.append((loss, jnp.all(ok), aux_items))
            state.step += 1
            is_ok = bool(np.all(np.asarray(ok)))
            self.flush(recorder, state, stacklevel + 1)
            if is_ok:
                state.model, state.opt_state = model, opt_state
        return True

    def flush(self, recorder: Recorder, state: TrainState, stacklevel: int) -> None:
        """Fetch the pending per-step results in one transfer and record them."""
        if not self.pending:
            return
        fetched = jax.device_get(self.pending)
        losses, oks, auxs = [f[0] for f in fetched], [f[1] for f in fetched], [f[2] for f in fetched]
        first = state.step - len(self.pending)
        names = list(auxs[0])
        seconds = _seconds_since(*self.pending_since)
        self.pending.clear()
        columns = {n: [a[n] for a in auxs] for n in names}
        recorder.record(first, np.asarray(losses), np.asarray(oks), columns, seconds, stacklevel + 1)
