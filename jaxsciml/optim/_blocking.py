"""Blocking of parameter tensors for Kronecker-factored preconditioners.

A parameter of shape ``shape`` is mapped to a stack of equally-shaped blocks ``(num_blocks, b_1, ..., b_k)``:

1. dimensions of size one are dropped;
2. consecutive small dimensions are merged while their product stays ``<= merge_limit`` (so a ``(3, 3, 16, 32)`` conv
   kernel with ``merge_limit = 128`` becomes ``(9, 16, 32)``);
3. every dimension ``d > block_size`` is zero-padded to a multiple of ``block_size`` and cut into blocks of that size;
   smaller dimensions are kept whole.

Zero padding is exact for Shampoo: a padded block has statistics ``[[A, 0], [0, 0]]`` whose damped inverse root is
block diagonal, so the padded rows never mix with the real ones and the cropped update equals the update of the ragged
block (with the same largest eigenvalue, hence the same relative damping).

Scalars and vectors (original rank ``<= 1``), tensors whose every dimension is one, and tensors with a block dimension
above ``max_preconditioner_dim`` fall back to a diagonal preconditioner (``kind == "diag"``).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array


@dataclasses.dataclass(frozen=True)
class BlockPlan:
    """Static (trace-time) description of how one parameter is blocked.

    Attributes:
        shape: original parameter shape.
        kind: ``"block"`` (Kronecker-factored) or ``"diag"`` (diagonal fallback).
        merged: shape after dropping unit dimensions and merging small ones.
        padded: ``merged`` with every blocked dimension rounded up to a multiple of its block size.
        block: the block shape ``(b_1, ..., b_k)``.
        counts: number of blocks along each merged dimension.
    """

    shape: tuple[int, ...]
    kind: str
    merged: tuple[int, ...] = ()
    padded: tuple[int, ...] = ()
    block: tuple[int, ...] = ()
    counts: tuple[int, ...] = ()

    @property
    def num_blocks(self) -> int:
        return math.prod(self.counts) if self.kind == "block" else 0

    @property
    def order(self) -> int:
        """Number of preconditioned modes ``k`` of each block."""
        return len(self.block)


def merge_dims(shape: tuple[int, ...], limit: int | None) -> tuple[int, ...]:
    """Drop unit dimensions and greedily merge consecutive dimensions while the product is ``<= limit``."""
    dims = [d for d in shape if d != 1]
    if limit is None or not dims:
        return tuple(dims)
    out = [dims[0]]
    for d in dims[1:]:
        if out[-1] * d <= limit:
            out[-1] *= d
        else:
            out.append(d)
    return tuple(out)


def make_plan(
    shape: tuple[int, ...],
    block_size: int | None,
    merge_small_dims: bool = True,
    max_preconditioner_dim: int | None = None,
) -> BlockPlan:
    """Blocking plan for a parameter of the given ``shape`` (see the module docstring for the rules)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) <= 1:
        return BlockPlan(shape, "diag")
    limit = block_size if block_size is not None else max_preconditioner_dim
    merged = merge_dims(shape, limit if merge_small_dims else None)
    if not merged:
        return BlockPlan(shape, "diag")
    block, counts, padded = [], [], []
    for d in merged:
        if block_size is not None and d > block_size:
            n = -(-d // block_size)
            block.append(block_size)
            counts.append(n)
            padded.append(n * block_size)
        else:
            block.append(d)
            counts.append(1)
            padded.append(d)
    if max_preconditioner_dim is not None and max(block) > max_preconditioner_dim:
        return BlockPlan(shape, "diag")
    return BlockPlan(shape, "block", tuple(merged), tuple(padded), tuple(block), tuple(counts))


def to_blocks(x: Array, plan: BlockPlan) -> Array:
    """``x`` of shape ``plan.shape`` -> stacked blocks of shape ``(num_blocks, *plan.block)``."""
    x = x.reshape(plan.merged)
    pads = [(0, p - m) for p, m in zip(plan.padded, plan.merged)]
    if any(p[1] for p in pads):
        x = jnp.pad(x, pads)
    k = len(plan.block)
    inter = []
    for n, b in zip(plan.counts, plan.block):
        inter += [n, b]
    x = x.reshape(inter)
    perm = [2 * i for i in range(k)] + [2 * i + 1 for i in range(k)]
    return x.transpose(perm).reshape((plan.num_blocks, *plan.block))


def from_blocks(xb: Array, plan: BlockPlan) -> Array:
    """Inverse of :func:`to_blocks` (crops the zero padding)."""
    k = len(plan.block)
    x = xb.reshape((*plan.counts, *plan.block))
    perm = []
    for i in range(k):
        perm += [i, k + i]
    x = x.transpose(perm).reshape(plan.padded)
    if plan.padded != plan.merged:
        x = x[tuple(slice(0, m) for m in plan.merged)]
    return x.reshape(plan.shape)


def mode_gram(xb: Array, mode: int) -> Array:
    """Per-block mode-``mode`` Gram matrix ``X_(i) X_(i)^T``: ``(nb, *block) -> (nb, b_i, b_i)``."""
    nb, d = xb.shape[0], xb.shape[1 + mode]
    xi = jnp.moveaxis(xb, 1 + mode, 1).reshape(nb, d, -1)
    return xi @ jnp.swapaxes(xi, -1, -2)


def mode_cross(xb: Array, yb: Array, mode: int) -> Array:
    """Per-block ``X_(i) Y_(i)^T`` for two equally-shaped block stacks."""
    nb, d = xb.shape[0], xb.shape[1 + mode]
    xi = jnp.moveaxis(xb, 1 + mode, 1).reshape(nb, d, -1)
    yi = jnp.moveaxis(yb, 1 + mode, 1).reshape(nb, d, -1)
    return xi @ jnp.swapaxes(yi, -1, -2)


def mode_product(xb: Array, mat: Array, mode: int, transpose: bool = False) -> Array:
    """Per-block mode product ``X ×_i M`` (``Y[.., a, ..] = sum_j M[a, j] X[.., j, ..]``); ``M^T`` if ``transpose``."""
    xm = jnp.moveaxis(xb, 1 + mode, -1)
    shp = xm.shape
    xm = xm.reshape(shp[0], -1, shp[-1])
    m = mat if transpose else jnp.swapaxes(mat, -1, -2)
    y = (xm @ m).reshape(shp)
    return jnp.moveaxis(y, -1, 1 + mode)


def block_norms(xb: Array) -> Array:
    """Frobenius norm of every block: ``(nb, ...) -> (nb,)``."""
    return jnp.sqrt(jnp.sum(jnp.square(xb), axis=tuple(range(1, xb.ndim))))


def broadcast_blocks(v: Array, xb: Array) -> Array:
    """Reshape a per-block vector ``(nb,)`` to broadcast against ``(nb, ...)``."""
    return v.reshape((v.shape[0],) + (1,) * (xb.ndim - 1))


def leaf_plans(tree, block_size, merge_small_dims, max_preconditioner_dim) -> list[BlockPlan]:
    """Plans for the flattened leaves of ``tree`` (in ``jax.tree_util.tree_leaves`` order)."""
    return [
        make_plan(jnp.shape(x), block_size, merge_small_dims, max_preconditioner_dim)
        for x in jax.tree_util.tree_leaves(tree)
    ]


def valid_block_dims(plan: BlockPlan) -> tuple[np.ndarray, ...]:
    """Per mode, the number of real (not zero-padded) indices of every block: ``k`` int arrays of shape
    ``(num_blocks,)``, in the block order of :func:`to_blocks` (row-major over ``plan.counts``)."""
    coords = np.unravel_index(np.arange(plan.num_blocks), plan.counts)
    return tuple(
        np.minimum(b, m - c * b).astype(np.int32) for b, m, c in zip(plan.block, plan.merged, coords, strict=True)
    )
