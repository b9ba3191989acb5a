"""Where ``fit``'s batches come from (private).

`plan_data` decides, from ``data`` alone, whether the batches can be drawn inside a compiled multi-step program
(a jittable ``data(step)`` / ``data(key)`` callable, or a list/tuple of same-shape array batches stacked on the
device) or must be drawn on the host one step at a time (`Batches`: iterators, re-iterables, callables that do not
trace).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np

from ._checks import check_count

DataMode = Literal["step", "key", "stacked"]


def data_mode_of(data: Any, data_arg: str, key: Any) -> str:
    """``"step"`` or ``"key"``: what a callable ``data`` is called with."""
    arg = data_arg if data_arg != "auto" else ("key" if key is not None else "step")
    if arg == "key" and key is None:
        raise ValueError("`data_arg='key'` needs a PRNG `key` passed to fit")
    return arg


class Batches:
    """Turns ``data`` into ``get(step, key) -> batch`` (see `fit` for the contract)."""

    def __init__(self, data: Any, data_arg: str, key: Any, start_step: int):
        self._data = data
        self._iterator: Iterator[Any] | None = None
        self._mode: str
        if callable(data) and not isinstance(data, Iterable):
            self._mode = "call_" + data_mode_of(data, data_arg, key)
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


# ------------------------------------------------------------------------------------ device-side batches
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


def cached_depends(data: Callable[[Any], Any], arg: jax.ShapeDtypeStruct) -> bool:
    """``_trace_depends`` memoised (tracing costs milliseconds, a lot for a short ``fit`` of a small model)."""
    try:
        return _trace_depends_cache(data, arg)
    except TypeError:  # unhashable data
        return _trace_depends(data, arg)


def stack_batches(data: Any) -> Any:
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
        if td != treedef or any(not isinstance(x, jax.Array | np.ndarray) for x in leaves):  # type: ignore[operator]  # no jaxlib stub for PyTreeDef
            return None
        if [(np.shape(x), x.dtype) for x in leaves] != spec0:
            return None
        for col, x in zip(columns, leaves):
            col.append(x)
    return jax.tree_util.tree_unflatten(treedef, [jnp.stack(col) for col in columns])


def plan_data(
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
        mode = data_mode_of(data, data_arg, key)
        arg = jax.random.split(key)[1] if mode == "key" else jnp.asarray(step)
        try:
            depends = cached_depends(data, jax.ShapeDtypeStruct(arg.shape, arg.dtype))
        except Exception as e:  # noqa: BLE001 -- any failure to trace means: call it from Python
            refuse(f"`data` could not be traced ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
            if steps_per_call is None:
                warnings.warn(
                    f"`data` could not be traced with a traced `{mode}` ({type(e).__name__}), so it cannot run inside "
                    "a compiled multi-step loop: falling back to one step per device call (slower for small models). "
                    f"Make `data({mode})` a pure, jittable function of its argument to get several steps per call",
                    RuntimeWarning,
                    stacklevel=4,
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
                    stacklevel=4,
                )
            return None
        return mode, data, None
    stacked = stack_batches(data)
    if stacked is None:
        refuse(f"`data` is a {type(data).__name__} (only lists/tuples of same-shape array batches are stacked)")
        return None
    return "stacked", None, stacked


def check_steps_per_call(value: Any) -> int | None:
    if value is None:
        return None
    return check_count(value, "steps_per_call", minimum=1)
