"""Losses, predictions and a small training loop for NSM (spectral loss) and FNO (grid PINN loss) operators."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, PRNGKeyArray

from ..optim import soap
from ..train import fit
from ._basis import _float, check_finite, runtime_check
from ._causal import problem_causal_loss
from ._problem import AbstractProblem

ModelT = TypeVar("ModelT")

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


def nsm_loss(
    model: Callable,
    problem: AbstractProblem,
    params: Array,
    *,
    causal_eps: float | Array | None = None,
    time_axis: int | None = None,
) -> Array:
    """Spectral (Parseval) loss of the NSM prediction, averaged over the batch.

    ``causal_eps`` (opt-in, default ``None``): the causally weighted loss instead (Wang, Sankaran & Perdikaris,
    2022/2024; [`causal_loss`][jaxsciml.pde.causal_loss]): the residual at time ``t`` counts with weight
    ``exp(-causal_eps int_0^t L)`` (no gradient through the weight), where ``L(t)`` is the residual's squared norm
    in space at time ``t``. ``time_axis`` is the Chebyshev time axis of ``problem.basis`` (default: the problem's
    ``time_axis`` attribute, as set on [`Problem`][jaxsciml.pde.Problem]). ``causal_eps = 0`` is the plain loss.
    Measured at equal wall time (``benchmarks/results/nsm_time_treatment.md``): ``causal_eps = 100`` gave 0.52--0.68x
    the default's error on Burgers (nu = 0.02, T = 0.5) and 0.54--0.56x on reaction--diffusion (nu = 0.01, T = 1),
    three seeds, 300-step budget (0.63x / 0.33x after 1000 steps); 0.50--0.73x on KdV--Burgers, advected
    Allen--Cahn and linear advection (one seed); a tie with the opt-in SOAP optimizer on reaction--diffusion."""
    u = nsm_predict(model, problem, params)
    if causal_eps is None:
        return problem.loss(u, params)
    return problem_causal_loss(problem, u, params, causal_eps, time_axis)


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
    """Mean over the batch of ``||pred - ref|| / ||ref||`` on the grid (trailing axes after the first).

    ``pred`` and ``ref`` must have the same shape; a reference sample with zero norm is a run-time error (the relative
    error is undefined; the previous behaviour returned ``inf``)."""
    pred, ref = jnp.asarray(pred), jnp.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"relative_error: `pred` has shape {pred.shape} but `ref` has shape {ref.shape}")
    if pred.ndim < 2:
        raise ValueError(f"relative_error: expected batched arrays (B, ...), got shape {pred.shape}")
    axes = tuple(range(1, pred.ndim))
    den = jnp.sum(ref**2, axes)
    den = runtime_check(den, jnp.any(den == 0), "relative_error: a sample of `ref` has zero norm")
    return jnp.mean(jnp.sqrt(jnp.sum((pred - ref) ** 2, axes) / den))


def default_optimizer(
    steps: int, lr: float = 3e-3, final_factor: float = 0.1, method: str = "adam"
) -> optax.GradientTransformation:
    """The package's NSM recipe: ``method`` with an exponential decay from ``lr`` to ``final_factor * lr`` over
    ``steps``.

    ``method``: ``"adam"`` (``optax.adam``, the default) or ``"soap"`` (:func:`jaxsciml.optim.soap`, Adam in the
    eigenbasis of Kronecker-factored gradient statistics, its defaults: betas 0.95, basis refresh every 10 steps,
    blocks of 128). SOAP is opt-in: at equal wall time on a 2-core CPU it is ~8x more accurate than Adam on
    reaction--diffusion (0.26% vs 2.15%, 300-step budget; 0.10% vs 0.35% after 1500 steps each) and more accurate per
    step on Burgers / KdV--Burgers, but its step costs ~2.5x Adam's on periodic Poisson, where it is 13x worse at
    equal time (11% vs 0.87%) (``benchmarks/results/nsm_ablation.md``). With SOAP a small network is best at equal
    time on reaction--diffusion: ``NSM(..., width=16, depth=2)`` reaches 0.073% where width 32, depth 4 reaches 0.23%
    (``benchmarks/results/nsm_rd_configs.md``), and 0.059% after 6000 steps (128 s on a shared 2-core CPU), 13x /
    40x below FNO + PINN on 32^2 / 64^2 grids at equal time (``benchmarks/results/nsm_soap_rd.md``).

    The paper's schedule shape; the default ``lr = 3e-3`` (since 0.2.0, was ``1e-3``) is the measured best of
    {1e-3, 3e-3, 1e-2} across periodic Poisson, reaction--diffusion, advection and Burgers with the default
    :class:`NSM` (``1e-2`` wins on the time-dependent problems but is 7x worse on Poisson;
    ``benchmarks/results/nsm_transport.md``). Optimizer and schedule ablations at equal wall time:
    ``benchmarks/results/nsm_ablation.md``."""
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1:
        raise ValueError(f"`steps` must be a positive integer, got {steps!r}")
    if not (isinstance(lr, int | float | np.floating) and np.isfinite(lr) and lr > 0):
        raise ValueError(f"`lr` must be a positive finite number, got {lr!r}")
    if not (isinstance(final_factor, int | float | np.floating) and np.isfinite(final_factor) and final_factor > 0):
        raise ValueError(f"`final_factor` must be a positive finite number, got {final_factor!r}")
    schedule = optax.exponential_decay(float(lr), int(steps), float(final_factor))
    if method == "adam":
        return optax.adam(schedule)
    if method == "soap":
        return soap(schedule)
    raise ValueError(f"`method` must be 'adam' or 'soap', got {method!r}")


def train_operator(
    model: ModelT,
    loss_fn: Callable[[ModelT, Array], Array],
    sample_fn: Callable[[PRNGKeyArray], Array],
    steps: int,
    key: PRNGKeyArray,
    optimizer: optax.GradientTransformation | None = None,
    progress: bool = False,
    desc: str = "train",
    max_time_s: float | None = None,
    steps_per_call: int | None = None,
) -> tuple[ModelT, dict[str, Any]]:
    """Train ``model`` to minimise ``loss_fn(model, params)`` on fresh parameter batches ``sample_fn(key)``.

    A thin call of [`jaxsciml.train.fit`][] (``data=sample_fn`` called with ``key, sub = split(key)`` each step,
    ``nonfinite="raise"``, several steps per device call): use ``fit`` directly for checkpoints, evaluation or
    skipping non-finite steps. ``optimizer`` defaults to [`default_optimizer`][jaxsciml.pde.default_optimizer]
    ``(steps)``.

    Returns the trained model and a record with the per-step ``loss`` list, ``wall_s`` (total, including
    compilation), ``compile_s`` (tracing and compilation), ``step_s`` (median step time, compilation excluded),
    ``train_s`` (``wall_s - compile_s``) and ``steps`` (taken). ``max_time_s`` stops early once the training time
    (excluding compilation) reaches it (the learning-rate schedule still spans ``steps``). A non-finite loss, gradient
    or update raises ``FloatingPointError`` naming the step.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be a positive integer, got {steps!r}")
    optimizer = default_optimizer(steps) if optimizer is None else optimizer
    res = fit(
        model,
        loss_fn,
        optimizer,
        sample_fn,
        steps,
        key=key,
        data_arg="key",
        nonfinite="raise",
        progress=progress,
        desc=desc,
        max_time_s=max_time_s,
        steps_per_call=steps_per_call,
    )
    record = {
        "loss": res.history["loss"],
        "wall_s": res.wall_s,
        "compile_s": res.compile_s,
        "step_s": res.step_s,
        "train_s": res.wall_s - res.compile_s,
        "steps": res.step,
    }
    return res.model, record
