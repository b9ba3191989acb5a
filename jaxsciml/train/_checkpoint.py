"""Orbax-backed checkpoints of ``(model, opt_state, step, key, history)`` (private)."""

from __future__ import annotations

import os
import pathlib
import warnings
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jaxtyping import PyTree

from ._checks import check_count
from ._step import all_finite

# orbax writes this file as the last act of finalising a step (before the atomic rename on local filesystems, and as
# the commit marker on object stores). We additionally require it, so a step directory that was created but never
# finalised (a crash between mkdir and commit, a copy interrupted half-way) is never offered for restore.
_COMMIT_FILE = "commit_success.txt"
_FORMAT_VERSION = 1


def _leaf_spec(tree: PyTree) -> tuple[list[Any], Any, list[dict[str, Any]]]:
    """Flatten the array leaves of ``tree``: ``(leaves, treedef, spec)`` with ``spec[i] = {path, shape, dtype}``."""
    arrays, _ = eqx.partition(tree, eqx.is_array)
    with_path, treedef = jax.tree_util.tree_flatten_with_path(arrays)
    leaves = [leaf for _, leaf in with_path]
    spec = [
        {
            "path": jax.tree_util.keystr(path),
            "shape": [int(d) for d in leaf.shape],
            "dtype": str(leaf.dtype),
        }
        for path, leaf in with_path
    ]
    return leaves, treedef, spec


def _to_json(value: Any) -> Any:
    """History values -> JSON-able Python scalars (floats may be NaN/inf; orbax's JSON handler keeps them)."""
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value)
    if isinstance(value, jax.Array | np.ndarray) and np.size(value) == 1:
        return _to_json(np.asarray(value).item())
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"`history` values must be numbers, strings or lists/dicts of them, got {type(value).__name__}")


def _target(leaf: Any) -> Any:
    """Orbax restore target for a template leaf.

    A committed `jax.Array` (explicitly placed, e.g. replicated over a mesh) is restored directly with its sharding.
    Uncommitted arrays (the default for freshly created arrays) and NumPy arrays are read into host memory and
    converted back by `_from_host`, so the result is uncommitted too and mixes freely with other uncommitted arrays
    under `jit` (a committed single-device array next to mesh-sharded ones would be rejected).
    """
    if isinstance(leaf, jax.Array) and leaf.committed:
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
    return np.empty(leaf.shape, leaf.dtype)


def _from_host(like: Any, restored: Any) -> Any:
    if isinstance(like, jax.Array) and not like.committed:
        return jnp.asarray(restored)
    if isinstance(like, np.ndarray):
        return np.asarray(restored)
    return restored


def _compare(name: str, saved: list[dict[str, Any]], like: list[dict[str, Any]], step: int) -> None:
    """Raise a ValueError naming the first leaf where the checkpoint and the template disagree."""
    where = f"checkpoint at step {step} does not match `{name}`"
    saved_paths = [s["path"] for s in saved]
    like_paths = [s["path"] for s in like]
    if saved_paths != like_paths:
        only_saved = [p for p in saved_paths if p not in like_paths]
        only_like = [p for p in like_paths if p not in saved_paths]
        detail = []
        if only_saved:
            detail.append(f"leaves only in the checkpoint: {only_saved[:5]}")
        if only_like:
            detail.append(f"leaves only in `{name}`: {only_like[:5]}")
        if not detail:
            detail.append("same leaves in a different order")
        raise ValueError(
            f"{where}: different tree structure ({len(saved_paths)} array leaves saved, "
            f"{len(like_paths)} in `{name}`); " + "; ".join(detail)
        )
    for s, t in zip(saved, like):
        if s["shape"] != t["shape"] or s["dtype"] != t["dtype"]:
            raise ValueError(
                f"{where}: leaf `{s['path']}` has shape {tuple(s['shape'])} dtype {s['dtype']} in the "
                f"checkpoint but expected shape {tuple(t['shape'])} dtype {t['dtype']} from `{name}`"
            )


class Checkpointer:
    """Save and restore training state with orbax's `CheckpointManager`.

    A checkpoint holds `(model, opt_state, step, key, history)`:

    - `model` (any pytree, typically an `eqx.Module`) and `opt_state` (an optax state) are split with
      `eqx.partition(tree, eqx.is_array)`; only the arrays are written (as an orbax `StandardSave` item). The static
      part (activation functions, layer sizes, ...) is *not* saved: [`restore`][] takes a template (`like_model`,
      `like_opt_state`) of the same structure, e.g. a freshly initialised model, and fills in its arrays.
    - `key`: a typed PRNG key (`jax.random.key`) is saved as its `key_data` plus implementation name and wrapped back
      on restore; a raw `uint32` key (`jax.random.PRNGKey`) is saved as is; `None` is allowed.
    - `step` (the number of completed optimiser steps) labels the checkpoint; `history` (a dict of lists of numbers)
      is saved as JSON together with the leaf paths, shapes and dtypes used to validate a restore.

    Writes are atomic: orbax writes into `<step>.orbax-checkpoint-tmp-*` and renames the directory only after
    every file (and the `commit_success.txt` marker) is written. Steps whose directory is temporary or lacks the
    commit marker are ignored by [`all_steps`][], [`latest_step`][] and [`restore`][]; a save interrupted midway
    therefore never restores as valid, and the previous checkpoints are untouched.

    Usage:

    ```python
    with Checkpointer("ckpt", max_to_keep=3) as ckpt:
        ckpt.save(step, model, opt_state, key, history)
        model, opt_state, step, key, history = ckpt.restore(model_template, opt_state_template)
    ```

    **Arguments:**

    - `directory`: the checkpoint directory (created if missing). An existing *file* at that path is a ValueError.
    - `max_to_keep`: keep only the newest `max_to_keep` checkpoints (`None` keeps all).
    - `async_save`: let `save(..., wait=False)` return while orbax writes in a background thread.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_to_keep: int | None = 3,
        async_save: bool = True,
    ):
        if not isinstance(directory, str | os.PathLike):
            raise TypeError(f"`directory` must be a str or os.PathLike, got {type(directory).__name__}")
        path = pathlib.Path(directory).expanduser().absolute()
        if path.exists() and not path.is_dir():
            raise ValueError(f"`directory` must be a directory for checkpoints, but {str(path)!r} is an existing file")
        if max_to_keep is not None:
            max_to_keep = check_count(max_to_keep, "max_to_keep", minimum=1)
        self._directory = path
        self._max_to_keep = max_to_keep
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            enable_async_checkpointing=bool(async_save),
        )
        self._manager = ocp.CheckpointManager(path, options=options)
        self._closed = False

    # ------------------------------------------------------------------ queries
    @property
    def directory(self) -> pathlib.Path:
        return self._directory

    def _is_committed(self, step: int) -> bool:
        return (self._directory / str(step) / _COMMIT_FILE).is_file()

    def all_steps(self) -> list[int]:
        """Sorted steps of the finalised checkpoints in `directory`."""
        self._manager.reload()
        return sorted(int(s) for s in self._manager.all_steps() if self._is_committed(int(s)))

    def latest_step(self) -> int | None:
        """The newest finalised step, or `None` if there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    # ------------------------------------------------------------------ save
    def save(
        self,
        step: int,
        model: PyTree,
        opt_state: PyTree,
        key: Any = None,
        history: dict[str, list[Any]] | None = None,
        *,
        wait: bool = True,
        check_finite: bool = True,
    ) -> None:
        """Write a checkpoint labelled `step`.

        With `check_finite` (default) a model or optimiser state containing NaN/inf is refused with a
        `FloatingPointError` *before* anything is written. With `wait=False` (and `async_save=True`) this returns once
        the arrays are copied to host memory and the files are written in the background; call [`wait`][] (also
        done by [`close`][]) to block until they are committed.
        """
        self._check_open()
        step = check_count(step, "step", minimum=0)
        if check_finite and not bool(all_finite((model, opt_state))):
            raise FloatingPointError(
                f"refusing to checkpoint step {step}: the model or optimizer state contains NaN/inf"
            )
        self.wait()
        self._manager.reload()
        if step in self._manager.all_steps():
            if self._is_committed(step):
                raise ValueError(f"`step` {step} is already checkpointed in {str(self._directory)!r}")
            # a step directory without the commit marker is a leftover of an interrupted write: replace it.
            warnings.warn(
                f"replacing the unfinalised checkpoint directory of step {step} in {str(self._directory)!r}",
                RuntimeWarning,
                stacklevel=2,
            )
            self._manager.delete(step)
        m_leaves, _, m_spec = _leaf_spec(model)
        o_leaves, _, o_spec = _leaf_spec(opt_state)
        state: dict[str, Any] = {
            "model": {f"{i:06d}": jnp.asarray(x) for i, x in enumerate(m_leaves)},
            "opt_state": {f"{i:06d}": jnp.asarray(x) for i, x in enumerate(o_leaves)},
        }
        key_meta: dict[str, Any] | None
        if key is None:
            key_meta = None
        elif isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
            state["key"] = jax.random.key_data(key)
            key_meta = {"typed": True, "impl": str(jax.random.key_impl(key))}
        elif isinstance(key, jax.Array | np.ndarray):
            state["key"] = jnp.asarray(key)
            key_meta = {"typed": False}
        else:
            raise TypeError(f"`key` must be a JAX PRNG key or None, got {type(key).__name__}")
        if key_meta is not None:
            key_meta["shape"] = [int(d) for d in state["key"].shape]
            key_meta["dtype"] = str(state["key"].dtype)
        meta = {
            "format_version": _FORMAT_VERSION,
            "step": step,
            "model_spec": m_spec,
            "opt_state_spec": o_spec,
            "key": key_meta,
            "history": _to_json(dict(history) if history is not None else {}),
        }
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=True,
        )
        if wait:
            self.wait()

    def wait(self) -> None:
        """Block until pending asynchronous saves are committed (re-raises their errors)."""
        self._manager.wait_until_finished()

    # ------------------------------------------------------------------ restore
    def restore(
        self,
        like_model: PyTree,
        like_opt_state: PyTree,
        step: int | None = None,
    ) -> tuple[PyTree, PyTree, int, Any, dict[str, list[Any]]]:
        """Restore `(model, opt_state, step, key, history)` from checkpoint `step` (default: the latest).

        `like_model` / `like_opt_state` are templates with the same structure, shapes and dtypes as what was saved
        (their array values are ignored). Placement follows the template: a leaf that was explicitly placed
        (committed, e.g. by `replicate(tree, mesh)`) is restored with its sharding; other leaves come back as
        uncommitted arrays on the default device (NumPy leaves as NumPy arrays). A mismatch raises a ValueError
        naming the first differing leaf path with the saved and expected shape/dtype.
        Raises FileNotFoundError if there is no finalised checkpoint.
        """
        self._check_open()
        self.wait()
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise FileNotFoundError(f"no finalised checkpoint in {str(self._directory)!r}")
            step = steps[-1]
        else:
            step = check_count(step, "step", minimum=0)
            if step not in steps:
                raise ValueError(
                    f"`step` {step} has no finalised checkpoint in {str(self._directory)!r}; available steps: {steps}"
                )
        meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if meta.get("format_version") != _FORMAT_VERSION:
            raise ValueError(
                f"checkpoint at step {step} in {str(self._directory)!r} was not written by "
                "jaxsciml.train.Checkpointer (or by an incompatible version)"
            )
        m_leaves, m_def, m_spec = _leaf_spec(like_model)
        o_leaves, o_def, o_spec = _leaf_spec(like_opt_state)
        _compare("like_model", meta["model_spec"], m_spec, step)
        _compare("like_opt_state", meta["opt_state_spec"], o_spec, step)
        key_meta = meta.get("key")
        target: dict[str, Any] = {
            "model": {f"{i:06d}": _target(x) for i, x in enumerate(m_leaves)},
            "opt_state": {f"{i:06d}": _target(x) for i, x in enumerate(o_leaves)},
        }
        if key_meta is not None:
            # the key data's shape/dtype is fixed by the PRNG implementation; take it from what was saved.
            target["key"] = np.empty(tuple(key_meta["shape"]), np.dtype(key_meta["dtype"]))
        state = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]

        def rebuild(like, leaves, treedef, restored):
            new = [_from_host(x, restored[f"{i:06d}"]) for i, x in enumerate(leaves)]
            arrays = jax.tree_util.tree_unflatten(treedef, new)
            _, static = eqx.partition(like, eqx.is_array)
            return eqx.combine(arrays, static)

        model = rebuild(like_model, m_leaves, m_def, state["model"])
        opt_state = rebuild(like_opt_state, o_leaves, o_def, state["opt_state"])
        key = None
        if key_meta is not None:
            data = jnp.asarray(state["key"])
            key = jax.random.wrap_key_data(data, impl=key_meta["impl"]) if key_meta["typed"] else data
        history = {k: list(v) for k, v in meta.get("history", {}).items()}
        return model, opt_state, int(meta["step"]), key, history

    # ------------------------------------------------------------------ lifecycle
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this Checkpointer is closed")

    def close(self) -> None:
        """Wait for pending saves and release orbax's resources. Idempotent."""
        if not self._closed:
            try:
                self._manager.wait_until_finished()
            finally:
                self._manager.close()
                self._closed = True

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Checkpointer({str(self._directory)!r}, max_to_keep={self._max_to_keep})"
