"""Eigenvalue-corrected Shampoo / SOAP (Vyas et al. 2024): Adam in the eigenbasis of the Kronecker statistics.

For every block ``G`` (same blocking as :func:`jaxsciml.optim.scale_by_shampoo`) with mode statistics
``S_i <- b_s S_i + c G_(i) G_(i)^T`` and eigenbases ``Q_i`` (eigenvectors of ``S_i``, refreshed every
``precondition_every`` steps):

    m   <- b1 m + (1 - b1) G                      (first moment, parameter space)
    G'  =  G x_1 Q_1^T ... x_k Q_k^T,   M' = m x_1 Q_1^T ... x_k Q_k^T     (rotate into the eigenbasis)
    v   <- b2 v + (1 - b2) G'^2                   (second moment, eigenbasis)
    N'  =  (M' / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    u   =  N' x_1 Q_1 ... x_k Q_k                 (rotate back)

Step 1 only accumulates the statistics and computes the first bases; its update is zero and the moments are left
untouched (as in the reference implementation: the basis of ``G_1`` applied to ``G_1`` itself makes ``G'`` diagonal up
to round-off, which Adam's normalisation inflates to full size: in float32 a first update 50-100x too large). Adam's
step count is ``t - 1`` from then on, and its bias corrections are computed in the parameters' precision.

Scalars/vectors use Adam (with the same zero first step). Bases are refreshed by a symmetric eigendecomposition (the
SOAP paper uses one step of QR power iteration; eigh is exact; on CPU one matrix per LAPACK call, see
:mod:`jaxsciml.optim._roots`), spread over a device mesh when one is given; a non-finite basis keeps the old.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh
from jaxtyping import Array, Int

from . import _common as C
from ._blocking import BlockPlan, from_blocks, make_plan, mode_gram, mode_product, to_blocks
from ._roots import eigh_psd, grouped_map, safe_update, target_platform


class SoapState(NamedTuple):
    """State of :func:`scale_by_soap` (per-leaf tuples in ``tree_leaves`` order).

    Attributes:
        count: applied (finite) steps, including the first one, which only builds the statistics (int32).
        skipped: non-finite steps skipped (int32).
        root_fallbacks: cumulative number of eigenbases whose refresh failed and kept the old basis (int32).
        nonfinite_statistics: cumulative number of steps after which some statistic held inf/NaN (int32).
        stats: per leaf, per mode: statistics ``(num_blocks, b, b)`` (``()`` for Adam leaves).
        bases: per leaf, per mode: eigenbases ``(num_blocks, b, b)``.
        mu: per leaf: first moment (parameter shape).
        nu: per leaf: second moment, ``(num_blocks, *block)`` in the eigenbasis (parameter shape for Adam leaves).
    """

    count: Int[Array, ""]  # type: ignore[assignment]  # a NamedTuple field shadowing tuple.count, as in optax
    skipped: Int[Array, ""]
    root_fallbacks: Int[Array, ""]
    nonfinite_statistics: Int[Array, ""]
    stats: tuple
    bases: tuple
    mu: tuple
    nu: tuple


def scale_by_soap(
    block_size: int | None = 128,
    beta1: float = 0.95,
    beta2: float = 0.95,
    shampoo_beta2: float | None = None,
    epsilon: float = 1e-8,
    precondition_every: int = 10,
    merge_small_dims: bool = True,
    max_preconditioner_dim: int | None = None,
    mesh: Mesh | None = None,
    mesh_axis: str | None = None,
) -> optax.GradientTransformation:
    """SOAP / eigenvalue-corrected Shampoo preconditioning (no learning rate); see the module docstring.

    Args:
        block_size: blocking, as in :func:`scale_by_shampoo`.
        merge_small_dims: blocking, as in :func:`scale_by_shampoo`.
        max_preconditioner_dim: blocking, as in :func:`scale_by_shampoo`.
        beta1: Adam's first-moment decay (in the eigenbasis).
        beta2: Adam's second-moment decay (in the eigenbasis).
        shampoo_beta2: decay of the Kronecker statistics (default ``beta2``; ``1`` gives the AdaGrad sum).
        epsilon: Adam's epsilon.
        precondition_every: eigenbasis refresh interval; bases are computed at step 1 and every
            ``precondition_every`` steps after.
        mesh: spread the batched eigendecompositions over the devices of this mesh ...
        mesh_axis: ... along this axis.

    Non-finite gradients skip the step (state unchanged, ``skipped`` incremented, zero update). ``root_fallbacks``
    counts eigenbases whose refresh failed (non-finite statistic or result: the old basis is kept) and
    ``nonfinite_statistics`` the steps after which a statistic held inf/NaN; see :func:`jaxsciml.optim.health`.

    References: Vyas et al., *SOAP: Improving and Stabilizing Shampoo using Adam* (2024); George et al., *Fast
    Approximate Natural Gradient Descent in a Kronecker-factored Eigenbasis* (EKFAC, 2018).
    """
    block_size = C.static_int("block_size", block_size, allow_none=True)
    every = C.static_int("precondition_every", precondition_every)
    max_dim = C.static_int("max_preconditioner_dim", max_preconditioner_dim, allow_none=True)
    C.unit_interval("beta1", beta1, closed_high=False)
    C.unit_interval("beta2", beta2, closed_high=False)
    sb = beta2 if shampoo_beta2 is None else shampoo_beta2
    C.unit_interval("shampoo_beta2", sb, closed_low=False)
    C.positive_float("epsilon", epsilon)
    if mesh is not None and not isinstance(mesh, Mesh):
        raise TypeError(f"`mesh` must be a jax.sharding.Mesh or None, got {type(mesh).__name__}.")

    def plans_of(leaves) -> list[BlockPlan]:
        return [make_plan(jnp.shape(x), block_size, merge_small_dims, max_dim) for x in leaves]

    def init_fn(params):
        C.check_params(params, "scale_by_soap")
        leaves = jax.tree_util.tree_leaves(params)
        stats, bases, mu, nu = [], [], [], []
        for x, plan in zip(leaves, plans_of(leaves)):
            dt = C.compute_dtype(x.dtype)
            mu.append(jnp.zeros(jnp.shape(x), dt))
            if plan.kind == "block":
                nb = plan.num_blocks
                stats.append(tuple(jnp.zeros((nb, b, b), dt) for b in plan.block))
                bases.append(tuple(jnp.broadcast_to(jnp.eye(b, dtype=dt), (nb, b, b)) for b in plan.block))
                nu.append(jnp.zeros((nb, *plan.block), dt))
            else:
                stats.append(())
                bases.append(())
                nu.append(jnp.zeros(jnp.shape(x), dt))
        z = jnp.zeros((), jnp.int32)
        return SoapState(z, z, z, z, tuple(stats), tuple(bases), tuple(mu), tuple(nu))

    def refresh(stats, bases, plans):
        items, idx = [], []
        for li, plan in enumerate(plans):
            for m in range(plan.order if plan.kind == "block" else 0):
                items.append((stats[li][m], bases[li][m]))
                idx.append((li, m))

        def fn(s, old):
            _, q = eigh_psd(s, target_platform(mesh))
            ok = jnp.all(jnp.isfinite(s), axis=(-2, -1)) & jnp.all(jnp.isfinite(q), axis=(-2, -1))
            return safe_update(q, ok, old), ok

        new = [list(b) for b in bases]
        failed = jnp.zeros((), jnp.int32)
        for (li, m), (q, ok) in zip(idx, grouped_map(fn, items, mesh, mesh_axis)):
            new[li][m] = q
            failed = failed + jnp.sum(~ok).astype(jnp.int32)
        return tuple(tuple(b) for b in new), failed

    def update_fn(updates, state, params=None):
        del params
        C.check_params(updates, "scale_by_soap (updates)")
        C.check_state("scale_by_soap", updates, state, SoapState, init_fn, ("stats", "bases", "mu", "nu"))
        leaves, treedef = jax.tree_util.tree_flatten(updates)
        plans = plans_of(leaves)
        finite = C.tree_all_finite(leaves)
        t = state.count + 1
        coef = C.decay_coefficient(sb)
        gs = [jnp.where(finite, g, 0).astype(C.compute_dtype(g.dtype)) for g in leaves]
        xbs: list[Any] = [to_blocks(g, p) if p.kind == "block" else None for g, p in zip(gs, plans)]
        stats = tuple(
            tuple(sb * s + coef * mode_gram(xbs[li], m) for m, s in enumerate(state.stats[li]))
            if p.kind == "block"
            else ()
            for li, p in enumerate(plans)
        )
        do_refresh = finite & ((t - 1) % every == 0)
        zero = jnp.zeros((), jnp.int32)
        bases, failed = jax.lax.cond(
            do_refresh, lambda s, b: refresh(s, b, plans), lambda s, b: (b, zero), stats, state.bases
        )
        nonfinite_stats = ~C.tree_all_finite(jax.tree_util.tree_leaves(stats))
        # Step 1 only builds the statistics and the first eigenbasis (as reference SOAP does): applying the basis
        # of G_1 to G_1 itself would give a direction whose round-off entries Adam normalises to full size.
        first = t == 1
        ta = t - 1  # number of Adam steps so far, including this one (from step 2 on)
        outs, mus, nus = [], [], []
        for li, (g, plan) in enumerate(zip(gs, plans)):
            taf = jnp.maximum(ta, 1).astype(g.dtype)  # bias corrections in the parameters' precision
            bc1, bc2 = 1.0 - beta1**taf, 1.0 - beta2**taf
            mu = jnp.where(first, state.mu[li], beta1 * state.mu[li] + (1.0 - beta1) * g)
            mus.append(mu)
            if plan.kind != "block":
                nu = jnp.where(first, state.nu[li], beta2 * state.nu[li] + (1.0 - beta2) * g * g)
                nus.append(nu)
                outs.append(jnp.where(first, 0.0, (mu / bc1) / (jnp.sqrt(nu / bc2) + epsilon)))
                continue
            gr, mr = xbs[li], to_blocks(mu, plan)
            for m, q in enumerate(bases[li]):
                gr = mode_product(gr, q, m, transpose=True)
                mr = mode_product(mr, q, m, transpose=True)
            nu = jnp.where(first, state.nu[li], beta2 * state.nu[li] + (1.0 - beta2) * gr * gr)
            nus.append(nu)
            n = (mr / bc1) / (jnp.sqrt(nu / bc2) + epsilon)
            for m, q in enumerate(bases[li]):
                n = mode_product(n, q, m)
            outs.append(jnp.where(first, 0.0, from_blocks(n, plan)))
        keep = lambda n, o: jnp.where(finite, n, o)
        new_state = SoapState(
            count=state.count + finite.astype(jnp.int32),
            skipped=state.skipped + (~finite).astype(jnp.int32),
            root_fallbacks=state.root_fallbacks + jnp.where(finite, failed, 0),
            nonfinite_statistics=state.nonfinite_statistics + (finite & nonfinite_stats).astype(jnp.int32),
            stats=jax.tree_util.tree_map(keep, stats, state.stats),
            bases=jax.tree_util.tree_map(keep, bases, state.bases),
            mu=jax.tree_util.tree_map(keep, tuple(mus), state.mu),
            nu=jax.tree_util.tree_map(keep, tuple(nus), state.nu),
        )
        outs = [jnp.where(finite, u, 0).astype(g.dtype) for u, g in zip(outs, leaves)]
        return jax.tree_util.tree_unflatten(treedef, outs), new_state

    return optax.GradientTransformation(init_fn, update_fn)


def soap(
    learning_rate: optax.ScalarOrSchedule,
    block_size: int | None = 128,
    beta1: float = 0.95,
    beta2: float = 0.95,
    shampoo_beta2: float | None = None,
    epsilon: float = 1e-8,
    precondition_every: int = 10,
    weight_decay: float = 0.0,
    weight_decay_mask: Any = None,
    merge_small_dims: bool = True,
    max_preconditioner_dim: int | None = None,
    mesh: Mesh | None = None,
    mesh_axis: str | None = None,
) -> optax.GradientTransformation:
    """SOAP optimizer: :func:`scale_by_soap`, decoupled weight decay, then ``-learning_rate`` scaling.

    The defaults are the SOAP paper's (``beta1 = beta2 = 0.95``, statistics decay ``beta2``, refresh every 10 steps).
    ``soap(lr, beta1=0.9)`` is the package's recommended optimizer: in ``benchmarks/shampoo_peers.py`` it ends within
    2% of the best of AdamW, Muon, PSGD Kron and distributed_shampoo (or better) on 10 of 11 tasks at equal steps; it
    misses linear least squares, where only a long second-moment memory (``beta2=0.999``: the step then shrinks with
    the gradient) converges as accumulated Shampoo does, at a cost on fast-moving problems.
    """
    C.positive_float("weight_decay", weight_decay, allow_zero=True)
    if not callable(learning_rate):
        C.positive_float("learning_rate", learning_rate, allow_zero=True)
    parts = [
        scale_by_soap(
            block_size=block_size,
            beta1=beta1,
            beta2=beta2,
            shampoo_beta2=shampoo_beta2,
            epsilon=epsilon,
            precondition_every=precondition_every,
            merge_small_dims=merge_small_dims,
            max_preconditioner_dim=max_preconditioner_dim,
            mesh=mesh,
            mesh_axis=mesh_axis,
        )
    ]
    if not C.is_static_zero(weight_decay):
        parts.append(optax.add_decayed_weights(weight_decay, weight_decay_mask))
    parts.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*parts)
