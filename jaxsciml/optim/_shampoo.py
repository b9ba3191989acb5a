"""Shampoo as an optax transformation: blocked Kronecker statistics, grafting, batched roots, 4-bit eigenvectors.

For every parameter block ``G`` (an order-``k`` tensor, ``k = 2`` for matrices) the statistics of mode ``i`` are

    S_i <- beta2 S_i + c G_(i) G_(i)^T,         c = 1 if beta2 == 1 (AdaGrad sum) else 1 - beta2,

where ``G_(i)`` is the mode-``i`` unfolding (for a matrix: ``L = S_1 = sum G G^T``, ``R = S_2 = sum G^T G``), and the
search direction is

    D = G x_1 P_1 x_2 ... x_k P_k,              P_i = (S_i + epsilon lambda_max(S_i) I)^(-p),

with ``p = 1/(2k)`` (``L^{-1/4} G R^{-1/4}``) unless ``exponent_override`` is given (``1/2`` gives
Shampoo^2). References: Gupta, Koren & Singer (2018); Anil et al. (2020); Shi et al. (2023);
Morwani et al. (2024); Wang et al. (2024).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from jaxtyping import Array, Int

from . import _common as C
from ._blocking import (
    BlockPlan,
    block_norms,
    broadcast_blocks,
    from_blocks,
    make_plan,
    mode_cross,
    mode_gram,
    mode_product,
    to_blocks,
    valid_block_dims,
)
from ._quant import (
    QuantizedMatrix,
    bjorck,
    dequantize,
    pack_offdiag_fp8,
    pack_symmetric,
    quantize,
    unpack_offdiag_fp8,
    unpack_symmetric,
)
from ._roots import (
    eigh_inverse_root,
    eigh_psd,
    grouped_map,
    newton_inverse_root,
    root_from_eigh,
    safe_update,
    target_platform,
)

STATIC_ARGS = (
    "block_size",
    "precondition_every",
    "start_preconditioning_step",
    "root_method",
    "graft",
    "nesterov",
    "bias_correction",
    "merge_small_dims",
    "max_preconditioner_dim",
    "power_iterations",
    "quantize_eigenvectors",
    "four_bit_mode",
    "quant_block_size",
    "bjorck_iters",
    "newton_iters",
    "mesh",
    "mesh_axis",
    "exponent_override",
    "stagger_refresh",
)
"""Arguments of :func:`shampoo` / :func:`scale_by_shampoo` that fix array shapes or code paths; pass them as
``optax.inject_hyperparams(shampoo, static_args=STATIC_ARGS)``."""


class ShampooState(NamedTuple):
    """State of :func:`scale_by_shampoo`; every field is a pytree of arrays.

    Per-leaf fields are tuples in ``jax.tree_util.tree_leaves(params)`` order; a diagonal-fallback leaf has ``()``
    in the Kronecker fields.

    Attributes:
        count: number of applied (finite) updates, int32.
        skipped: number of steps skipped because the gradient was not finite, int32.
        root_fallbacks: cumulative number of matrices whose new root (or 4-bit eigendecomposition) failed and fell
            back to the previous one, int32 (see :func:`jaxsciml.optim.health`).
        nonfinite_statistics: cumulative number of steps after which some statistic held inf/NaN (e.g. overflow by a
            huge but finite gradient), int32.
        stats: per leaf, per power-iteration level, per mode: statistics ``(num_blocks, b_i, b_i)`` (empty with
            ``four_bit_mode="eigenvalue_tracking"``; with ``"eigenbasis"`` one level of pairs ``(diagonal
            (num_blocks, b_i), int16 fixed-point correlations of the off-diagonal upper triangle (num_blocks,
            b_i (b_i - 1) / 2))`` of the statistic in its 4-bit eigenbasis, see
            :func:`jaxsciml.optim._quant.pack_symmetric`).
        roots: per leaf, per mode: inverse roots ``(num_blocks, b_i, b_i)`` (empty in 4-bit mode, except
            ``"eigenbasis"``: the root's off-diagonal in the 4-bit basis as ``(float8 bits (num_blocks,
            b_i (b_i - 1) / 2) uint8, scale (num_blocks,))``, see :func:`jaxsciml.optim._quant.pack_offdiag_fp8`).
        eigvals: 4-bit mode only, per leaf, per mode, ``(num_blocks, b_i)``: the root's eigenvalues
            ``(lambda + eps lambda_max)^(-p)`` (``four_bit_mode="roots"``), the diagonal of the root in the 4-bit
            basis (``"eigenbasis"``) or the statistics' eigenvalues (``"eigenvalue_tracking"``).
        eigvecs: 4-bit mode only: per leaf, per mode: the 4-bit eigenvectors (:class:`QuantizedMatrix`).
        graft: per leaf: diagonal second-moment accumulator of the graft / diagonal method (or an empty array).
        mu: per leaf: first moment (or an empty array when ``beta1 == 0``).
    """

    count: Int[Array, ""]  # type: ignore[assignment]  # a NamedTuple field shadowing tuple.count, as in optax
    skipped: Int[Array, ""]
    root_fallbacks: Int[Array, ""]
    nonfinite_statistics: Int[Array, ""]
    stats: tuple
    roots: tuple
    eigvals: tuple
    eigvecs: tuple
    graft: tuple
    mu: tuple


FOUR_BIT_MODES = ("eigenbasis", "roots", "eigenvalue_tracking")

PER_LEAF_FIELDS = ("stats", "roots", "eigvals", "eigvecs", "graft", "mu")

PRECONDITIONER_FIELDS = {"ShampooState": ("stats", "roots", "eigvals", "eigvecs")}


def _empty(dtype=jnp.float32) -> Array:
    return jnp.zeros((0,), dtype)


def diagonal_update(g: Array, acc: Array, t: Array, kind: str, beta2, eps) -> tuple[Array, Array]:
    """One step of a diagonal method (``kind`` in sgd/adagrad/rmsprop/adam) -> ``(update, new accumulator)``.

    adagrad: ``a += g^2``, ``u = g / (sqrt(a) + eps)``; rmsprop: ``a = b a + (1 - b) g^2``, same ``u``; adam: rmsprop
    with the bias correction ``a / (1 - b^t)`` (Adam's normalisation without its first moment, which is applied after
    grafting); sgd/none: ``u = g``.
    """
    if kind == "adagrad":
        acc = acc + g * g
        return g / (jnp.sqrt(acc) + eps), acc
    if kind in ("rmsprop", "adam"):
        acc = beta2 * acc + (1.0 - beta2) * g * g
        denom = acc / (1.0 - beta2 ** t.astype(g.dtype)) if kind == "adam" else acc
        return g / (jnp.sqrt(denom) + eps), acc
    return g, acc


def _check_common(
    block_size,
    precondition_every,
    start_preconditioning_step,
    root_method,
    graft,
    epsilon,
    exponent_override,
    beta1,
    beta2,
    power_iterations,
    quantize_eigenvectors,
    max_preconditioner_dim,
    quant_block_size,
    bjorck_iters,
    newton_iters,
    four_bit_mode="eigenbasis",
):
    block_size = C.static_int("block_size", block_size, allow_none=True)
    precondition_every = C.static_int("precondition_every", precondition_every)
    start = C.static_int("start_preconditioning_step", start_preconditioning_step, minimum=0)
    root_method = C.choice("root_method", root_method, C.ROOT_METHODS)
    graft = C.choice("graft", graft, C.GRAFTS)
    C.positive_float("epsilon", epsilon)
    C.positive_float("exponent_override", exponent_override, allow_none=True)
    C.unit_interval("beta1", beta1, closed_high=False)
    C.unit_interval("beta2", beta2, closed_low=False)
    power_iterations = C.static_int("power_iterations", power_iterations)
    max_dim = C.static_int("max_preconditioner_dim", max_preconditioner_dim, allow_none=True)
    qbs = C.static_int("quant_block_size", quant_block_size, minimum=2)
    bjorck_iters = C.static_int("bjorck_iters", bjorck_iters, minimum=0)
    newton_iters = C.static_int("newton_iters", newton_iters)
    if root_method == "newton" and exponent_override is not None:
        if C.is_traced(exponent_override):
            raise TypeError("`exponent_override` must be static with root_method='newton'.")
        r = 1.0 / float(exponent_override)
        if abs(r - round(r)) > 1e-9:
            raise ValueError(
                f"`exponent_override` must be 1/integer for root_method='newton' (coupled Newton computes integer "
                f"roots), got {exponent_override!r}."
            )
    if quantize_eigenvectors and root_method != "eigh":
        raise ValueError("`quantize_eigenvectors=True` requires root_method='eigh' (it stores eigenvectors).")
    four_bit_mode = C.choice("four_bit_mode", four_bit_mode, FOUR_BIT_MODES)
    if quantize_eigenvectors and power_iterations != 1 and four_bit_mode != "roots":
        raise ValueError(
            "`power_iterations > 1` is not supported together with `quantize_eigenvectors=True` and "
            f"four_bit_mode={four_bit_mode!r} (use four_bit_mode='roots')."
        )
    return (
        block_size,
        precondition_every,
        start,
        root_method,
        graft,
        power_iterations,
        max_dim,
        qbs,
        bjorck_iters,
        newton_iters,
        four_bit_mode,
    )


def refresh_slots(plans: list[BlockPlan], every: int) -> list[dict[tuple[int, int], np.ndarray]]:
    """Static assignment of every root (leaf ``li``, mode ``m``, block ``j``) to one of ``every`` refresh slots.

    Used by ``stagger_refresh=True``: slot ``k`` is refreshed at the steps ``t > start`` with
    ``(t - start) % every == k`` (and every root at ``t = start``), so each root is still recomputed every ``every``
    steps, but at its own phase. Roots are dealt out largest first to the slot with the least work so far (cost
    ``b^3`` for a ``b x b`` root; ties to the lowest slot), which balances the work per step.

    Returns ``every`` dicts ``{(li, m): sorted block indices}`` (a slot may be empty when there are fewer roots than
    slots).
    """
    items = []
    for li, plan in enumerate(plans):
        if plan.kind != "block":
            continue
        for m, b in enumerate(plan.block):
            items += [(-(b**3), li, m, j) for j in range(plan.num_blocks)]
    load = [0] * every
    chosen: list[dict[tuple[int, int], list[int]]] = [{} for _ in range(every)]
    for neg_cost, li, m, j in sorted(items):
        k = min(range(every), key=lambda i: (load[i], i))
        load[k] -= neg_cost
        chosen[k].setdefault((li, m), []).append(j)
    return [{key: np.asarray(sorted(v), np.int32) for key, v in sorted(c.items())} for c in chosen]


def _normalized(f: Array, valid: np.ndarray) -> Array:
    """Scale a stack of PSD factors ``(nb, b, b)`` to mean eigenvalue one over the *real* (unpadded) rows of each
    block (``tr F = valid[n]``); zero factors become the identity on those rows. Zero padding of a block never enters:
    its rows and columns of ``f`` are zero, and the trace is normalised by the real size ``valid[n] <= b``."""
    d = f.shape[-1]
    tr = jnp.trace(f, axis1=-2, axis2=-1)
    dv = jnp.asarray(valid, f.dtype)
    eye = (jnp.arange(d)[None, :] < jnp.asarray(valid)[:, None]).astype(f.dtype)[:, :, None] * jnp.eye(d, dtype=f.dtype)
    pos = (tr > 0)[:, None, None]
    return jnp.where(pos, f * (dv / jnp.where(tr > 0, tr, 1.0))[:, None, None], eye)


def _level_stats(xb: Array, prev_level: tuple[Array, ...] | None, mode: int, plan: BlockPlan) -> Array:
    """Statistic of ``mode``: ``X_(i) X_(i)^T`` (level 0) or ``X_(i) (X x_{j != i} F_j)_(i)^T`` with the normalised
    factors ``F_j`` of the previous power-iteration level (Morwani et al. 2024)."""
    if prev_level is None:
        return mode_gram(xb, mode)
    valid = valid_block_dims(plan)
    h = xb
    for j, f in enumerate(prev_level):
        if j != mode:
            h = mode_product(h, _normalized(f, valid[j]), j)
    return mode_cross(xb, h, mode)


def scale_by_shampoo(
    block_size: int | None = 128,
    beta1: float = 0.9,
    beta2: float = 0.999,
    epsilon: float = 1e-6,
    exponent_override: float | None = None,
    precondition_every: int = 10,
    start_preconditioning_step: int = 1,
    root_method: str = "eigh",
    graft: str = "adam",
    graft_beta2: float = 0.999,
    graft_epsilon: float = 1e-8,
    nesterov: bool = False,
    bias_correction: bool | None = None,
    merge_small_dims: bool = True,
    max_preconditioner_dim: int | None = None,
    power_iterations: int = 1,
    quantize_eigenvectors: bool = False,
    quant_block_size: int = 32,
    bjorck_iters: int = 2,
    newton_iters: int = 100,
    mesh: Mesh | None = None,
    mesh_axis: str | None = None,
    four_bit_mode: str = "eigenbasis",
    stagger_refresh: bool = True,
) -> optax.GradientTransformation:
    r"""Shampoo preconditioning (without learning rate), as an ``optax.GradientTransformation``.

    Each leaf is blocked (:mod:`jaxsciml.optim._blocking`): unit dims dropped, consecutive small dims merged while the
    product is ``<= block_size``, dims ``> block_size`` cut into zero-padded ``block_size`` blocks. Every block of
    order ``k`` keeps one statistic per mode, ``S_i <- beta2 S_i + c G_(i) G_(i)^T`` (``c = 1`` for ``beta2 = 1``,
    the AdaGrad sum; else ``1 - beta2``), and the direction is ``D = G x_1 P_1 ... x_k P_k`` with
    ``P_i = (S_i + epsilon lambda_max(S_i) I)^{-p}``, ``p = exponent_override or 1/(2k)``. Scalars and vectors (and
    leaves with a block dim ``> max_preconditioner_dim``) use the diagonal method of ``graft`` (AdaGrad if ``graft`` is
    ``"none"``/``"sgd"``).

    Step ``t`` (1-based) updates the statistics with ``G_t`` first; roots are recomputed (all blocks of all leaves,
    same-shaped matrices stacked into one batched ``eigh`` or coupled-Newton call, spread over ``mesh[mesh_axis]`` if
    a mesh is given) when ``t >= start_preconditioning_step`` and ``(t - start) % precondition_every == 0``, via
    ``lax.cond`` so the whole update is jit-safe. Roots are computed in float32 (float64 for float64 parameters)
    whatever the parameter dtype. **Fallback**: a root whose statistic has ``lambda_max <= 0`` or is not finite, or
    that comes out non-finite (or, for Newton, has not converged to ``max|M - I| < 0.1``), is discarded and the
    previous root (initially the identity) is kept, matrix by matrix, so parameters never become NaN through a root.
    Before ``start_preconditioning_step`` the graft update itself is returned.

    Grafting (per block): ``D <- D * ||A|| / ||D||`` with ``A`` the update of ``graft`` (``"sgd"``: ``G``;
    ``"adagrad"``; ``"rmsprop"``; ``"adam"``: RMSprop with bias correction). Then the first moment
    ``m <- beta1 m + (1 - beta1) u``, used as it is (the plain EMA momentum of distributed_shampoo,
    ``moving_average_for_momentum=True``; ``beta1 m + (1 - beta1) u`` with ``nesterov``). ``bias_correction=True``
    divides by Adam's ``1 - beta1^t`` (optax's Nesterov form with ``nesterov``): the first steps are then up to
    ``1 / (1 - beta1)`` times larger at the same learning rate. The defaults depend on the grafting type (measured:
    lowest final loss at equal steps over a learning-rate grid, ``benchmarks/shampoo_peers.py``): ``graft="adam"``
    (the default graft) uses the bias-corrected EMA (3 of 3 ablation tasks better than the plain EMA, e.g. the digits
    autoencoder 0.503 vs 0.559); the other grafts the plain EMA (with ``graft="rmsprop"`` the bias-corrected form lost
    on 3 of 3, and Nesterov, better on the autoencoder, deep_linear and char_lm, lost on regression, digits_mlp,
    nsm_poisson and the held-out MLP, so it stays off). ``bias_correction=False`` is distributed_shampoo's form
    (``moving_average_for_momentum=True``): with it the two agree step by step at matched settings.

    **Non-finite gradients** (any NaN/inf in the whole tree): the step is skipped -- statistics, accumulators, momentum
    and ``count`` are unchanged, ``skipped`` is incremented and the returned update is zero.

    **4-bit** (``quantize_eigenvectors=True``; Wang et al. 2024). Eigenvector matrices are stored with 4-bit
    Linear-2 codes, two per byte (:mod:`jaxsciml.optim._quant`, float32 per-chunk scales over ``quant_block_size``
    entries); after dequantization ``bjorck_iters`` Björck steps re-orthogonalise them. Three schedules
    (``four_bit_mode``):

    - ``"eigenbasis"`` (default since 2026-12; preconditioner state 0.21-0.28x fp32 Shampoo's): each statistic is
      held in its own 4-bit eigenbasis ``V~`` (the rectified dequantized eigenvectors), ``S = V~ M V~^T``, with
      ``M``'s diagonal in float32 and its off-diagonal upper triangle as correlations ``m_ij / sqrt(m_ii m_jj)`` in
      int16 fixed point (absolute step ``2^-15``; float16 there, relative ``2^-11`` per entry, lost the small
      eigenvalues that are Schur complements of strongly coupled large entries: 27-32% update error on the digits
      MLP, see :func:`jaxsciml.optim._quant.pack_symmetric`); every step
      ``M <- beta2 M + c V~^T G G^T V~``. The root shares the basis. At each refresh ``M = Q diag(w) Q^T``; the exact
      eigenvectors ``V~ Q`` are quantized and rectified (``V~'``); ``M`` is rotated into the new basis,
      ``M' = (V~'^T V~) M (V~^T V~')``, so the basis' quantization error stays in ``M'`` instead of being lost at
      every refresh; and the root in the new basis, ``C = P diag((w + eps w_max)^(-p)) P^T`` with
      ``P = V~'^T V~ Q`` (nearly the identity), is stored as its float32 diagonal and its off-diagonal upper triangle
      in float8 (e4m3, scaled per matrix; 1 byte per pair). Every step uses ``V~ C V~^T``. Keeping ``C``'s
      off-diagonal is what makes this accurate: with ``V~ diag(.) V~^T`` alone (Wang et al.; ``"roots"``), the
      eigenvector error is amplified by up to ``epsilon^(-1/4)`` in the damped directions of an ill-conditioned
      statistic (13-26% per-step update error on the peer tasks at ``epsilon = 1e-6``); with ``C`` it is the float8
      rounding of a small correction (measured 0.1-0.3% on a synthetic block, see
      ``benchmarks/results/shampoo_4bit.md`` for the peer tasks). Same schedule and statistics as fp32 Shampoo up
      to rounding. Not with ``power_iterations > 1``.
    - ``"roots"`` (the default before 2026-12): the statistics are exactly those of fp32 Shampoo (stored in
      float32); at each refresh ``S = V diag(w) V^T`` is decomposed and the root is stored as its
      full-precision eigenvalues ``(w + eps w_max)^(-p)`` ``(num_blocks, b)`` and 4-bit eigenvectors ``V``; every step
      uses ``V~ diag(.) V~^T`` with ``V~`` the rectified dequantized ``V``. Updates equal fp32 Shampoo's up to the
      eigenvector quantization error (as ``"eigenbasis"``); the preconditioner state is ~0.6x of fp32 Shampoo's.
    - ``"eigenvalue_tracking"`` (smallest state, about 1/7 of fp32): the *statistics* themselves are held as
      full-precision eigenvalues and 4-bit eigenvectors. At refresh steps (paper's Algorithm 3) the statistic
      ``beta2 V Lambda V^T + c G G^T`` is formed and re-decomposed; in between, the gradient enters only through its
      diagonal in the current eigenbasis, ``lambda <- beta2 lambda + c diag(V^T G G^T V)`` (our addition), and the
      root is rebuilt from ``(lambda, V)`` every step. A different algorithm from fp32 Shampoo: updates differ from it
      by tens of percent per step.

    **Staggered refresh** (``stagger_refresh=True``, the default since 2026-12): instead of recomputing every root
    on one step in ``precondition_every``, which makes that step several times slower than the others (a latency
    spike), the roots are dealt out to ``precondition_every`` slots of about equal work (:func:`refresh_slots`); step
    ``t > start_preconditioning_step`` recomputes slot ``(t - start) % precondition_every`` only, through a
    ``lax.switch`` whose branches each hold their own share (no step runs, or waits on, the others'
    decompositions). Step ``start`` recomputes all roots once. Each root is still at most ``precondition_every``
    steps old; the amortised work is the same. No effect with ``four_bit_mode="eigenvalue_tracking"`` (its
    refresh also updates the statistics) or ``precondition_every=1``. ``stagger_refresh=False`` gives the
    synchronised schedule of distributed_shampoo (needed for step-by-step agreement with it). Measured on the
    ``char_lm`` transformer (``benchmarks/shampoo_refresh.py``): the refresh step's extra time is spread evenly,
    equal final loss.

    **New Perspective** (Morwani et al. 2024): ``power_iterations = n > 1`` keeps ``n`` levels of statistics; level
    ``l`` accumulates ``G_(i) (G x_{j!=i} F_j)_(i)^T`` with the trace-normalised factors ``F_j`` of level ``l - 1``
    (level 0 is Shampoo's ``G G^T``), an online version of power iteration towards the best Kronecker approximation
    of ``sum g g^T``; the last level is preconditioned. Combine with ``exponent_override=0.5`` for Shampoo^2.

    **Health**: ``root_fallbacks`` counts matrices whose new root failed and fell back (summed over refreshes),
    ``nonfinite_statistics`` the steps after which a statistic held inf/NaN (e.g. ``G G^T`` overflowed for a huge
    finite gradient); read both with :func:`jaxsciml.optim.health`.

    **New Perspective with blocking**: the trace normalisation of level ``l - 1`` factors uses each block's real
    (unpadded) size, so zero-padded edge blocks behave exactly like ragged blocks.

    CPU and threads: on CPU every eigendecomposition is one LAPACK call on a single matrix (a stack is looped with
    ``lax.map``): jaxlib 0.10.0-0.10.2 parallelise batched CPU LAPACK calls in a way that deadlocks when two run at
    once (see :mod:`jaxsciml.optim._roots`). Other platforms use one batched call per block shape.

    Performance note (CPU): jax's CPU ``eigh`` runs LAPACK through scipy's OpenBLAS; on a busy machine its threads
    can make one 128x128 decomposition take 100x longer than single-threaded. Setting ``OPENBLAS_NUM_THREADS=1``
    (or ``threadpoolctl.threadpool_limits(1)`` after the first ``eigh``) avoids that.

    Args:
        block_size: maximal block dimension (``None``: no blocking).
        beta1: momentum (``0`` disables it and its state).
        beta2: statistics decay (``1``: AdaGrad sum).
        epsilon: damping relative to the largest eigenvalue.
        exponent_override: root exponent ``p`` (default ``1/(2k)``).
        precondition_every: root refresh interval (>= 1).
        start_preconditioning_step: first step (1-based) that uses Shampoo directions.
        root_method: ``"eigh"`` or ``"newton"`` (coupled Newton, ``1/p`` must be an integer).
        graft: ``"none"``, ``"sgd"``, ``"adagrad"``, ``"rmsprop"`` or ``"adam"``.
        graft_beta2: decay of the graft / diagonal method.
        graft_epsilon: epsilon of the graft / diagonal method.
        nesterov: Nesterov momentum.
        bias_correction: divide the momentum by ``1 - beta1^t`` (Adam's correction); default ``None``: ``True`` for
            ``graft="adam"``, else ``False`` (the plain EMA, as distributed_shampoo).
        merge_small_dims: merge consecutive small dims (limit ``block_size``, or ``max_preconditioner_dim``).
        max_preconditioner_dim: leaves with a larger block dim use the diagonal fallback.
        power_iterations: New-Perspective levels (1 = Shampoo).
        quantize_eigenvectors: 4-bit eigenvector state.
        four_bit_mode: ``"eigenbasis"`` (default), ``"roots"`` or ``"eigenvalue_tracking"``; see **4-bit** above.
        quant_block_size: quantization chunk length along each eigenvector.
        bjorck_iters: Björck steps after dequantization.
        newton_iters: maximal coupled-Newton iterations.
        mesh: spread the batched root computations over the devices of this mesh ...
        mesh_axis: ... along this axis (default: its first axis).
        stagger_refresh: spread the root refreshes over the ``precondition_every`` steps (see **Staggered refresh**).

    Returns:
        An ``optax.GradientTransformation`` whose state is a :class:`ShampooState`.
    """
    (
        block_size,
        precondition_every,
        start,
        root_method,
        graft,
        power_iterations,
        max_dim,
        qbs,
        bjorck_iters,
        newton_iters,
        four_bit_mode,
    ) = _check_common(
        block_size,
        precondition_every,
        start_preconditioning_step,
        root_method,
        graft,
        epsilon,
        exponent_override,
        beta1,
        beta2,
        power_iterations,
        quantize_eigenvectors,
        max_preconditioner_dim,
        quant_block_size,
        bjorck_iters,
        newton_iters,
        four_bit_mode,
    )
    C.positive_float("graft_epsilon", graft_epsilon)
    C.unit_interval("graft_beta2", graft_beta2, closed_low=False)
    # momentum form per grafting type (measured; see the docstring)
    bias_correction = (graft == "adam") if bias_correction is None else bias_correction
    for name, flag in (
        ("nesterov", nesterov),
        ("bias_correction", bias_correction),
        ("stagger_refresh", stagger_refresh),
    ):
        if not isinstance(flag, bool):
            raise TypeError(f"`{name}` must be a bool, got {flag!r}.")
    if mesh is not None and not isinstance(mesh, Mesh):
        raise TypeError(f"`mesh` must be a jax.sharding.Mesh or None, got {type(mesh).__name__}.")
    if mesh is not None and mesh_axis is not None and mesh_axis not in mesh.axis_names:
        raise ValueError(f"`mesh_axis` {mesh_axis!r} is not an axis of the mesh {mesh.axis_names}.")
    quant = bool(quantize_eigenvectors)
    tracking = quant and four_bit_mode == "eigenvalue_tracking"  # statistics held as 4-bit eigendecompositions
    eigenbasis = quant and four_bit_mode == "eigenbasis"  # statistics held in their 4-bit eigenbasis
    quant_roots = quant and four_bit_mode == "roots"  # fp32 statistics, roots held as fp32 eigenvalues + 4-bit eigvecs
    platform = target_platform(mesh)
    use_mu = not C.is_static_zero(beta1)
    diag_kind = graft if graft in ("adagrad", "rmsprop", "adam") else "adagrad"
    graft_needs_acc = graft in ("adagrad", "rmsprop", "adam")

    def plans_of(leaves) -> list[BlockPlan]:
        return [make_plan(jnp.shape(x), block_size, merge_small_dims, max_dim) for x in leaves]

    def exponent_of(plan: BlockPlan) -> float:
        return float(exponent_override) if exponent_override is not None else 1.0 / (2 * plan.order)

    def init_fn(params):
        C.check_params(params, "scale_by_shampoo")
        leaves = jax.tree_util.tree_leaves(params)
        plans = plans_of(leaves)
        stats, roots, eigvals, eigvecs, gacc, mus = [], [], [], [], [], []
        for x, plan in zip(leaves, plans):
            dt = C.compute_dtype(x.dtype)
            if plan.kind == "block":
                nb = plan.num_blocks
                eyes = tuple(jnp.broadcast_to(jnp.eye(b, dtype=dt), (nb, b, b)) for b in plan.block)
                zeros = tuple(jnp.zeros((nb, b, b), dt) for b in plan.block)
                if tracking:
                    stats.append(())
                    roots.append(())
                    eigvals.append(tuple(jnp.zeros((nb, b), dt) for b in plan.block))
                    eigvecs.append(tuple(quantize(e, qbs) for e in eyes))
                elif eigenbasis:
                    stats.append((tuple(pack_symmetric(z) for z in zeros),))
                    roots.append(tuple(pack_offdiag_fp8(z) for z in zeros))
                    eigvals.append(tuple(jnp.ones((nb, b), dt) for b in plan.block))
                    eigvecs.append(tuple(quantize(e, qbs) for e in eyes))
                elif quant_roots:
                    stats.append(tuple(zeros for _ in range(power_iterations)))
                    roots.append(())
                    eigvals.append(tuple(jnp.ones((nb, b), dt) for b in plan.block))
                    eigvecs.append(tuple(quantize(e, qbs) for e in eyes))
                else:
                    stats.append(tuple(zeros for _ in range(power_iterations)))
                    roots.append(eyes)
                    eigvals.append(())
                    eigvecs.append(())
            else:
                stats.append(())
                roots.append(())
                eigvals.append(())
                eigvecs.append(())
            needs = plan.kind == "diag" or graft_needs_acc
            gacc.append(jnp.zeros(jnp.shape(x), dt) if needs else _empty(dt))
            mus.append(jnp.zeros(jnp.shape(x), dt) if use_mu else _empty(dt))
        z = jnp.zeros((), jnp.int32)
        return ShampooState(
            z, z, z, z, tuple(stats), tuple(roots), tuple(eigvals), tuple(eigvecs), tuple(gacc), tuple(mus)
        )

    def refresh_fp(stats, roots, plans, sel=None):
        """New roots (batched by shape and exponent) -> (roots, number of failed roots). ``sel`` (staggered refresh):
        ``{(leaf, mode): block indices}`` to refresh, the other blocks keep their roots; ``None``: every block."""
        items, where = {}, {}
        for li, plan, m, idx in selected_blocks(plans, sel):
            p = exponent_of(plan)
            s, old = _take(stats[li][-1][m], idx), _take(roots[li][m], idx)
            eps = jnp.full((s.shape[0],), epsilon, s.dtype)
            items.setdefault(p, []).append((s, old, eps))
            where.setdefault(p, []).append((li, m, idx))
        new = [list(r) for r in roots]
        failed = jnp.zeros((), jnp.int32)
        for p, its in items.items():
            if root_method == "eigh":

                def fn(s, old, eps, p=p):  # pyright: ignore[reportRedeclaration]  # one of two branch-wise defs
                    r, ok = eigh_inverse_root(s, p, eps, platform)
                    return safe_update(r, ok, old), ok

            else:
                r_int = int(round(1.0 / p))

                def fn(s, old, eps, r_int=r_int):
                    r, ok = newton_inverse_root(s, r_int, eps, max_iters=newton_iters)
                    return safe_update(r, ok, old), ok

            outs = grouped_map(fn, its, mesh, mesh_axis)
            for (li, m, idx), (r, ok) in zip(where[p], outs):
                new[li][m] = _put(new[li][m], idx, r)
                failed = failed + jnp.sum(~ok).astype(jnp.int32)
        return tuple(tuple(r) for r in new), failed

    def refresh_quant_roots(stats, eigvals, eigvecs, plans, sel=None):
        """4-bit roots: eigendecompose every statistic (or the blocks in ``sel``, see :func:`refresh_fp`), keep the
        root's eigenvalues ``(w + eps w_max)^(-p)`` in full precision and its eigenvectors in 4 bits -> (eigvals,
        eigvecs, eigenvectors to use now, number of failed decompositions). The refresh step itself uses the exact
        eigenvectors (as fp32 Shampoo); later steps the 4-bit ones."""
        items, where = [], []
        for li, plan, m, idx in selected_blocks(plans, sel):
            s = _take(stats[li][-1][m], idx)
            items.append((s, jnp.full((s.shape[0],), epsilon, s.dtype)))
            where.append((li, m, exponent_of(plan), idx))
        lam_new = [list(x) for x in eigvals]
        q_new = [list(x) for x in eigvecs]
        v_now = [list(x) for x in rectified(eigvecs, eigvals, plans)]
        failed = jnp.zeros((), jnp.int32)
        outs = grouped_map(lambda a: eigh_psd(a, platform), [(a,) for a, _ in items], mesh, mesh_axis)

        for (li, m, p, idx), (_, eps), (w, q) in zip(where, items, outs):
            lmax = jnp.max(w, axis=-1)
            ok = jnp.isfinite(lmax) & (lmax > 0) & jnp.all(jnp.isfinite(q), axis=(-2, -1))
            inv = (w + (eps * jnp.where(ok, lmax, 1.0))[:, None]) ** (-p)
            ok = ok & jnp.all(jnp.isfinite(inv), axis=-1)
            qq, old = quantize(q, qbs), eigvecs[li][m]
            lam_new[li][m] = _put_ok(eigvals[li][m], idx, inv, ok)
            q_new[li][m] = QuantizedMatrix(
                _put_ok(old.codes, idx, qq.codes, ok),
                _put_ok(old.scales, idx, qq.scales, ok),
            )
            v_now[li][m] = _put_ok(v_now[li][m], idx, q, ok)
            failed = failed + jnp.sum(~ok).astype(jnp.int32)
        return _tt(lam_new), _tt(q_new), _tt(v_now), failed

    def refresh_eigenbasis(mats, eigvals, roots, eigvecs, vs, plans, sel=None):
        """``four_bit_mode="eigenbasis"`` refresh of every block (or those in ``sel``, see :func:`refresh_fp`).

        ``mats`` holds each statistic ``S = V~ M V~^T`` in its current rectified 4-bit basis ``V~`` (``vs``). With
        ``M = Q diag(w) Q^T`` the exact eigenbasis of ``S`` is ``V~ Q``; it is quantized to 4 bits, rectified
        (``V~'``), and ``M`` is rotated into the new basis, ``M' = (V~'^T V~) M (V~^T V~')``, so the quantization
        error of the basis is kept in ``M'``'s off-diagonal, not lost. The root in the new basis,
        ``C = P diag((w + eps w_max)^(-p)) P^T`` with ``P = V~'^T V~ Q``, is kept as its diagonal (``eigvals``) and
        its float8 off-diagonal (``roots``). -> (mats, eigvals, roots, eigvecs, new bases ``V~'``, number of failed
        blocks); a failed block keeps its previous basis, root and (unrotated) statistic."""
        items, where = [], []
        for li, plan, m, idx in selected_blocks(plans, sel):
            items.append((_take(mats[li][m], idx),))
            where.append((li, m, exponent_of(plan), idx, plan.block[m]))
        mats_new = [list(x) for x in mats]
        lam_new = [list(x) for x in eigvals]
        off_new = [list(x) for x in roots]
        q_new = [list(x) for x in eigvecs]
        v_now = [list(x) for x in vs]
        failed = jnp.zeros((), jnp.int32)
        outs = grouped_map(lambda a: eigh_psd(a, platform), items, mesh, mesh_axis)

        for (li, m, p, idx, b), (a,), (w, q) in zip(where, items, outs):
            v_old = _take(vs[li][m], idx)
            v_exact = v_old @ q
            qq = quantize(v_exact, qbs)
            v_t = bjorck(dequantize(qq, b, a.dtype), bjorck_iters)
            rot = jnp.swapaxes(v_t, -1, -2) @ v_old
            m_rot = rot @ a @ jnp.swapaxes(rot, -1, -2)
            lmax = jnp.max(w, axis=-1)
            ok = jnp.isfinite(lmax) & (lmax > 0) & jnp.all(jnp.isfinite(v_exact), axis=(-2, -1))
            inv = (w + (epsilon * jnp.where(ok, lmax, 1.0))[:, None]) ** (-p)
            rq = rot @ q  # the exact eigenvectors in the new 4-bit basis: root = V~' (rq f rq^T) V~'^T
            core = (rq * inv[:, None, :]) @ jnp.swapaxes(rq, -1, -2)
            ok = ok & jnp.all(jnp.isfinite(core), axis=(-2, -1)) & jnp.all(jnp.isfinite(m_rot), axis=(-2, -1))
            old = eigvecs[li][m]
            mats_new[li][m] = _put(mats[li][m], idx, safe_update(m_rot, ok, a))
            cdiag = jnp.diagonal(core, axis1=-2, axis2=-1)
            lam_new[li][m] = _put_ok(eigvals[li][m], idx, cdiag, ok)
            bits, scale = pack_offdiag_fp8(core)
            ob, osc = roots[li][m]
            off_new[li][m] = (
                _put_ok(ob, idx, bits, ok),
                _put_ok(osc, idx, scale, ok),
            )
            q_new[li][m] = QuantizedMatrix(
                _put_ok(old.codes, idx, qq.codes, ok),
                _put_ok(old.scales, idx, qq.scales, ok),
            )
            v_now[li][m] = _put(vs[li][m], idx, safe_update(v_t, ok, v_old))
            failed = failed + jnp.sum(~ok).astype(jnp.int32)
        return _tt(mats_new), _tt(lam_new), _tt(off_new), _tt(q_new), _tt(v_now), failed

    def rectified(eigvecs, eigvals, plans):
        """Dequantized eigenvectors after ``bjorck_iters`` Björck steps, per leaf, per mode."""
        return tuple(
            tuple(bjorck(dequantize(q, b, lam.dtype), bjorck_iters) for q, lam, b in zip(qs, lams, plan.block))
            if plan.kind == "block"
            else ()
            for qs, lams, plan in zip(eigvecs, eigvals, plans)
        )

    def quant_step(xbs, eigvals, eigvecs, plans, do_refresh, coef):
        """4-bit path: returns (new eigvals, new eigvecs, per-leaf per-mode rectified eigenvectors to use)."""
        vs, grams = [], []
        for li, plan in enumerate(plans):
            if plan.kind != "block":
                vs.append(())
                grams.append(())
                continue
            dt = eigvals[li][0].dtype
            vs.append(tuple(bjorck(dequantize(q, b, dt), bjorck_iters) for q, b in zip(eigvecs[li], plan.block)))
            grams.append(tuple(mode_gram(xbs[li], m) for m in range(plan.order)))

        def refresh(_):
            items, idx = [], []
            for li, plan in enumerate(plans):
                if plan.kind != "block":
                    continue
                for m in range(plan.order):
                    v, lam = vs[li][m], eigvals[li][m]
                    a = beta2 * (v * lam[:, None, :]) @ jnp.swapaxes(v, -1, -2) + coef * grams[li][m]
                    items.append((a,))
                    idx.append((li, m))

            def fn(a):
                w, q = eigh_psd(a, platform)
                return w, q

            outs = grouped_map(fn, items, mesh, mesh_axis)
            lam_new = [list(x) for x in eigvals]
            q_new = [list(x) for x in eigvecs]
            v_new = [list(x) for x in vs]
            failed = jnp.zeros((), jnp.int32)
            for (li, m), (w, q) in zip(idx, outs):
                ok = jnp.all(jnp.isfinite(w), axis=-1) & jnp.all(jnp.isfinite(q), axis=(-2, -1))
                qq = quantize(q, qbs)
                lam_new[li][m] = safe_update(w, ok, eigvals[li][m])
                old_q = eigvecs[li][m]
                q_new[li][m] = QuantizedMatrix(
                    safe_update(qq.codes, ok, old_q.codes), safe_update(qq.scales, ok, old_q.scales)
                )
                v_new[li][m] = safe_update(q, ok, vs[li][m])
                failed = failed + jnp.sum(~ok).astype(jnp.int32)
            bad = ~C.tree_all_finite([a for (a,) in items])
            return _tt(lam_new), _tt(q_new), _tt(v_new), failed, bad

        def track(_):
            lam_new = [list(x) for x in eigvals]
            for li, plan in enumerate(plans):
                if plan.kind != "block":
                    continue
                for m in range(plan.order):
                    v = vs[li][m]
                    diag = jnp.sum(v * (grams[li][m] @ v), axis=-2)
                    lam_new[li][m] = beta2 * eigvals[li][m] + coef * diag
            bad = ~C.tree_all_finite(jax.tree_util.tree_leaves(lam_new))
            return _tt(lam_new), eigvecs, tuple(tuple(v) for v in vs), jnp.zeros((), jnp.int32), bad

        return jax.lax.cond(do_refresh, refresh, track, None)

    def scheduled(t, finite, plans, refresher, idle, operands):
        """Run the root refresh due at step ``t``. Synchronised: every root when ``(t - start) % every == 0`` (one
        ``lax.cond``). Staggered: ``lax.switch`` over ``every + 2`` branches -- idle, one per slot of
        :func:`refresh_slots` (step ``t > start`` refreshes slot ``(t - start) % every``), and all roots (step
        ``start``) -- so each step runs only its own share of the decompositions."""
        if not stagger_refresh or precondition_every == 1:
            do_refresh = finite & (t >= start) & ((t - start) % precondition_every == 0)
            return jax.lax.cond(do_refresh, refresher(None), idle, *operands)
        slots = refresh_slots(plans, precondition_every)
        branches = [idle] + [refresher(sel) if sel else idle for sel in slots] + [refresher(None)]
        phase = (t - start) % precondition_every
        index = jnp.where(~finite | (t < start), 0, jnp.where(t == start, precondition_every + 1, phase + 1))
        return jax.lax.switch(index, branches, *operands)

    def update_fn(updates, state, params=None):
        del params
        C.check_params(updates, "scale_by_shampoo (updates)")
        C.check_state("scale_by_shampoo", updates, state, ShampooState, init_fn, PER_LEAF_FIELDS)
        leaves, treedef = jax.tree_util.tree_flatten(updates)
        plans = plans_of(leaves)
        finite = C.tree_all_finite(leaves)
        t = state.count + 1
        coef = C.decay_coefficient(beta2)
        do_refresh = finite & (t >= start) & ((t - start) % precondition_every == 0)  # eigenvalue tracking
        gs = [jnp.where(finite, g, 0).astype(C.compute_dtype(g.dtype)) for g in leaves]
        xbs: list[Any] = [to_blocks(g, plan) if plan.kind == "block" else None for g, plan in zip(gs, plans)]

        # graft / diagonal accumulators
        graft_updates, new_gacc = [], []
        for g, acc, plan in zip(gs, state.graft, plans):
            kind = diag_kind if plan.kind == "diag" else graft
            u, acc = diagonal_update(g, acc, t, kind, graft_beta2, graft_epsilon)
            graft_updates.append(u)
            new_gacc.append(acc)

        # statistics and roots
        zero = jnp.zeros((), jnp.int32)
        if tracking:
            new_stats, new_roots = state.stats, state.roots
            new_vals, new_vecs, vs, failed, bad = quant_step(xbs, state.eigvals, state.eigvecs, plans, do_refresh, coef)
            use_roots = []
            for li, plan in enumerate(plans):
                if plan.kind != "block":
                    use_roots.append(())
                    continue
                p = exponent_of(plan)
                rs = []
                for v, lam in zip(vs[li], new_vals[li]):
                    r, ok = root_from_eigh(lam, v, p, epsilon)
                    eye = jnp.broadcast_to(jnp.eye(v.shape[-1], dtype=v.dtype), v.shape)
                    rs.append(safe_update(r, ok, eye))
                    failed = failed + jnp.sum(~ok).astype(jnp.int32)
                use_roots.append(tuple(rs))
            nonfinite_stats = bad
        elif eigenbasis:
            new_roots = state.roots
            vs = rectified(state.eigvecs, state.eigvals, plans)
            mats = tuple(
                tuple(
                    beta2 * unpack_symmetric(*state.stats[li][0][m])
                    + coef * (jnp.swapaxes(v, -1, -2) @ mode_gram(xbs[li], m) @ v)
                    for m, v in enumerate(vs[li])
                )
                if plan.kind == "block"
                else ()
                for li, plan in enumerate(plans)
            )
            nonfinite_stats = ~C.tree_all_finite(jax.tree_util.tree_leaves(mats))
            mats, new_vals, new_roots, new_vecs, vs, failed = scheduled(
                t,
                finite,
                plans,
                lambda sel: lambda a, lam, r, q, v: refresh_eigenbasis(a, lam, r, q, v, plans, sel),
                lambda a, lam, r, q, v: (a, lam, r, q, v, zero),
                (mats, state.eigvals, state.roots, state.eigvecs, vs),
            )
            new_stats = tuple((tuple(pack_symmetric(a) for a in ms),) if ms else () for ms in mats)
            use_roots = [
                tuple(
                    v
                    @ (
                        unpack_offdiag_fp8(off[0], off[1], v.shape[-1])
                        + lam[:, :, None] * jnp.eye(v.shape[-1], dtype=v.dtype)
                    )
                    @ jnp.swapaxes(v, -1, -2)
                    for v, lam, off in zip(vs[li], new_vals[li], new_roots[li])
                )
                if plan.kind == "block"
                else ()
                for li, plan in enumerate(plans)
            ]
        else:
            new_stats = []
            for li, plan in enumerate(plans):
                if plan.kind != "block":
                    new_stats.append(())
                    continue
                levels = []
                for lev in range(power_iterations):
                    prev = state.stats[li][lev - 1] if lev > 0 else None
                    levels.append(
                        tuple(
                            beta2 * state.stats[li][lev][m] + coef * _level_stats(xbs[li], prev, m, plan)
                            for m in range(plan.order)
                        )
                    )
                new_stats.append(tuple(levels))
            new_stats = tuple(new_stats)
            nonfinite_stats = ~C.tree_all_finite(jax.tree_util.tree_leaves(new_stats))
            if quant_roots:
                new_roots = state.roots
                new_vals, new_vecs, vs, failed = scheduled(
                    t,
                    finite,
                    plans,
                    lambda sel: lambda s, v, q: refresh_quant_roots(s, v, q, plans, sel),
                    lambda s, v, q: (v, q, rectified(q, v, plans), zero),
                    (new_stats, state.eigvals, state.eigvecs),
                )
                use_roots = [
                    tuple((v * inv[:, None, :]) @ jnp.swapaxes(v, -1, -2) for v, inv in zip(vs[li], new_vals[li]))
                    if plan.kind == "block"
                    else ()
                    for li, plan in enumerate(plans)
                ]
            else:
                new_vals, new_vecs = state.eigvals, state.eigvecs
                new_roots, failed = scheduled(
                    t,
                    finite,
                    plans,
                    lambda sel: lambda s, r: refresh_fp(s, r, plans, sel),
                    lambda s, r: (r, zero),
                    (new_stats, state.roots),
                )
                use_roots = new_roots

        # directions, grafting, warm-up
        outs = []
        for li, plan in enumerate(plans):
            a = graft_updates[li]
            if plan.kind != "block":
                outs.append(a)
                continue
            d = xbs[li]
            for m, r in enumerate(use_roots[li]):
                d = mode_product(d, r, m)
            if graft != "none":
                na = block_norms(to_blocks(a, plan))
                nd = block_norms(d)
                scale = jnp.where(nd > 0, na / jnp.where(nd > 0, nd, 1.0), 0.0)
                d = d * broadcast_blocks(scale, d)
            d = from_blocks(d, plan)
            outs.append(jnp.where(t >= start, d, a) if start > 1 else d)

        # momentum
        new_mu = []
        if use_mu:
            res = [C.momentum_update(u, mu, t, beta1, nesterov, bias_correction) for u, mu in zip(outs, state.mu)]
            outs = [r[0] for r in res]
            new_mu = [r[1] for r in res]
        else:
            new_mu = list(state.mu)

        new_state = ShampooState(
            count=state.count + finite.astype(jnp.int32),
            skipped=state.skipped + (~finite).astype(jnp.int32),
            root_fallbacks=state.root_fallbacks + jnp.where(finite, failed, 0),
            nonfinite_statistics=state.nonfinite_statistics + (finite & nonfinite_stats).astype(jnp.int32),
            stats=_tt(new_stats),
            roots=_tt(new_roots),
            eigvals=_tt(new_vals),
            eigvecs=_tt(new_vecs),
            graft=tuple(new_gacc),
            mu=tuple(new_mu),
        )
        # A skipped step leaves the state unchanged. Roots (and 4-bit eigen-pairs outside eigenvalue tracking) change
        # only inside the refresh, whose predicate already requires `finite`: no select over them (at block 1024
        # that would be a full extra pass over every root on every step).
        keep = lambda n, o: jnp.where(finite, n, o)
        new_state = new_state._replace(
            stats=jax.tree_util.tree_map(keep, new_state.stats, state.stats),
            graft=jax.tree_util.tree_map(keep, new_state.graft, state.graft),
            mu=jax.tree_util.tree_map(keep, new_state.mu, state.mu),
        )
        if tracking:
            new_state = new_state._replace(
                eigvals=jax.tree_util.tree_map(keep, new_state.eigvals, state.eigvals),
                eigvecs=jax.tree_util.tree_map(keep, new_state.eigvecs, state.eigvecs),
            )
        outs = [jnp.where(finite, u, 0).astype(g.dtype) for u, g in zip(outs, leaves)]
        return jax.tree_util.tree_unflatten(treedef, outs), new_state

    return optax.GradientTransformation(init_fn, update_fn)


def selected_blocks(plans: list[BlockPlan], sel: dict | None):
    """The roots a refresh recomputes (shared by every refresh path): ``(leaf index, plan, mode, block indices)`` for
    every Kronecker leaf and mode, with ``None`` (all blocks) when ``sel`` is ``None``; else only the
    ``(leaf, mode)`` pairs in ``sel`` (a slot of the staggered refresh, :func:`refresh_slots`) with their blocks."""
    for li, plan in enumerate(plans):
        if plan.kind != "block":
            continue
        for m in range(plan.order):
            idx = None if sel is None else sel.get((li, m))
            if sel is None or idx is not None:
                yield li, plan, m, idx


def _take(full: Array, idx) -> Array:
    return full if idx is None else full[idx]


def _put(full: Array, idx, new: Array) -> Array:
    return new if idx is None else full.at[idx].set(new)


def _put_ok(full: Array, idx, new: Array, ok: Array) -> Array:
    """Write ``new`` into the blocks ``idx`` of ``full`` (all when ``None``) where ``ok``; keep the old ones else."""
    return _put(full, idx, safe_update(new, ok, _take(full, idx)))


def _tt(x: Any) -> Any:
    """Lists of lists -> tuples of tuples (keeps NamedTuples and arrays)."""
    if isinstance(x, list):
        return tuple(_tt(e) for e in x)
    if isinstance(x, tuple) and not hasattr(x, "_fields"):
        return tuple(_tt(e) for e in x)
    return x


def shampoo(
    learning_rate: optax.ScalarOrSchedule,
    block_size: int | None = 128,
    beta1: float = 0.9,
    beta2: float = 0.999,
    epsilon: float = 1e-6,
    exponent_override: float | None = None,
    precondition_every: int = 10,
    start_preconditioning_step: int = 1,
    root_method: str = "eigh",
    graft: str = "adam",
    graft_beta2: float = 0.999,
    graft_epsilon: float = 1e-8,
    nesterov: bool = False,
    bias_correction: bool | None = None,
    weight_decay: float = 0.0,
    weight_decay_mask: Any = None,
    merge_small_dims: bool = True,
    max_preconditioner_dim: int | None = None,
    power_iterations: int = 1,
    quantize_eigenvectors: bool = False,
    quant_block_size: int = 32,
    bjorck_iters: int = 2,
    newton_iters: int = 100,
    mesh: Mesh | None = None,
    mesh_axis: str | None = None,
    four_bit_mode: str = "eigenbasis",
    stagger_refresh: bool = True,
) -> optax.GradientTransformation:
    """Shampoo optimizer: :func:`scale_by_shampoo`, decoupled weight decay, then ``-learning_rate`` scaling.

    ``updates = -lr_t * (shampoo_update + weight_decay * params)`` (AdamW-style decoupled decay, applied to the leaves
    selected by ``weight_decay_mask``). ``learning_rate`` may be a schedule. See :func:`scale_by_shampoo` for the other
    arguments; ``quantize_eigenvectors=True`` gives 4-bit Shampoo.
    """
    C.positive_float("weight_decay", weight_decay, allow_zero=True)
    if not callable(learning_rate):
        C.positive_float("learning_rate", learning_rate, allow_zero=True)
    parts = [
        scale_by_shampoo(
            block_size=block_size,
            beta1=beta1,
            beta2=beta2,
            epsilon=epsilon,
            exponent_override=exponent_override,
            precondition_every=precondition_every,
            start_preconditioning_step=start_preconditioning_step,
            root_method=root_method,
            graft=graft,
            graft_beta2=graft_beta2,
            graft_epsilon=graft_epsilon,
            nesterov=nesterov,
            bias_correction=bias_correction,
            merge_small_dims=merge_small_dims,
            max_preconditioner_dim=max_preconditioner_dim,
            power_iterations=power_iterations,
            quantize_eigenvectors=quantize_eigenvectors,
            quant_block_size=quant_block_size,
            bjorck_iters=bjorck_iters,
            newton_iters=newton_iters,
            mesh=mesh,
            mesh_axis=mesh_axis,
            four_bit_mode=four_bit_mode,
            stagger_refresh=stagger_refresh,
        )
    ]
    if not C.is_static_zero(weight_decay):
        parts.append(optax.add_decayed_weights(weight_decay, weight_decay_mask))
    parts.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*parts)
