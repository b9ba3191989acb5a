"""Losses, predictions and a small training loop for NSM (spectral loss) and FNO (grid PINN loss) operators."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, PRNGKeyArray

from ._basis import _float, check_finite
from ._problem import AbstractProblem

__all__ = [
    "nsm_loss",
    "nsm_predict",
    "fno_loss",
    "fno_predict",
    "default_optimizer",
    "train_operator",
    "relative_error",
]


def _check_batch(params, name: str = "params") -> Array:
    params = check_finite(_float(params, name), name)
    if params.ndim < 1:
        raise ValueError(f"`{name}` must be a batch of parameters (leading batch axis), got a scalar")
    return params


def nsm_predict(model: Callable, problem: AbstractProblem, params: Array) -> Array:
    """Solution coefficients ``(B, *basis.shape)`` for a batch of parameters (constraints applied; NaN/inf in
    ``params`` raise at run time)."""
    params = _check_batch(params)
    raw = jax.vmap(model)(jax.vmap(problem.model_input)(params))
    return jax.vmap(problem.constrain)(raw, params)


def nsm_loss(model: Callable, problem: AbstractProblem, params: Array) -> Array:
    """Spectral (Parseval) loss of the NSM prediction, averaged over the batch."""
    return problem.loss(nsm_predict(model, problem, params), params)


def fno_predict(model: Callable, problem: AbstractProblem, params: Array, shape: tuple[int, ...]) -> Array:
    """Solution values ``(B, *shape)`` on the uniform grid of ``shape`` (constraints applied)."""
    params = _check_batch(params)
    x = jax.vmap(lambda p: problem.grid_input(p, shape))(params)
    raw = jax.vmap(model)(x)
    return jax.vmap(lambda r, p: problem.grid_constrain(r, p, shape))(raw, params)


def fno_loss(model: Callable, problem: AbstractProblem, params: Array, shape: tuple[int, ...]) -> Array:
    """Grid PINN loss (finite-difference residual) of the FNO prediction."""
    return problem.grid_loss(fno_predict(model, problem, params, shape), params, shape)


def relative_error(pred: Array, ref: Array) -> Array:
    """Mean over the batch of ``||pred - ref|| / ||ref||`` on the grid (trailing axes after the first)."""
    axes = tuple(range(1, pred.ndim))
    return jnp.mean(jnp.sqrt(jnp.sum((pred - ref) ** 2, axes) / jnp.sum(ref**2, axes)))


def default_optimizer(steps: int, lr: float = 1e-3, final_factor: float = 0.1) -> optax.GradientTransformation:
    """Adam with an exponential decay from ``lr`` to ``final_factor * lr`` over ``steps`` (the paper's recipe)."""
    return optax.adam(optax.exponential_decay(lr, max(int(steps), 1), final_factor))


def train_operator(
    model: eqx.Module,
    loss_fn: Callable[[eqx.Module, Array], Array],
    sample_fn: Callable[[PRNGKeyArray], Array],
    steps: int,
    key: PRNGKeyArray,
    optimizer: optax.GradientTransformation | None = None,
    progress: bool = False,
    desc: str = "train",
    max_time_s: float | None = None,
) -> tuple[eqx.Module, dict[str, Any]]:
    """Train ``model`` to minimise ``loss_fn(model, params)`` on fresh parameter batches ``sample_fn(key)``.

    Returns the trained model and a record with the loss history, ``wall_s`` (total, including compilation),
    ``compile_s`` (first step minus a typical step), ``step_s`` (median step time after compilation), ``train_s``
    (``wall_s - compile_s``) and ``steps`` (taken). ``max_time_s`` stops early once the training time (excluding
    compilation) reaches it (the learning-rate schedule still spans ``steps``). Non-finite losses raise
    ``FloatingPointError``.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be a positive integer, got {steps!r}")
    optimizer = default_optimizer(steps) if optimizer is None else optimizer
    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, key):
        batch = sample_fn(key)

        def f(p):
            return loss_fn(eqx.combine(p, static), batch)

        loss, grads = jax.value_and_grad(f)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    it = range(steps)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(it, desc=desc, leave=False)
        it = bar
    losses, times = [], []
    t_start = time.perf_counter()
    compile_s = 0.0
    for i in it:
        key, sub = jax.random.split(key)
        t0 = time.perf_counter()
        params, opt_state, loss = step(params, opt_state, sub)
        loss = float(loss)
        times.append(time.perf_counter() - t0)
        if not jnp.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss} at step {i}")
        losses.append(loss)
        if bar is not None and i % 20 == 0:
            bar.set_postfix(loss=f"{loss:.3e}")
        if i == 1:
            compile_s = max(times[0] - times[1], 0.0)
        if max_time_s is not None and time.perf_counter() - t_start - compile_s >= max_time_s:
            break
    wall = time.perf_counter() - t_start
    typical = sorted(times[1:])[len(times[1:]) // 2] if len(times) > 1 else times[0]
    record = {
        "loss": losses,
        "wall_s": wall,
        "compile_s": max(times[0] - typical, 0.0),
        "step_s": typical,
        "train_s": wall - max(times[0] - typical, 0.0),
        "steps": len(losses),
    }
    return eqx.combine(params, static), record
