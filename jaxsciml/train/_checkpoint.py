"""Orbax-backed checkpoints of ``(model, opt_state, step, key, history)`` (private)."""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import pathlib
import re
import shutil
import tempfile
import warnings
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import PyTree

from ._checks import check_count

# orbax writes this file as the last act of finalising a step (before the atomic rename on local filesystems, and as
# the commit marker on object stores). We additionally require it, so a step directory that was created but never
# finalised (a crash between mkdir and commit, a copy interrupted half-way) is never offered for restore.
_COMMIT_FILE = "commit_success.txt"
# orbax's per-step metadata file; an interrupted deletion (`rmtree` of an old step killed midway) can remove it first.
_STEP_METADATA_FILE = "_CHECKPOINT_METADATA"
# Version 2 added the sha256 digest of every saved leaf; version 1 checkpoints (no digests) are still restored.
_FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
_STEP_DIR = re.compile(r"^\d+$")
_TMP_DIR = re.compile(r"^\d+\.orbax-checkpoint-tmp")
_barrier_ids = itertools.count()


class CorruptCheckpointError(ValueError):
    """A checkpoint whose files cannot be read or do not verify (as opposed to a template that does not match)."""


# ---------------------------------------------------------------------------------------------------- multi-process
def _multiprocess() -> bool:
    return jax.process_count() > 1


def _barrier(name: str) -> None:
    """Wait until every process reaches this point (no-op with one process). Names are made unique per call; every
    process calls the barriers in the same order, so the counters agree."""
    if _multiprocess():
        ocp.multihost.sync_global_processes(f"jaxsciml_checkpointer_{name}_{next(_barrier_ids)}")


def _all_agree(ok: bool) -> bool:
    """``ok`` and-reduced over all processes, so that every process takes the same branch (collective)."""
    if not _multiprocess():
        return bool(ok)
    flags = multihost_utils.process_allgather(np.asarray([1 if ok else 0], np.int32))
    return bool(np.all(np.asarray(flags)))


def _host_value(x: Any) -> np.ndarray:
    """The full value of an array leaf in host memory. A global array sharded over several processes is gathered
    (collective: every process must call this for the same leaves)."""
    if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def _replicated_sharding() -> NamedSharding:
    return NamedSharding(Mesh(np.asarray(jax.devices(), dtype=object), ("all",)), PartitionSpec())


def _to_global(x: Any, value: np.ndarray) -> jax.Array:
    """The array orbax is asked to save. With several processes, a host-local leaf (a NumPy array, an array on this
    process's devices only -- e.g. the PRNG key `fit` splits on the host) becomes a global array replicated over all
    devices; orbax refuses host-local arrays there. Its replicas must agree (checked with the digests in `save`)."""
    if not _multiprocess():
        return jnp.asarray(x)
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return x  # already global (replicated or sharded over the processes)
    return jax.make_array_from_process_local_data(_replicated_sharding(), value)


def _digest(value: np.ndarray) -> str:
    """sha256 of the array's bytes (C order)."""
    return hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()


def _release_orbax_waiters() -> None:
    """After a failed save, unblock orbax's background threads that wait for the step directory to be created.

    If creating the directory fails (read-only or full filesystem, permissions), orbax's writer threads keep waiting
    for a "directory created" signal for the coordination timeout (300 s); they are not daemon threads, so the
    interpreter hangs that long at exit. Setting the signals lets them proceed, fail on the missing directory and end.
    Uses orbax internals, hence best effort: with another orbax version this may do nothing."""
    try:
        from orbax.checkpoint._src.futures import future, synchronization

        signals = [
            synchronization.HandlerAwaitableSignal.STEP_DIRECTORY_CREATION,
            synchronization.HandlerAwaitableSignal.ITEM_DIRECTORY_CREATION,
        ]
        future.set_signals(signals, operation_id=synchronization.OperationIdGenerator.get_current_operation_id())
    except Exception:  # pragma: no cover - orbax internals changed
        pass


# ---------------------------------------------------------------------------------------------------- trees
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

    A committed `jax.Array` (explicitly placed, e.g. replicated over a mesh) is restored directly with its sharding
    -- with several processes only if it is a global array; a host-local committed leaf is read into host memory and
    placed by `_from_host`. Uncommitted arrays (the default for freshly created arrays) and NumPy arrays are read into
    host memory and converted back by `_from_host`, so the result is uncommitted too and mixes freely with other
    uncommitted arrays under `jit` (a committed single-device array next to mesh-sharded ones would be rejected).
    """
    if isinstance(leaf, jax.Array) and leaf.committed and not (_multiprocess() and leaf.is_fully_addressable):
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
    return np.empty(leaf.shape, leaf.dtype)


def _from_host(like: Any, restored: Any) -> Any:
    if isinstance(like, np.ndarray):
        return np.asarray(restored)
    if isinstance(like, jax.Array):
        if not like.committed:
            return jnp.asarray(restored)
        if isinstance(restored, np.ndarray):  # host-local committed template leaf (several processes)
            return jax.device_put(restored, like.sharding)
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
      is saved as JSON together with the leaf paths, shapes, dtypes and the **sha256 digest of every saved array**.

    **Integrity.** Writes are atomic: orbax writes into `<step>.orbax-checkpoint-tmp*` and renames the directory only
    after every file (and the `commit_success.txt` marker) is written; steps without the marker are never offered.
    A restore checks the template (paths, shapes, dtypes), that the step stored in the metadata is the step of the
    directory, and that every restored array has the digest computed at save time (a flipped bit anywhere in the
    array data is caught). A checkpoint that fails these checks raises a ValueError naming the step, its path and the
    leaf; [`restore`][] *without* an explicit `step` instead falls back to the newest checkpoint that verifies,
    warns naming the ones skipped and renames them to `<step>.corrupt` (kept for inspection, out of the way of a
    resumed run that will write that step again).

    **Start-up.** The directory is created if missing and must be writable (checked at once: a PermissionError or
    OSError here rather than at the first save). Leftovers of an interrupted save or of an interrupted deletion of an
    old checkpoint (orbax temporary directories, step directories without `commit_success.txt` or orbax's
    `_CHECKPOINT_METADATA`) are removed, with one warning listing them.

    **Several processes** (after `jax.distributed.initialize()`): every process creates the `Checkpointer` on the
    same (shared) directory and calls `save`/`restore` with the same arguments, as `fit` does. Leaves that are global
    arrays (e.g. `replicate(model, mesh)` over `data_mesh()`) are written by the processes holding their shards;
    host-local leaves (the PRNG key, NumPy arrays, uncommitted arrays) are saved as global replicated arrays, after
    checking that their values agree on every process (a ValueError names the first leaf that differs). The metadata
    is written once, by process 0. A checkpoint can be restored with another number of processes or devices: leaves
    go where the template's leaves are.

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
        self._closed = True  # until the manager exists
        error: OSError | None = None
        if jax.process_index() == 0:
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                error = e
        if not _all_agree(error is None):
            raise OSError(
                f"cannot create the checkpoint `directory` {str(path)!r}: "
                f"{error if error is not None else 'failed on process 0'}"
            ) from error
        self._check_writable()
        if jax.process_index() == 0:
            self._remove_leftovers()
        _barrier("init")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            enable_async_checkpointing=bool(async_save),
        )
        self._manager = ocp.CheckpointManager(path, options=options)
        self._closed = False

    # ------------------------------------------------------------------ file system
    def _check_writable(self) -> None:
        """Create and delete a small file in `directory` on every process; a clear error on all if any fails."""
        error: OSError | None = None
        try:
            fd, probe = tempfile.mkstemp(prefix=f".write-test-{jax.process_index()}-", dir=self._directory)
            os.close(fd)
            os.remove(probe)
        except OSError as e:
            error = e
        if _all_agree(error is None):
            return
        reason = f"{error.strerror or error}" if error is not None else "it is not writable on another process"
        message = f"the checkpoint `directory` {str(self._directory)!r} is not writable: {reason}"
        if error is None or error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise PermissionError(message) from error
        raise OSError(message) from error

    def _remove_leftovers(self) -> None:
        """Delete orbax temporary directories and step directories lacking the commit marker or orbax's metadata
        file: leftovers of an interrupted save or of an interrupted deletion of an old step (the step directory is
        removed file by file; orbax would log "Metadata file does not exist" for it on every listing)."""
        removed = []
        for entry in sorted(self._directory.iterdir()):
            if not entry.is_dir():
                continue
            incomplete = _STEP_DIR.match(entry.name) and not (
                (entry / _COMMIT_FILE).is_file() and (entry / _STEP_METADATA_FILE).is_file()
            )
            if incomplete or _TMP_DIR.match(entry.name):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
        if removed:
            warnings.warn(
                f"removed {len(removed)} incomplete checkpoint director{'y' if len(removed) == 1 else 'ies'} "
                f"(left by an interrupted save or deletion) from {str(self._directory)!r}: {removed}",
                RuntimeWarning,
                stacklevel=3,
            )

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
        """The newest finalised step, or `None` if there is none (it may still fail to verify on restore)."""
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
        done by [`close`][]) to block until they are committed. A directory that has become unwritable raises a
        PermissionError/OSError before anything is written.
        """
        self._check_open()
        step = check_count(step, "step", minimum=0)
        m_leaves, _, m_spec = _leaf_spec(model)
        o_leaves, _, o_spec = _leaf_spec(opt_state)
        key_meta: dict[str, Any] | None
        if key is None:
            key_meta, key_data = None, None
        elif isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
            key_meta, key_data = {"typed": True, "impl": str(jax.random.key_impl(key))}, jax.random.key_data(key)
        elif isinstance(key, jax.Array | np.ndarray):
            key_meta, key_data = {"typed": False}, key
        else:
            raise TypeError(f"`key` must be a JAX PRNG key or None, got {type(key).__name__}")
        # host copies: the digests, the finiteness check and (several processes) the replicas' agreement.
        m_values = [_host_value(x) for x in m_leaves]
        o_values = [_host_value(x) for x in o_leaves]
        if check_finite:
            for value in m_values + o_values:
                if np.issubdtype(value.dtype, np.inexact) and not np.all(np.isfinite(value)):
                    raise FloatingPointError(
                        f"refusing to checkpoint step {step}: the model or optimizer state contains NaN/inf"
                    )
        names = [f"model{s['path']}" for s in m_spec] + [f"opt_state{s['path']}" for s in o_spec]
        digests = [_digest(v) for v in m_values + o_values]
        for entry, digest in zip(m_spec + o_spec, digests):
            entry["sha256"] = digest
        if key_meta is not None:
            key_value = _host_value(key_data)
            key_meta.update(shape=list(key_value.shape), dtype=str(key_value.dtype), sha256=_digest(key_value))
            names.append("key")
            digests.append(key_meta["sha256"])
        self._check_replicas_agree(step, names, digests)
        state: dict[str, Any] = {
            "model": {f"{i:06d}": _to_global(x, v) for i, (x, v) in enumerate(zip(m_leaves, m_values))},
            "opt_state": {f"{i:06d}": _to_global(x, v) for i, (x, v) in enumerate(zip(o_leaves, o_values))},
        }
        if key_meta is not None:
            state["key"] = _to_global(key_data, key_value)
        meta = {
            "format_version": _FORMAT_VERSION,
            "step": step,
            "model_spec": m_spec,
            "opt_state_spec": o_spec,
            "key": key_meta,
            "history": _to_json(dict(history) if history is not None else {}),
        }
        self.wait()
        self._check_writable()
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
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                force=True,
            )
        except BaseException:
            _release_orbax_waiters()
            raise
        if wait:
            self.wait()

    def _check_replicas_agree(self, step: int, names: list[str], digests: list[str]) -> None:
        """With several processes: every leaf must have the same value on every process (collective)."""
        if not _multiprocess() or not digests:
            return
        mine = np.frombuffer(bytes.fromhex("".join(digests)), np.uint8).reshape(len(digests), 32)
        every = np.asarray(multihost_utils.process_allgather(mine))  # (processes, leaves, 32)
        differs = np.any(every != every[:1], axis=(0, 2))
        if np.any(differs):
            bad = [name for name, d in zip(names, differs) if d]
            raise ValueError(
                f"refusing to checkpoint step {step}: leaf `{bad[0]}` (and {len(bad) - 1} more) has different values "
                "on different processes; with several processes every host-local leaf (e.g. the PRNG key) must be "
                "identical on all of them"
            )

    def wait(self) -> None:
        """Block until pending asynchronous saves are committed (re-raises their errors)."""
        try:
            self._manager.wait_until_finished()
        except BaseException:
            _release_orbax_waiters()
            raise

    # ------------------------------------------------------------------ restore
    def restore(
        self,
        like_model: PyTree,
        like_opt_state: PyTree,
        step: int | None = None,
    ) -> tuple[PyTree, PyTree, int, Any, dict[str, list[Any]]]:
        """Restore `(model, opt_state, step, key, history)` from checkpoint `step` (default: the latest that verifies).

        `like_model` / `like_opt_state` are templates with the same structure, shapes and dtypes as what was saved
        (their array values are ignored). Placement follows the template: a leaf that was explicitly placed
        (committed, e.g. by `replicate(tree, mesh)`) is restored with its sharding; other leaves come back as
        uncommitted arrays on the default device (NumPy leaves as NumPy arrays). A template mismatch raises a
        ValueError naming the first differing leaf path with the saved and expected shape/dtype.

        A checkpoint whose metadata cannot be read, whose stored step differs from its directory's, or whose arrays
        cannot be read or do not match their sha256 digests is corrupt. With an explicit `step` that is a ValueError
        naming the step, the path and (for a digest) the leaf. Without one, the newest checkpoint that verifies is
        restored; the corrupt newer ones are renamed to `<step>.corrupt` and named in a RuntimeWarning.
        Raises FileNotFoundError if there is no finalised checkpoint, ValueError if none verifies.
        """
        self._check_open()
        self.wait()
        steps = self.all_steps()
        if step is not None:
            step = check_count(step, "step", minimum=0)
            if step not in steps:
                raise ValueError(
                    f"`step` {step} has no finalised checkpoint in {str(self._directory)!r}; available steps: {steps}"
                )
            return self._restore_step(step, like_model, like_opt_state)
        if not steps:
            raise FileNotFoundError(f"no finalised checkpoint in {str(self._directory)!r}")
        skipped: list[tuple[int, str]] = []
        for candidate in reversed(steps):
            try:
                out = self._restore_step(candidate, like_model, like_opt_state)
            except CorruptCheckpointError as e:
                skipped.append((candidate, str(e)))
                continue
            if skipped:
                moved = self._move_aside([s for s, _ in skipped])
                warnings.warn(
                    f"skipped {len(skipped)} corrupt checkpoint(s) in {str(self._directory)!r} and restored step "
                    f"{candidate} instead: "
                    + "; ".join(f"step {s}: {reason}" for s, reason in skipped)
                    + f". Moved aside to {moved}.",
                    RuntimeWarning,
                    stacklevel=2,
                )
            return out
        raise CorruptCheckpointError(
            f"no checkpoint in {str(self._directory)!r} verifies: "
            + "; ".join(f"step {s}: {reason}" for s, reason in skipped)
        )

    def _move_aside(self, steps: list[int]) -> list[str]:
        """Rename corrupt step directories to `<step>.corrupt[-k]` (process 0), so that orbax no longer lists them."""
        names = []
        for step in steps:
            src = self._directory / str(step)
            dst = self._directory / f"{step}.corrupt"
            k = 0
            while dst.exists():
                k += 1
                dst = self._directory / f"{step}.corrupt-{k}"
            names.append(dst.name)
            if jax.process_index() == 0:
                src.rename(dst)
        _barrier("move_aside")
        self._manager.reload()
        return names

    def _agreed(self, fn: Any) -> Any:
        """Run `fn()` on every process; if it raises `CorruptCheckpointError` on any of them, raise on all of them."""
        out, error = None, None
        try:
            out = fn()
        except CorruptCheckpointError as e:
            error = e
        if not _all_agree(error is None):
            raise error if error is not None else CorruptCheckpointError("it failed to verify on another process")
        return out

    def _restore_step(
        self, step: int, like_model: PyTree, like_opt_state: PyTree
    ) -> tuple[PyTree, PyTree, int, Any, dict[str, list[Any]]]:
        where = f"checkpoint at step {step} ({str(self._directory / str(step))!r})"
        meta = self._agreed(lambda: self._read_meta(step, where))
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

        def read_arrays():
            try:
                args = ocp.args.Composite(state=ocp.args.StandardRestore(target))
                return self._manager.restore(step, args=args)["state"]
            except Exception as e:
                raise CorruptCheckpointError(f"{where}: its arrays cannot be read ({type(e).__name__}: {e})") from e

        state = self._agreed(read_arrays)

        def verify():
            if meta["format_version"] < 2:
                return
            checks = [
                (f"model{s['path']}", s["sha256"], state["model"][f"{i:06d}"]) for i, s in enumerate(meta["model_spec"])
            ]
            checks += [
                (f"opt_state{s['path']}", s["sha256"], state["opt_state"][f"{i:06d}"])
                for i, s in enumerate(meta["opt_state_spec"])
            ]
            if key_meta is not None:
                checks.append(("key", key_meta["sha256"], state["key"]))
            for name, expected, value in checks:
                if _digest(_host_value(value)) != expected:
                    raise CorruptCheckpointError(
                        f"{where} is corrupt: leaf `{name}` does not match the sha256 digest stored when it was "
                        "saved (the file was modified or damaged)"
                    )

        self._agreed(verify)

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
        return model, opt_state, step, key, history

    def _read_meta(self, step: int, where: str) -> dict[str, Any]:
        try:
            meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:
            raise CorruptCheckpointError(f"{where}: its metadata cannot be read ({type(e).__name__}: {e})") from e
        if not isinstance(meta, dict):
            raise CorruptCheckpointError(f"{where}: its metadata is missing or not a JSON object")
        version = meta.get("format_version")
        if version not in _READABLE_VERSIONS:
            raise CorruptCheckpointError(
                f"{where} was not written by jaxsciml.train.Checkpointer or by an incompatible version "
                f"(format_version {version!r}, readable: {list(_READABLE_VERSIONS)})"
            )
        missing = [k for k in ("step", "model_spec", "opt_state_spec", "history") if k not in meta]
        if missing:
            raise CorruptCheckpointError(f"{where}: its metadata lacks {missing}")
        if meta["step"] != step or isinstance(meta["step"], bool):
            raise CorruptCheckpointError(
                f"{where}: its metadata says step {meta['step']!r} but it is stored as step {step}; refusing to "
                "restore a checkpoint whose step cannot be trusted (a resumed run would skip or repeat batches)"
            )
        return meta

    # ------------------------------------------------------------------ lifecycle
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this Checkpointer is closed")

    def close(self) -> None:
        """Wait for pending saves and release orbax's resources. Idempotent."""
        if not self._closed:
            try:
                self.wait()
            finally:
                self._manager.close()
                self._closed = True

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Checkpointer({str(self._directory)!r}, max_to_keep={self._max_to_keep})"
