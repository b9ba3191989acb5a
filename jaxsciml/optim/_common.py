"""Argument validation and small helpers shared by the Shampoo-family transformations."""

from __future__ import annotations

from typing import Any, Literal, cast, overload

import jax
import jax.core
import jax.numpy as jnp

GRAFTS = ("none", "sgd", "adagrad", "rmsprop", "adam")
ROOT_METHODS = ("eigh", "newton")


def is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def _is_number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


@overload
def static_int(name: str, value, *, minimum: int = 1, allow_none: Literal[False] = False) -> int: ...


@overload
def static_int(name: str, value, *, minimum: int = 1, allow_none: bool) -> int | None: ...


def static_int(name: str, value, *, minimum: int = 1, allow_none: bool = False) -> int | None:
    """A structural integer argument: must be a Python int ``>= minimum`` (``None`` if allowed)."""
    if value is None and allow_none:
        return None
    if is_traced(value):
        raise TypeError(
            f"`{name}` must be a static Python int, got a traced value; with optax.inject_hyperparams pass "
            f"static_args=jaxsciml.optim.STATIC_ARGS (or include {name!r})."
        )
    try:
        import numpy as np

        if isinstance(value, np.ndarray | jax.Array) and value.ndim == 0:
            value = value.item()
    except Exception:  # pragma: no cover
        pass
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int{' or None' if allow_none else ''}, got {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}.")
    return value


def positive_float(name: str, value: Any, *, allow_none: bool = False, allow_zero: bool = False):
    """A numeric hyperparameter that must be positive (checked only when it is a concrete number)."""
    if value is None and allow_none:
        return None
    if _is_number(value) or (hasattr(value, "ndim") and not is_traced(value) and getattr(value, "ndim", 1) == 0):
        v = float(cast(Any, value))  # a number or a 0-d array here, never None
        if not (v > 0 or (allow_zero and v == 0)) or v != v:
            kind = "non-negative" if allow_zero else "positive"
            raise ValueError(f"`{name}` must be a {kind} number, got {value!r}.")
    elif not is_traced(value) and not hasattr(value, "dtype"):
        raise TypeError(f"`{name}` must be a number, got {value!r}.")
    return value


def unit_interval(name: str, value, *, closed_low: bool = True, closed_high: bool = True):
    """A decay rate in ``[0, 1]`` (ends as requested), checked when concrete."""
    if _is_number(value):
        v = float(value)
        lo_ok = v >= 0 if closed_low else v > 0
        hi_ok = v <= 1 if closed_high else v < 1
        if not (lo_ok and hi_ok):
            lo = "[" if closed_low else "("
            hi = "]" if closed_high else ")"
            raise ValueError(f"`{name}` must lie in {lo}0, 1{hi}, got {value!r}.")
    elif not is_traced(value) and not hasattr(value, "dtype"):
        raise TypeError(f"`{name}` must be a number, got {value!r}.")
    return value


def choice(name: str, value, options: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value.lower() not in options:
        raise ValueError(f"`{name}` must be one of {options}, got {value!r}.")
    return value.lower()


def is_static_zero(x) -> bool:
    return _is_number(x) and float(x) == 0.0


def compute_dtype(dtype) -> jnp.dtype:
    """float32, or float64 for float64 inputs (bf16/f16 are promoted to float32)."""
    return jnp.promote_types(dtype, jnp.float32)


def tree_all_finite(leaves) -> jax.Array:
    if not leaves:
        return jnp.asarray(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def decay_coefficient(beta2):
    """Weight of the new term in ``S <- beta2 S + c G G^T``: ``c = 1`` for the AdaGrad sum (``beta2 == 1``),
    else ``1 - beta2`` (exponential moving average)."""
    if _is_number(beta2):
        return 1.0 if float(beta2) == 1.0 else 1.0 - float(beta2)
    return jnp.where(beta2 >= 1.0, 1.0, 1.0 - beta2)


def momentum_update(u, mu, t, beta1, nesterov: bool, bias_correction: bool = True):
    """EMA first moment ``mu <- beta1 mu + (1 - beta1) u`` -> (direction, mu).

    ``bias_correction``: Adam's ``1 / (1 - beta1^t)`` (optax's Nesterov form when ``nesterov``); without it the
    direction is ``mu`` itself (``beta1 mu + (1 - beta1) u`` with ``nesterov``), distributed_shampoo's
    ``moving_average_for_momentum=True``.
    """
    mu = beta1 * mu + (1.0 - beta1) * u
    if not bias_correction:
        return (beta1 * mu + (1.0 - beta1) * u if nesterov else mu), mu
    tf = t.astype(u.dtype)
    if nesterov:
        out = beta1 * mu / (1.0 - beta1 ** (tf + 1.0)) + (1.0 - beta1) * u / (1.0 - beta1**tf)
    else:
        out = mu / (1.0 - beta1**tf)
    return out, mu


def check_params(tree, who: str) -> None:
    """Every leaf must be a real floating-point array; the error names the leaf path.

    Complex leaves: the Kronecker statistics here are real (``G G^T``), so complex parameters must be split into real
    and imaginary parts. Integer / boolean leaves cannot take a fractional update (it would be silently truncated);
    keep them out of the optimizer, e.g. with ``optax.masked`` / ``optax.partition`` or as static model fields.
    ``None`` leaves are empty subtrees and are skipped.
    """
    for path, x in jax.tree_util.tree_leaves_with_path(tree):
        dt = jnp.result_type(x)
        where = jax.tree_util.keystr(path) or "<root>"
        if jnp.issubdtype(dt, jnp.complexfloating):
            raise TypeError(
                f"{who}: complex parameters are not supported (leaf {where} is {dt} of shape {jnp.shape(x)}); "
                "store them as separate real and imaginary arrays."
            )
        if not jnp.issubdtype(dt, jnp.floating):
            raise TypeError(
                f"{who}: parameter leaf {where} has dtype {dt} (shape {jnp.shape(x)}); only floating-point leaves can "
                "be optimized (an update would be truncated). Exclude it, e.g. with optax.masked or optax.partition."
            )


def _shapes(tree) -> list:
    return [tuple(jnp.shape(x)) for x in jax.tree_util.tree_leaves(tree)]


def check_state(who: str, updates, state, state_cls: type, init_fn, per_leaf: tuple[str, ...]) -> None:
    """Trace-time check that ``state`` was made by this transformation's ``init`` for a tree like ``updates``.

    Raises ``TypeError`` for a state of another class (e.g. a ``SoapState`` given to Shampoo's ``update``) and
    ``ValueError`` when the number of leaves or any leaf's shapes differ from what ``init_fn(updates)`` would hold
    (a gradient tree missing a leaf, a parameter whose shape changed since ``init``); the message names the leaf (its
    path in ``updates``) and both shapes. Costs one ``jax.eval_shape`` of ``init_fn`` at trace time, nothing at run
    time.
    """
    if not isinstance(state, state_cls):
        raise TypeError(
            f"{who}: expected the {state_cls.__name__} made by this transformation's init, got a "
            f"{type(state).__name__}; was the state of another optimizer passed (e.g. a SoapState to shampoo, a "
            "ShampooState to soap)?"
        )
    with_path = jax.tree_util.tree_leaves_with_path(updates)
    names = [jax.tree_util.keystr(p) or "<root>" for p, _ in with_path]
    expected = jax.eval_shape(init_fn, updates)
    n_state = len(getattr(state, per_leaf[0]))
    if n_state != len(names):
        held = [_shapes(tuple(getattr(state, f)[i] for f in per_leaf)) for i in range(n_state)]
        raise ValueError(
            f"{who}: the updates (gradient tree) have {len(names)} leaves but the state was initialised for "
            f"{n_state}; updates' leaves: "
            + ", ".join(f"{n} {tuple(jnp.shape(x))}" for n, (_, x) in zip(names, with_path))
            + f"; state arrays per leaf: {held}. Pass a gradient for every parameter given to init (same tree)."
        )
    for i, name in enumerate(names):
        for f in per_leaf:
            want, got = getattr(expected, f)[i], getattr(state, f)[i]
            if jax.tree_util.tree_structure(want) != jax.tree_util.tree_structure(got) or _shapes(want) != _shapes(got):  # type: ignore[operator]  # no jaxlib stub for PyTreeDef
                raise ValueError(
                    f"{who}: leaf {name} of the updates has shape {tuple(jnp.shape(with_path[i][1]))}, which needs "
                    f"state field `{f}` of shapes {_shapes(want)}, but the state holds {_shapes(got)}: the parameter "
                    "changed shape (or the leaves were reordered) since init; call init again for the new parameters."
                )
