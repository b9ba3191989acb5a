"""Argument validation shared by the training utilities (private)."""

from __future__ import annotations

import numbers
import operator
from typing import Any

import optax

_NONFINITE_STEP = ("skip", "raise", "ignore")
_NONFINITE_FIT = ("skip", "raise")


def check_loss_fn(loss_fn: Any) -> None:
    if not callable(loss_fn):
        raise TypeError(
            "`loss_fn` must be callable as `loss_fn(model, batch) -> loss` (or `-> (loss, aux)` with "
            f"`has_aux=True`), got {type(loss_fn).__name__}: {loss_fn!r}"
        )


def check_optimizer(optimizer: Any) -> None:
    # An optax GradientTransformation (GradientTransformationExtraArgs subclasses it) or any object with the same
    # init/update pair, e.g. optax.MultiSteps (a class with init/update methods, not a GradientTransformation).
    if isinstance(optimizer, type):
        ok = False
    elif isinstance(optimizer, optax.GradientTransformation):
        ok = callable(optimizer.init) and callable(optimizer.update)
    else:
        ok = callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))
    if not ok:
        raise TypeError(
            "`optimizer` must be an optax GradientTransformation (an `init`/`update` pair such as "
            f"`optax.adam(1e-3)` or `optax.MultiSteps(...)`), got {type(optimizer).__name__}: {optimizer!r}"
        )


def check_nonfinite(nonfinite: Any, allowed: tuple[str, ...] = _NONFINITE_STEP) -> None:
    if nonfinite not in allowed:
        raise ValueError(f"`nonfinite` must be one of {allowed}, got {nonfinite!r}")


def check_max_time(value: Any) -> float | None:
    """``None`` or a positive number of seconds (``inf`` allowed)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`max_time_s` must be a positive number of seconds or None, got {type(value).__name__}")
    if not float(value) > 0:  # also rejects NaN
        raise ValueError(f"`max_time_s` must be > 0 (seconds of training time) or None, got {value!r}")
    return float(value)


def check_count(value: Any, name: str, *, minimum: int) -> int:
    """An integer ``>= minimum`` (bools rejected)."""
    if isinstance(value, bool):
        raise TypeError(f"`{name}` must be an integer, got bool {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"`{name}` must be an integer, got {type(value).__name__}: {value!r}") from None
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}")
    return value


def check_has_aux_output(out: Any, has_aux: bool) -> tuple[Any, Any]:
    """Split a loss function's output into ``(loss, aux)`` with clear errors (trace time)."""
    if has_aux:
        if not (isinstance(out, tuple | list) and len(out) == 2):
            raise TypeError(
                f"with `has_aux=True`, `loss_fn` must return a pair `(loss, aux)`, got {type(out).__name__}"
            )
        loss, aux = out
    else:
        if isinstance(out, tuple | list):
            raise TypeError("`loss_fn` returned a tuple; pass `has_aux=True` if it returns `(loss, aux)`")
        loss, aux = out, None
    shape = getattr(loss, "shape", None)
    if shape is None or tuple(shape) != ():
        raise ValueError(
            "`loss_fn` must return a scalar loss (shape ()), got "
            f"{'a ' + type(loss).__name__ if shape is None else 'shape ' + str(tuple(shape))}; "
            "reduce it with a mean over the batch"
        )
    return loss, aux
