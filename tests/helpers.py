"""Shared test helpers.

``assert_transformable(fn, *args)`` checks that ``fn`` gives the same result eagerly and under ``jax.jit``, that
``jax.vmap`` over a stacked batch of its arguments equals a Python loop, and that ``jax.grad`` of a scalar reduction is
finite and matches central finite differences along a random direction.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def tree_allclose(a: Any, b: Any, rtol: float = 1e-6, atol: float = 1e-6) -> bool:
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    if ta != tb:
        return False
    return all(np.allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol) for x, y in zip(la, lb))


def assert_tree_allclose(a: Any, b: Any, rtol: float = 1e-6, atol: float = 1e-6) -> None:
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb, f"tree structures differ:\n{ta}\n{tb}"
    for i, (x, y) in enumerate(zip(la, lb)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol, err_msg=f"leaf {i}")


def _scalarize(out: Any) -> jax.Array:
    leaves = [jnp.sum(jnp.real(x)) for x in jax.tree_util.tree_leaves(out) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return sum(leaves, jnp.zeros(()))


def assert_transformable(
    fn: Callable[..., Any],
    *args: Any,
    batch: int = 3,
    rtol: float = 1e-5,
    atol: float = 1e-6,
    check_grad: bool = True,
    fd_eps: float = 1e-6,
    fd_rtol: float = 1e-4,
    key: jax.Array | None = None,
) -> None:
    """Assert ``fn(*args)`` is jit-, vmap- and grad-compatible.

    - ``jit``: ``jax.jit(fn)(*args)`` equals ``fn(*args)``;
    - ``vmap``: with every array argument stacked ``batch`` times with small perturbations, ``jax.vmap(fn)`` equals the
      loop of single calls;
    - ``grad`` (if ``check_grad``, w.r.t. the first argument's inexact leaves): finite, and the directional derivative
      along a random direction matches a central finite difference (use float64 via the ``x64`` fixture for tight
      ``fd_rtol``).
    """
    key = jax.random.key(1234) if key is None else key
    eager = fn(*args)
    jitted = jax.jit(fn)(*args)
    assert_tree_allclose(eager, jitted, rtol=rtol, atol=atol)

    # vmap: stack perturbed copies of all inexact array leaves of all arguments.
    keys = iter(jax.random.split(key, 10_000))

    def stack(x):
        if isinstance(x, jax.Array | np.ndarray) and jnp.issubdtype(x.dtype, jnp.inexact):
            noise = 1e-2 * jax.random.normal(next(keys), (batch, *x.shape), dtype=x.dtype)
            return x[None] + noise * (1 + jnp.abs(x[None]))
        if isinstance(x, jax.Array | np.ndarray):
            return jnp.broadcast_to(x, (batch, *x.shape))
        return x

    stacked = jax.tree_util.tree_map(stack, args)
    in_axes = jax.tree_util.tree_map(lambda x: 0 if isinstance(x, jax.Array | np.ndarray) else None, args)
    vm = jax.vmap(fn, in_axes=in_axes)(*stacked)
    for i in range(batch):
        pick = lambda x, i=i: x[i] if isinstance(x, jax.Array) else x
        single = fn(*jax.tree_util.tree_map(pick, stacked))
        assert_tree_allclose(jax.tree_util.tree_map(pick, vm), single, rtol=rtol, atol=atol)

    if not check_grad:
        return
    first, rest = args[0], args[1:]

    def scalar(p):
        return _scalarize(fn(p, *rest))

    g = jax.grad(scalar)(first)
    for leaf in jax.tree_util.tree_leaves(g):
        assert bool(jnp.all(jnp.isfinite(leaf))), "non-finite gradient"
    direction = jax.tree_util.tree_map(lambda x: jax.random.normal(next(keys), x.shape, x.dtype), first)
    dd = sum(jnp.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(direction)))
    plus = jax.tree_util.tree_map(lambda x, d: x + fd_eps * d, first, direction)
    minus = jax.tree_util.tree_map(lambda x, d: x - fd_eps * d, first, direction)
    fd = (scalar(plus) - scalar(minus)) / (2 * fd_eps)
    np.testing.assert_allclose(float(dd), float(fd), rtol=fd_rtol, atol=fd_rtol)
