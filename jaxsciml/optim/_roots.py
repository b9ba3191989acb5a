"""Batched inverse matrix roots and the grouped / device-sharded map used to compute them.

All functions take stacks of symmetric positive semi-definite matrices ``(N, d, d)`` and work in the dtype of their
input (the optimizers pass float32, or float64 for float64 parameters).

Damping is *relative*: with ``lambda_max`` the largest eigenvalue of ``A``, the root is taken of
``A + epsilon * lambda_max * I``. A matrix whose ``lambda_max`` is zero or non-finite, or whose root comes out
non-finite, is a *failed* root: the previous root is kept (see :func:`safe_update`).

**No batched LAPACK on CPU.** jaxlib 0.10.0-0.10.2 split the batch of a CPU LAPACK call (``eigh``, ``qr``, ``svd``,
``cholesky``, ``lu``, triangular solves) into chunks scheduled on XLA's intra-op thread pool and *block* a pool thread
until they finish. XLA runs independent operations concurrently on that same pool, so two such calls in flight (one
per block shape in a root refresh, or one per device under ``shard_map``) can occupy every pool thread while waiting
for chunks that can then never run: a deadlock at 0% CPU (on a 2-core machine, any model with two block shapes).
A call on a single matrix never schedules chunks, so on CPU :func:`eigh_psd` decomposes a stack one matrix at a time
(``lax.map``); other platforms keep the batched call (chosen at trace time from ``jax.default_backend()`` or the
mesh's devices).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec
from jaxtyping import Array, Float


def _sym(a: Array) -> Array:
    return 0.5 * (a + jnp.swapaxes(a, -1, -2))


def _eigh_batched(a: Array) -> tuple[Array, Array]:
    w, q = jnp.linalg.eigh(a)
    return w, q


def stacked_eigh(
    a: Float[Array, "N d d"], platform: str | None = None
) -> tuple[Float[Array, "N d"], Float[Array, "N d d"]]:
    """``jnp.linalg.eigh`` of a stack of symmetric matrices, never as one batched LAPACK call on CPU.

    On CPU the matrices are decomposed one per call inside ``lax.map`` (see the module docstring: a batched CPU call
    can deadlock when another one runs concurrently); elsewhere one batched call. Same results either way.
    ``platform`` is the platform the computation will run on (default: ``jax.default_backend()``, read at trace time).
    """
    if a.ndim != 3:
        raise ValueError(f"`a` must be a stack of matrices (N, d, d), got shape {a.shape}.")
    platform = jax.default_backend() if platform is None else platform
    if platform != "cpu":
        return _eigh_batched(a)
    if a.shape[0] == 1:
        w, q = _eigh_batched(a[0])
        return w[None], q[None]
    return jax.lax.map(_eigh_batched, a)


def eigh_psd(
    a: Float[Array, "N d d"], platform: str | None = None
) -> tuple[Float[Array, "N d"], Float[Array, "N d d"]]:
    """Symmetric eigendecomposition with eigenvalues clipped at zero (ascending order); see :func:`stacked_eigh`."""
    w, q = stacked_eigh(_sym(a), platform)
    return jnp.maximum(w, 0.0), q


def root_from_eigh(
    w: Float[Array, "N d"], q: Float[Array, "N d d"], exponent: float, epsilon
) -> tuple[Float[Array, "N d d"], Array]:
    """``Q diag((w + eps * max(w)) ** -exponent) Q^T`` and a per-matrix success flag."""
    lmax = jnp.max(w, axis=-1)
    ok = jnp.isfinite(lmax) & (lmax > 0)
    damp = epsilon * jnp.where(ok, lmax, 1.0)
    inv = (w + damp[:, None]) ** (-exponent)
    root = (q * inv[:, None, :]) @ jnp.swapaxes(q, -1, -2)
    ok = ok & jnp.all(jnp.isfinite(root), axis=(-2, -1))
    return root, ok


def eigh_inverse_root(
    a: Float[Array, "N d d"], exponent: float, epsilon, platform: str | None = None
) -> tuple[Array, Array]:
    """Inverse root ``(A + eps lambda_max I)^(-exponent)`` by symmetric eigendecomposition."""
    w, q = eigh_psd(a, platform)
    return root_from_eigh(w, q, exponent, epsilon)


def max_eigenvalue(a: Float[Array, "N d d"], iters: int = 100) -> Float[Array, " N"]:
    """Largest eigenvalue of PSD matrices by power iteration (Rayleigh quotient; a lower bound that converges)."""
    d = a.shape[-1]
    v0 = jnp.ones((a.shape[0], d), a.dtype) + 0.01 * jnp.arange(d, dtype=a.dtype) / d
    v0 = v0 / jnp.linalg.norm(v0, axis=-1, keepdims=True)

    def body(_, v):
        w = jnp.einsum("nij,nj->ni", a, v)
        return w / jnp.maximum(jnp.linalg.norm(w, axis=-1, keepdims=True), jnp.finfo(a.dtype).tiny)

    v = jax.lax.fori_loop(0, iters, body, v0)
    return jnp.einsum("ni,nij,nj->n", v, a, v)


def newton_inverse_root(
    a: Float[Array, "N d d"], root: int, epsilon, max_iters: int = 100, tol: float | None = None
) -> tuple[Array, Array]:
    """Inverse ``root``-th root ``(A + eps lambda_max I)^(-1/root)`` by the coupled Newton iteration.

    With ``z = (1 + r) / (2 ||A||_F)``, start ``X_0 = z^(1/r) I``, ``M_0 = z A`` (eigenvalues in ``(0, (1+r)/2]``) and
    iterate ``T = ((r + 1) I - M) / r``, ``X <- X T``, ``M <- T^r M``; the invariant ``M = X^r A`` gives
    ``X -> A^(-1/r)`` as ``M -> I`` (Guo & Higham 2006; used by Anil et al. 2020). Iterates until
    ``max|M - I| < tol`` or ``max_iters``; ``lambda_max`` for the damping comes from power iteration.
    """
    n, d = a.shape[0], a.shape[-1]
    dtype = a.dtype
    if tol is None:
        tol = 1e-6 if dtype == jnp.float32 else 1e-12
    a = _sym(a)
    lmax = max_eigenvalue(a)
    ok0 = jnp.isfinite(lmax) & (lmax > 0)
    eye = jnp.eye(d, dtype=dtype)
    a = a + (epsilon * jnp.where(ok0, lmax, 1.0))[:, None, None] * eye
    fro = jnp.sqrt(jnp.sum(a * a, axis=(-2, -1)))
    z = (1.0 + root) / (2.0 * jnp.where(ok0, fro, 1.0))
    x0 = (z ** (1.0 / root))[:, None, None] * jnp.broadcast_to(eye, (n, d, d))
    m0 = z[:, None, None] * a

    def one(x, m):
        def cond(c):
            i, _, _, err = c
            return (i < max_iters) & (err > tol)

        def body(c):
            i, x, m, _ = c
            t = ((root + 1.0) * eye - m) / root
            x = x @ t
            m = jnp.linalg.matrix_power(t, root) @ m
            err = jnp.max(jnp.abs(m - eye))
            return i + 1, x, m, jnp.where(jnp.isfinite(err), err, 0.0)

        init = (jnp.zeros((), jnp.int32), x, m, jnp.max(jnp.abs(m - eye)))
        _, x, m, err = jax.lax.while_loop(cond, body, init)
        return x, err

    x, err = jax.vmap(one)(x0, m0)
    ok = ok0 & jnp.all(jnp.isfinite(x), axis=(-2, -1)) & (err < 0.1)
    return _sym(x), ok


def target_platform(mesh: Mesh | None) -> str:
    """Platform the root computations will run on: the mesh's devices, else ``jax.default_backend()``."""
    if mesh is not None:
        return mesh.devices.flat[0].platform
    return jax.default_backend()


def safe_update(new: Array, ok: Array, old: Array) -> Array:
    """Per-matrix fallback: keep ``old`` where the new root failed (``ok`` false)."""
    return jnp.where(ok.reshape(ok.shape + (1,) * (new.ndim - 1)), new, old)


def _sharded_call(fn: Callable, args: tuple[Array, ...], mesh: Mesh | None, axis: str | None) -> tuple:
    """Apply ``fn`` (batched over the leading axis) to ``args``, spreading the batch over ``mesh[axis]``.

    The batch is padded (by repeating its last element) to a multiple of the number of devices on ``axis``, each
    device computes its share via :func:`jax.shard_map`, and the padding is dropped again; the result is gathered
    wherever it is used next.
    """
    if mesh is None:
        return fn(*args)
    axis = axis if axis is not None else mesh.axis_names[0]
    ndev = mesh.shape[axis]
    n = args[0].shape[0]
    pad = (-n) % ndev
    if pad:
        args = tuple(jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]) for a in args)
    spec = PartitionSpec(axis)
    out = jax.shard_map(
        lambda *xs: fn(*xs),
        mesh=mesh,
        in_specs=tuple(spec for _ in args),
        out_specs=spec,
        check_vma=False,
    )(*args)
    return tuple(o[:n] for o in out)


def grouped_map(
    fn: Callable[..., tuple[Array, ...]],
    items: Sequence[tuple[Array, ...]],
    mesh: Mesh | None = None,
    axis: str | None = None,
) -> list[tuple[Array, ...]]:
    """Apply a batched ``fn`` to many stacks, batching stacks with equal trailing shapes into one call.

    ``items[i]`` is a tuple of arrays sharing a leading batch size ``N_i``. Items whose arrays have the same trailing
    shapes and dtypes are concatenated along the batch axis, ``fn`` runs once per group (sharded over ``mesh`` if
    given), and the results are split back; returns one tuple of outputs per item, in order.
    """
    groups: dict[tuple, list[int]] = {}
    for i, it in enumerate(items):
        key = tuple((a.shape[1:], str(a.dtype)) for a in it)
        groups.setdefault(key, []).append(i)
    out: list = [None] * len(items)
    for idxs in groups.values():
        sizes = [items[i][0].shape[0] for i in idxs]
        nargs = len(items[idxs[0]])
        if len(idxs) == 1:
            cat = items[idxs[0]]
        else:
            cat = tuple(jnp.concatenate([items[i][j] for i in idxs]) for j in range(nargs))
        res = _sharded_call(fn, tuple(cat), mesh, axis)
        splits = list(np.cumsum(sizes)[:-1])
        parts = [jnp.split(r, splits) if splits else [r] for r in res]
        for k, i in enumerate(idxs):
            out[i] = tuple(p[k] for p in parts)
    return out
