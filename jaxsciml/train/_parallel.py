"""Data parallelism: ``jax.sharding`` (GSPMD) and ``jax.pmap`` paths (private).

Both paths compute the gradient of the loss over the *whole* global batch, which equals single-device training on
that batch provided the loss is a **mean over the batch** (for a mean, the global gradient is the mean of the
per-shard gradients of equal-sized shards; for a sum it would be their sum instead).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import PyTree

from ._checks import check_loss_fn, check_nonfinite, check_optimizer
from ._step import NonFiniteStep, TrainStep, step_body

TreeT = TypeVar("TreeT")  # a PyTree type: these functions return the same structure and leaf types


def data_mesh(devices: Sequence[jax.Device] | None = None, axis: str = "data") -> Mesh:  # pyright: ignore[reportInvalidTypeForm]  # no jaxlib stub
    """A one-dimensional `Mesh` over `devices` (default: all of `jax.devices()`, i.e. every host's devices in a
    multi-host run after `jax.distributed.initialize()`) with the single axis name `axis`."""
    if devices is None:
        devices = jax.devices()
    devices = list(devices)
    if not devices:
        raise ValueError("`devices` is empty")
    if not isinstance(axis, str):
        raise TypeError(f"`axis` must be a str, got {type(axis).__name__}")
    return Mesh(np.asarray(devices, dtype=object), (axis,))


def _axis_size(mesh: Mesh, axis: str) -> int:
    if not isinstance(mesh, Mesh):
        raise TypeError(f"`mesh` must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    if axis not in mesh.axis_names:
        raise ValueError(f"`axis` {axis!r} is not an axis of `mesh` (axes {mesh.axis_names})")
    return int(mesh.shape[axis])


def _check_leading(batch: PyTree, n: int, what: str) -> None:
    for path, leaf in jax.tree_util.tree_flatten_with_path(batch)[0]:
        shape = np.shape(leaf)
        if len(shape) == 0 or shape[0] % n != 0:
            raise ValueError(
                f"`batch` leaf `{jax.tree_util.keystr(path)}` has shape {tuple(shape)}: its leading (batch) "
                f"dimension must be divisible by the {n} {what}"
            )


def shard_batch(batch: TreeT, mesh: Mesh, axis: str = "data") -> TreeT:
    """Place `batch` on `mesh`, split along the leading dimension of every leaf over mesh axis `axis`
    (`NamedSharding(mesh, P(axis))`). Every leaf needs a leading dimension divisible by the number of devices on
    `axis`.

    Single process: `batch` is the global batch. Multi-process (after `jax.distributed.initialize()`): `batch` is
    this process's *local* share, and the global array is assembled with
    `jax.make_array_from_process_local_data` (the leading dimension must then be divisible by the number of local
    devices on `axis`). Process `p`'s share becomes the rows held by its devices, in the order of `mesh.devices`
    (with `data_mesh()`: process 0's rows first); tests/train/test_multiprocess.py runs this with 2 processes."""
    n = _axis_size(mesh, axis)
    sharding = NamedSharding(mesh, PartitionSpec(axis))
    if jax.process_count() > 1:  # pragma: no cover - runs in the subprocesses of test_multiprocess.py
        n_local = len([d for d in mesh.devices.flat if d.process_index == jax.process_index()])
        _check_leading(batch, n_local, f"local devices on mesh axis {axis!r}")
        return jax.tree_util.tree_map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
    _check_leading(batch, n, f"devices on mesh axis {axis!r}")
    return jax.device_put(batch, sharding)


def replicate(tree: TreeT, mesh: Mesh) -> TreeT:
    """Copy every array leaf of `tree` (e.g. a model or optimiser state) to all devices of `mesh` (fully replicated
    `NamedSharding(mesh, P())`); non-array leaves are left as they are."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"`mesh` must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    dyn, static = eqx.partition(tree, eqx.is_array)
    dyn = jax.device_put(dyn, NamedSharding(mesh, PartitionSpec()))
    return eqx.combine(dyn, static)


def make_sharded_train_step(
    loss_fn: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    *,
    axis: str = "data",
    has_aux: bool = False,
    nonfinite: NonFiniteStep = "skip",
) -> TrainStep:
    """[`make_train_step`][jaxsciml.train.make_train_step] for data parallelism with `jax.sharding`.

    The same pure step, `eqx.filter_jit`-compiled with sharding constraints: the batch is sharded over `axis`
    (leading dimension), the model and optimiser state (and the outputs) are replicated. XLA's GSPMD partitioner
    then computes per-device gradients and inserts the all-reduce, so the update uses the gradient of the loss over
    the whole global batch -- identical to single-device training when the loss is a mean over the batch.

    Feed it `replicate(model, mesh)`, `replicate(opt_state, mesh)` and `shard_batch(batch, mesh)` (inputs placed
    differently are resharded, at the cost of a transfer). It can be passed to `fit(..., train_step=...)`.
    """
    check_loss_fn(loss_fn)
    check_optimizer(optimizer)
    check_nonfinite(nonfinite)
    _axis_size(mesh, axis)
    has_aux = bool(has_aux)
    batch_sharding = NamedSharding(mesh, PartitionSpec(axis))
    replicated = NamedSharding(mesh, PartitionSpec())

    @eqx.filter_jit
    def sharded_train_step(model, opt_state, batch):
        batch = eqx.filter_shard(batch, batch_sharding)
        model = eqx.filter_shard(model, replicated)
        opt_state = eqx.filter_shard(opt_state, replicated)
        out = step_body(loss_fn, optimizer, has_aux, nonfinite, model, opt_state, batch)
        return eqx.filter_shard(out, replicated)

    return sharded_train_step


def make_pmap_train_step(
    loss_fn: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    *,
    axis_name: str = "data",
    has_aux: bool = False,
    nonfinite: NonFiniteStep = "skip",
    devices: Sequence[jax.Device] | None = None,  # pyright: ignore[reportInvalidTypeForm]  # no jaxlib stub
) -> TrainStep:
    """[`make_train_step`][jaxsciml.train.make_train_step] for data parallelism with `jax.pmap`
    (`eqx.filter_pmap`).

    Every input has a leading device axis: `model` and `opt_state` from [`pmap_replicate`][], the batch from
    [`split_for_pmap`][] (shape `(n_devices, batch / n_devices, ...)`). Each device computes the loss and gradient
    on its shard; `lax.pmean` over `axis_name` averages the gradients, the loss and the inexact leaves of `aux`, so
    every replica applies the same update (the NaN guard also sees the averaged values, hence agrees on all
    devices). With a loss that is a mean over the batch and equal shards this is the full-batch gradient.

    Returns `step(model, opt_state, batch) -> (model, opt_state, loss, aux, ok)`, all with the leading device axis
    (use [`pmap_unreplicate`][] to take one copy).
    """
    check_loss_fn(loss_fn)
    check_optimizer(optimizer)
    check_nonfinite(nonfinite)
    has_aux = bool(has_aux)

    def reduce(tree):
        return jax.lax.pmean(tree, axis_name)

    def body(model, opt_state, batch):
        return step_body(loss_fn, optimizer, has_aux, nonfinite, model, opt_state, batch, reduce)

    kwargs: dict[str, Any] = {} if devices is None else {"devices": list(devices)}
    return eqx.filter_pmap(body, axis_name=axis_name, **kwargs)


def pmap_replicate(tree: TreeT, devices: Sequence[jax.Device] | None = None) -> TreeT:  # pyright: ignore[reportInvalidTypeForm]  # no jaxlib stub
    """Stack `len(devices)` copies of every array leaf of `tree` along a new leading axis, one copy per device
    (default devices: `jax.local_devices()`), ready for a `pmap`-ed step. Non-array leaves are left as they are."""
    devices = list(jax.local_devices() if devices is None else devices)
    if not devices:
        raise ValueError("`devices` is empty")
    mesh = Mesh(np.asarray(devices, dtype=object), ("replica",))
    sharding = NamedSharding(mesh, PartitionSpec("replica"))
    n = len(devices)

    def rep(x):
        return jax.device_put(jnp.broadcast_to(x, (n, *np.shape(x))), sharding)

    dyn, static = eqx.partition(tree, eqx.is_array)
    return eqx.combine(jax.tree_util.tree_map(rep, dyn), static)


def pmap_unreplicate(tree: TreeT) -> TreeT:
    """Take the first replica (index 0 of the leading device axis) of every array leaf."""
    dyn, static = eqx.partition(tree, eqx.is_array)
    return eqx.combine(jax.tree_util.tree_map(lambda x: x[0], dyn), static)


def split_for_pmap(batch: TreeT, n: int) -> TreeT:
    """Reshape every leaf of `batch` from `(B, ...)` to `(n, B // n, ...)` for a `pmap` over `n` devices; `B` must
    be divisible by `n`."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"`n` must be a positive integer, got {n!r}")
    _check_leading(batch, int(n), "devices (`n`)")
    return jax.tree_util.tree_map(lambda x: x.reshape(int(n), x.shape[0] // int(n), *x.shape[1:]), batch)
