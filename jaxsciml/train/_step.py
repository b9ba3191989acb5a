"""A pure, jit-compiled optimisation step with a NaN/inf guard (private)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Bool, PyTree, Scalar

from ._checks import check_has_aux_output, check_loss_fn, check_nonfinite, check_optimizer

NonFiniteStep = Literal["skip", "raise", "ignore"]
TrainStep = Callable[[PyTree, PyTree, PyTree], tuple[PyTree, PyTree, Scalar, Any, Bool[Array, ""]]]


def _flat_by_dtype(arrays: list[Any]) -> dict[Any, Array]:
    """The arrays raveled and concatenated, one vector per dtype (so a finiteness check is one fused reduction
    instead of one small kernel per leaf, which dominates the step time of a small model)."""
    groups: dict[Any, list[Any]] = {}
    for x in arrays:
        groups.setdefault(x.dtype, []).append(jnp.ravel(x))
    return {dt: (xs[0] if len(xs) == 1 else jnp.concatenate(xs)) for dt, xs in groups.items()}


def all_finite(tree: PyTree) -> Bool[Array, ""]:
    """``True`` iff every inexact array leaf of ``tree`` is free of NaN and inf."""
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if eqx.is_inexact_array(x)]
    ok = jnp.array(True)
    for flat in _flat_by_dtype(leaves).values():
        ok = ok & jnp.all(jnp.isfinite(flat))
    return ok


def stays_finite(old: PyTree, new: PyTree) -> Bool[Array, ""]:
    """``True`` iff no entry of an inexact array leaf goes from finite in ``old`` to NaN/inf in ``new``.

    Entries already non-finite in ``old`` are allowed to stay so (e.g. ``optax.contrib.reduce_on_plateau`` starts its
    best value at ``inf``). If the two trees differ in structure, every inexact leaf of ``new`` must be finite.
    """
    lo, ln = jax.tree_util.tree_leaves(old), jax.tree_util.tree_leaves(new)
    if len(lo) != len(ln):
        return all_finite(new)
    pairs_old, pairs_new, alone = [], [], []
    ok = jnp.array(True)
    for a, b in zip(lo, ln):
        if not eqx.is_inexact_array(b):
            continue
        if eqx.is_inexact_array(a) and a.shape == b.shape and a.dtype == b.dtype:
            pairs_old.append(a)
            pairs_new.append(b)
        elif eqx.is_inexact_array(a) and a.shape == b.shape:  # a dtype change: checked on its own
            ok = ok & jnp.all(jnp.isfinite(b) | ~jnp.isfinite(a))
        else:
            alone.append(b)
    ok = ok & all_finite(alone)
    flat_old, flat_new = _flat_by_dtype(pairs_old), _flat_by_dtype(pairs_new)
    for dt, b in flat_new.items():
        ok = ok & jnp.all(jnp.isfinite(b) | ~jnp.isfinite(flat_old[dt]))
    return ok


def select_tree(pred: Bool[Array, ""], on_true: PyTree, on_false: PyTree) -> PyTree:
    """Leafwise ``jnp.where(pred, on_true, on_false)`` over the array leaves of two same-structure trees.

    Non-array leaves (static fields) are taken from ``on_true``. Branch-free: both trees are computed and the select
    is a cheap elementwise op, which keeps the step a single fused XLA computation (no ``lax.cond``).
    """
    new_dyn, static = eqx.partition(on_true, eqx.is_array)
    old_dyn, _ = eqx.partition(on_false, eqx.is_array)
    dyn = jax.tree_util.tree_map(lambda a, b: jnp.where(pred, a, b), new_dyn, old_dyn)
    return eqx.combine(dyn, static)


def raw_step(
    loss_fn: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    has_aux: bool,
    model: PyTree,
    opt_state: PyTree,
    batch: PyTree,
    reduce: Callable[[PyTree], PyTree] | None = None,
) -> tuple[PyTree, PyTree, Scalar, Any, Any, Bool[Array, ""]]:
    """One optimiser step without a guard: ``(new_model, new_opt_state, loss, aux, grads, finite)``, where
    ``finite`` is the cheap part of the check (the loss and every gradient entry are finite).

    ``reduce`` (e.g. ``lax.pmean`` over a named axis) is applied to the loss, the gradients and the inexact leaves of
    ``aux`` before the update, so that every replica applies the same update.
    """

    def wrapped(m, b):
        return check_has_aux_output(loss_fn(m, b), has_aux)

    (loss, aux), grads = eqx.filter_value_and_grad(wrapped, has_aux=True)(model, batch)
    if reduce is not None:
        loss = reduce(loss)
        grads = reduce(grads)
        aux_dyn, aux_static = eqx.partition(aux, eqx.is_inexact_array)
        aux = eqx.combine(reduce(aux_dyn), aux_static)
    params = eqx.filter(model, eqx.is_inexact_array)
    if isinstance(optimizer, optax.GradientTransformationExtraArgs):
        updates, new_opt_state = optimizer.update(grads, opt_state, params, value=loss)
    else:
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
    new_model = eqx.apply_updates(model, updates)
    return new_model, new_opt_state, loss, aux, grads, jnp.isfinite(loss) & all_finite(grads)


def state_stays_finite(model: PyTree, opt_state: PyTree, new_model: PyTree, new_opt_state: PyTree) -> Bool[Array, ""]:
    """The expensive part of the check: no entry of the parameters or the optimiser state went from finite to
    NaN/inf (a finite but huge gradient can overflow Adam's or Shampoo's second-moment statistics)."""
    params = eqx.filter(model, eqx.is_inexact_array)
    return stays_finite(params, eqx.filter(new_model, eqx.is_inexact_array)) & stays_finite(opt_state, new_opt_state)


def step_body(
    loss_fn: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    has_aux: bool,
    nonfinite: NonFiniteStep,
    model: PyTree,
    opt_state: PyTree,
    batch: PyTree,
    reduce: Callable[[PyTree], PyTree] | None = None,
) -> tuple[PyTree, PyTree, Scalar, Any, Bool[Array, ""]]:
    """One guarded optimiser step (`raw_step` plus the full check); shared by the single-device, sharded and
    ``pmap`` steps. ``reduce``: see `raw_step`."""
    new_model, new_opt_state, loss, aux, _, finite = raw_step(
        loss_fn, optimizer, has_aux, model, opt_state, batch, reduce
    )
    # One fused check: the loss, the gradients, and every entry of the new parameters and optimiser state that was
    # finite before.
    ok = finite & state_stays_finite(model, opt_state, new_model, new_opt_state)
    if nonfinite != "ignore":
        new_model, new_opt_state = keep_if_not(ok, (new_model, new_opt_state), (model, opt_state))
    return new_model, new_opt_state, loss, aux, ok


def keep_if_not(ok: Bool[Array, ""], new: PyTree, old: PyTree) -> PyTree:
    """``new`` if ``ok`` else ``old`` (two trees of the same structure; static leaves are taken from ``new``).

    A ``lax.cond`` on the array leaves: measured on a small MLP with Adam, it compiles about 1 s faster and runs a
    step about 1.3x faster than a leafwise ``jnp.where`` select (which makes XLA materialise both trees and fuse the
    finiteness reductions into every output). Under ``vmap`` (a batched ``ok``) JAX lowers it to a select. Falls
    back to `select_tree` where the two trees' arrays differ in structure, shape or dtype (which a ``cond`` rejects).
    """
    new_dyn, static = eqx.partition(new, eqx.is_array)
    old_dyn, _ = eqx.partition(old, eqx.is_array)
    new_leaves, new_def = jax.tree_util.tree_flatten(new_dyn)
    old_leaves, old_def = jax.tree_util.tree_flatten(old_dyn)
    same = new_def == old_def and all(  # type: ignore[operator]  # jaxlib has no stub for PyTreeDef
        a.shape == b.shape and a.dtype == b.dtype for a, b in zip(new_leaves, old_leaves)
    )  # fmt: skip
    if not same:
        return select_tree(ok, new, old)
    old_leaves = [jnp.asarray(b, a.dtype) for a, b in zip(new_leaves, old_leaves)]  # weak types as in `new`
    chosen = jax.lax.cond(ok, lambda: new_leaves, lambda: old_leaves)
    return eqx.combine(jax.tree_util.tree_unflatten(new_def, chosen), static)


def make_train_step(
    loss_fn: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    *,
    has_aux: bool = False,
    nonfinite: NonFiniteStep = "skip",
) -> TrainStep:
    """Build a pure, ``eqx.filter_jit``-compiled optimisation step.

    **Arguments:**

    - `loss_fn`: `loss_fn(model, batch) -> loss` (a scalar array), or `-> (loss, aux)` if `has_aux`. Gradients are
      taken with `eqx.filter_value_and_grad`, i.e. with respect to every inexact-array leaf of `model`.
    - `optimizer`: an optax `GradientTransformation` (or `GradientTransformationExtraArgs`, which additionally
      receives `value=loss`), or any object with the same `init`/`update` pair such as `optax.MultiSteps`. Its
      state is `optimizer.init(eqx.filter(model, eqx.is_inexact_array))`.
    - `has_aux`: whether `loss_fn` returns `(loss, aux)`.
    - `nonfinite`: `"skip"` (default) or `"raise"`: if the loss or any gradient leaf is NaN/inf, or the update
      would make an entry of the parameters or of the optimiser state NaN/inf that was finite before (e.g. a finite
      but huge gradient overflowing Adam's second moment), the returned model and optimiser state are the *inputs*,
      unchanged (a `lax.cond` on the array leaves; a select under `vmap`), and `ok` is False.
      The step itself cannot raise from inside `jit`; `"raise"` behaves like `"skip"` here and the caller (e.g.
      [`fit`][jaxsciml.train.fit]) raises on `ok == False`. `"ignore"` applies the update regardless (`ok` is
      still computed).

    **Returns:** `step(model, opt_state, batch) -> (model, opt_state, loss, aux, ok)`, where `aux` is `None` unless
    `has_aux`, and `ok` is a boolean scalar array.
    """
    check_loss_fn(loss_fn)
    check_optimizer(optimizer)
    check_nonfinite(nonfinite)
    has_aux = bool(has_aux)

    @eqx.filter_jit
    def train_step(model, opt_state, batch):
        return step_body(loss_fn, optimizer, has_aux, nonfinite, model, opt_state, batch)

    return train_step
