"""Orbax-backed checkpoints of ``(model, opt_state, step, key, history)`` (private)."""

from __future__ import annotations

import errno
import hashlib
import itertools
import logging
import os
import pathlib
import re
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import PRNGKeyArray, PyTree

from .._version import __version__
from ._checks import check_count

# orbax writes this file as the last act of finalising a step (before the atomic rename on local filesystems, and as
# the commit marker on object stores). We additionally require it, so a step directory that was created but never
# finalised (a crash between mkdir and commit, a copy interrupted half-way) is never offered for restore.
_COMMIT_FILE = "commit_success.txt"
# orbax's per-step metadata file; an interrupted deletion (`rmtree` of an old step killed midway) can remove it first.
_STEP_METADATA_FILE = "_CHECKPOINT_METADATA"
# The layout of what `save` writes, stored as `format_version` in every checkpoint's metadata (with the jaxsciml
# version that wrote it). Version 2 added the sha256 digest of every saved leaf; version 1 checkpoints (no digests)
# are still restored. Bump it whenever a checkpoint written now could not be read correctly by the previous reader.
_FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
_STEP_DIR = re.compile(r"^\d+$")
_TMP_DIR = re.compile(r"^(\d+)\.orbax-checkpoint-tmp")
# Directories moved out of orbax's way (never deleted): `<step>.incomplete[-k]`, `<step>.corrupt[-k]`.
_ASIDE_DIR = re.compile(r"^\d+\.(incomplete|corrupt)(-\d+)?$")
_barrier_ids = itertools.count()


class CorruptCheckpointError(ValueError):
    """A checkpoint whose files cannot be read or do not verify (as opposed to a template that does not match)."""


class CheckpointFormatError(ValueError):
    """A checkpoint written in a format this version of jaxsciml does not read (never moved aside as corrupt)."""


ModelT = TypeVar("ModelT")
OptStateT = TypeVar("OptStateT")


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


class _OrbaxErrorLogGate(logging.Filter):
    """Hold back orbax's ERROR log records (each with a traceback, several per failed save, from its background
    threads) while a save of ours is in flight: the failure reaches the caller as one exception from `save`/`wait`.
    Held records are re-emitted if the save then succeeds, so nothing is lost when orbax logs an error it recovers
    from."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._active = 0
        self._held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or "orbax" not in record.pathname.replace("\\", "/"):
            return True
        with self._lock:
            if self._active:
                self._held.append(record)
                return False
        return True

    def open(self) -> None:
        with self._lock:
            self._active += 1

    def close(self, failed: bool) -> None:
        with self._lock:
            self._active = max(self._active - 1, 0)
            held, self._held = (self._held, []) if not self._active else ([], self._held)
        if not failed:
            for record in held:
                logging.getLogger(record.name).handle(record)


_log_gate = _OrbaxErrorLogGate()
logging.getLogger("absl").addFilter(_log_gate)


def _is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or an exception it was raised from) is a full disk / exceeded quota."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(e)
        if "No space left on device" in text or "os_error_code='28'" in text or "Disk quota exceeded" in text:
            return True
        e = e.__cause__ or e.__context__
    return False


def _first_line(error: BaseException, limit: int = 300) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


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


def _format_message(where: str, version: Any, written_by: Any) -> str:
    """The error for a checkpoint in a format this version does not read: both versions and what to do."""
    by = f" by jaxsciml {written_by}" if written_by else ""
    here = f"this is jaxsciml {__version__}, which writes format {_FORMAT_VERSION} and reads {list(_READABLE_VERSIONS)}"
    if isinstance(version, int) and not isinstance(version, bool) and version > _FORMAT_VERSION:
        todo = f"upgrade jaxsciml (to {written_by} or later) to restore it" if written_by else "upgrade jaxsciml"
    elif version is None:
        return (
            f"{where} has no checkpoint format version: it was not written by jaxsciml.train.Checkpointer ({here}). "
            "Restore it with the tool that wrote it"
        )
    else:
        todo = (
            f"restore it with the jaxsciml version that wrote it{' (' + str(written_by) + ')' if written_by else ''} "
            "and re-train or convert from there, or start a fresh run in another directory"
        )
    return f"{where} was written in checkpoint format {version!r}{by}, but {here}: {todo}"


def _compare(name: str, saved: list[dict[str, Any]], like: list[dict[str, Any]], step: int, written: str = "") -> None:
    """Raise a ValueError naming the first leaf where the checkpoint and the template disagree."""
    where = f"checkpoint at step {step}{written} does not match `{name}`"
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

    **Nothing is deleted but by `max_to_keep`.** No start-up or restore path deletes a checkpoint: what cannot be
    offered is moved aside (renamed) and named in a warning. [`set_aside`][] lists those directories and
    [`restore_set_aside`][] restores one explicitly, if every array verifies against its stored digest.

    **Start-up.** The directory is created if missing. If it is not writable (read-only storage, no permission) the
    `Checkpointer` opens it read-only: restoring works, `writable` is False and `save` raises a PermissionError at
    once. Leftovers of an interrupted save or of an interrupted deletion of an old checkpoint (orbax temporary
    directories, step directories without `commit_success.txt` or orbax's `_CHECKPOINT_METADATA`) are renamed to
    `<step>.incomplete` (writable directories only), with one warning listing them.

    **Format.** Every checkpoint stores its `format_version` (the layout written by `save`) and the jaxsciml version
    that wrote it. A checkpoint in a format this version does not read raises a ValueError naming both versions and
    what to do (it is not treated as corrupt, so it is never moved aside).

    **Full disk.** A save that fails for lack of space raises one `OSError` (`errno.ENOSPC`) naming the step, the
    directory and the checkpoints still intact; orbax's own error logs for it are held back.

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
        self._read_only_reason: str | None = self._probe_writable()
        if self._read_only_reason is None:
            if jax.process_index() == 0:
                self._move_leftovers_aside()
            _barrier("init")
        self._pending_step: int | None = None
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=self._read_only_reason is None,
            read_only=self._read_only_reason is not None,
            enable_async_checkpointing=bool(async_save),
        )
        with warnings.catch_warnings():
            # orbax logs "read only" notices at WARNING for a read-only manager: expected here, not news.
            absl_logger = logging.getLogger("absl")
            level = absl_logger.level
            if self._read_only_reason is not None:
                absl_logger.setLevel(logging.ERROR)
            try:
                self._manager = ocp.CheckpointManager(path, options=options)
            finally:
                absl_logger.setLevel(level)
        self._closed = False

    # ------------------------------------------------------------------ file system
    def _probe_writable(self) -> str | None:
        """Create and delete a small file in `directory` on every process: `None` if that works on all of them, else
        the reason it does not (collective)."""
        error: OSError | None = None
        try:
            fd, probe = tempfile.mkstemp(prefix=f".write-test-{jax.process_index()}-", dir=self._directory)
            os.close(fd)
            os.remove(probe)
        except OSError as e:
            error = e
        if _all_agree(error is None):
            return None
        return f"{error.strerror or error}" if error is not None else "it is not writable on another process"

    def _check_writable(self) -> None:
        """Raise a PermissionError (or OSError) at once if a save cannot write to `directory`."""
        if self._read_only_reason is not None:
            raise PermissionError(
                f"the checkpoint `directory` {str(self._directory)!r} is not writable: {self._read_only_reason}; "
                "it was opened read-only (restoring works, saving does not). Save to a writable directory instead"
            )
        reason = self._probe_writable()
        if reason is None:
            return
        message = f"the checkpoint `directory` {str(self._directory)!r} is not writable: {reason}"
        if any(word in reason for word in ("Permission denied", "Operation not permitted", "Read-only")):
            raise PermissionError(message)
        raise OSError(message)

    @property
    def writable(self) -> bool:
        """Whether `directory` was writable when this `Checkpointer` was created (else it is read-only)."""
        return self._read_only_reason is None

    def _aside_name(self, step: int | str, suffix: str) -> pathlib.Path:
        dst = self._directory / f"{step}.{suffix}"
        k = 0
        while dst.exists():
            k += 1
            dst = self._directory / f"{step}.{suffix}-{k}"
        return dst

    def _move_leftovers_aside(self) -> None:
        """Rename orbax temporary directories and step directories lacking the commit marker or orbax's metadata file
        (leftovers of an interrupted save, or of an interrupted deletion of an old step, which orbax removes file by
        file) to `<step>.incomplete`: out of orbax's listing, never deleted (the arrays of a step that lost only its
        marker may be intact; see `restore_set_aside`)."""
        moved = []
        for entry in sorted(self._directory.iterdir()):
            if not entry.is_dir():
                continue
            tmp = _TMP_DIR.match(entry.name)
            incomplete = _STEP_DIR.match(entry.name) and not (
                (entry / _COMMIT_FILE).is_file() and (entry / _STEP_METADATA_FILE).is_file()
            )
            if incomplete or tmp:
                dst = self._aside_name(tmp.group(1) if tmp else entry.name, "incomplete")
                entry.rename(dst)
                moved.append(f"{entry.name} -> {dst.name}")
        if moved:
            warnings.warn(
                f"moved {len(moved)} incomplete checkpoint director{'y' if len(moved) == 1 else 'ies'} (left by an "
                f"interrupted save or deletion) aside in {str(self._directory)!r}: {moved}. Nothing was deleted: "
                "`Checkpointer.restore_set_aside` restores one whose arrays verify; delete them when not needed",
                RuntimeWarning,
                stacklevel=3,
            )

    # ------------------------------------------------------------------ queries
    @property
    def directory(self) -> pathlib.Path:
        return self._directory

    def _is_committed(self, step: int) -> bool:
        return (self._directory / str(step) / _COMMIT_FILE).is_file()

    def set_aside(self) -> list[str]:
        """Names of the directories moved aside (`<step>.incomplete[-k]`, `<step>.corrupt[-k]`), sorted by step."""
        names = [e.name for e in self._directory.iterdir() if e.is_dir() and _ASIDE_DIR.match(e.name)]
        return sorted(names, key=lambda n: (int(n.split(".")[0]), n))

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
        key_data: jax.Array | np.ndarray | None
        if key is None:
            key_meta, key_data = None, None
        elif isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
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
            "jaxsciml_version": __version__,
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
        _log_gate.open()
        self._pending_step = step
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                force=True,
            )
        except BaseException as e:
            self._save_failed(e)
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
        """Block until pending asynchronous saves are committed (re-raises their errors; a full disk as one
        `OSError` with `errno.ENOSPC`)."""
        try:
            self._manager.wait_until_finished()
        except BaseException as e:
            self._save_failed(e)
            raise
        if self._pending_step is not None:
            self._pending_step = None
            _log_gate.close(failed=False)

    def _save_failed(self, error: BaseException) -> None:
        """After a failed save: unblock orbax's waiting threads, drop orbax's error logs for it, and turn a full disk
        into one clear `OSError` (raised from here; other errors are re-raised by the caller)."""
        _release_orbax_waiters()
        step, self._pending_step = self._pending_step, None
        if step is not None:
            _log_gate.close(failed=True)
        if not _is_disk_full(error):
            return
        try:
            free = shutil.disk_usage(self._directory).free
            space = f"{free / 2**20:.1f} MiB free"
        except OSError:  # pragma: no cover
            space = "free space unknown"
        intact = sorted(
            int(d.name) for d in self.directory.iterdir() if _STEP_DIR.match(d.name) and self._is_committed(int(d.name))
        )
        raise OSError(
            errno.ENOSPC,
            f"no space left on device: the checkpoint of step {step} could not be written to "
            f"{str(self._directory)!r} ({space}); the checkpoints already written are intact (steps {intact}). "
            "Free some space (the partial write is moved aside as `<step>.incomplete` at the next start) or lower "
            f"`max_to_keep`. orbax reported: {_first_line(error)}",
        ) from None

    # ------------------------------------------------------------------ restore
    def restore(
        self,
        like_model: ModelT,
        like_opt_state: OptStateT,
        step: int | None = None,
    ) -> tuple[ModelT, OptStateT, int, PRNGKeyArray | None, dict[str, list[Any]]]:
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
                if self.writable:
                    moved = f". Moved aside to {self._move_aside([s for s, _ in skipped])}."
                else:
                    moved = " (left in place: the directory is read-only)."
                warnings.warn(
                    f"skipped {len(skipped)} corrupt checkpoint(s) in {str(self._directory)!r} and restored step "
                    f"{candidate} instead: " + "; ".join(f"step {s}: {reason}" for s, reason in skipped) + moved,
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
            dst = self._aside_name(step, "corrupt")
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

    def restore_set_aside(
        self, like_model: ModelT, like_opt_state: OptStateT, name: str
    ) -> tuple[ModelT, OptStateT, int, PRNGKeyArray | None, dict[str, list[Any]]]:
        """Restore a checkpoint that was moved aside (one of [`set_aside`][]'s names, e.g. `"12.incomplete"`): a step
        that lost `commit_success.txt` or orbax's `_CHECKPOINT_METADATA`, or one skipped as corrupt.

        Only a checkpoint whose metadata is readable, whose stored step matches its name, and whose every array
        matches the sha256 digest stored when it was saved (format version 2 or later) is restored; otherwise a
        ValueError says why. Returns `(model, opt_state, step, key, history)` like [`restore`][]. Nothing is moved or
        deleted; to resume from it, `save` the result (e.g. under its step) with a writable `Checkpointer`.
        """
        self._check_open()
        if not isinstance(name, str) or not _ASIDE_DIR.match(name):
            raise ValueError(
                f"`name` must be the name of a set-aside checkpoint directory such as '12.incomplete', got {name!r}; "
                f"set aside in {str(self._directory)!r}: {self.set_aside()}"
            )
        path = self._directory / name
        if not path.is_dir():
            raise ValueError(f"`name` {name!r} is not in {str(self._directory)!r}; set aside: {self.set_aside()}")
        step = int(name.split(".")[0])
        where = f"set-aside checkpoint {name!r} ({str(path)!r})"
        reader = ocp.Checkpointer(ocp.CompositeCheckpointHandler())

        def read_meta() -> Any:
            return reader.restore(path, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

        def read_state(target: Any) -> Any:
            return reader.restore(path, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]

        try:
            return self._restore_from(step, where, read_meta, read_state, like_model, like_opt_state, digests=True)
        finally:
            reader.close()

    def _restore_step(
        self, step: int, like_model: PyTree, like_opt_state: PyTree
    ) -> tuple[PyTree, PyTree, int, Any, dict[str, list[Any]]]:
        where = f"checkpoint at step {step} ({str(self._directory / str(step))!r})"

        def read_meta() -> Any:
            return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

        def read_state(target: Any) -> Any:
            return self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]

        return self._restore_from(step, where, read_meta, read_state, like_model, like_opt_state, digests=False)

    def _restore_from(
        self,
        step: int,
        where: str,
        read_meta: Callable[[], Any],
        read_state: Callable[[Any], Any],
        like_model: PyTree,
        like_opt_state: PyTree,
        *,
        digests: bool,
    ) -> tuple[PyTree, PyTree, int, Any, dict[str, list[Any]]]:
        """Read, check and rebuild one checkpoint; `digests`: refuse one without sha256 digests (format 1)."""
        meta = self._agreed(lambda: self._read_meta(step, where, read_meta))
        if digests and meta["format_version"] < 2:
            raise CorruptCheckpointError(
                f"{where} was written in format {meta['format_version']}, without the digests needed to verify it"
            )
        if "jaxsciml_version" in meta and meta["jaxsciml_version"] != __version__:
            written = f" (written by jaxsciml {meta['jaxsciml_version']}; this is {__version__}: see the CHANGELOG)"
        else:
            written = ""
        m_leaves, m_def, m_spec = _leaf_spec(like_model)
        o_leaves, o_def, o_spec = _leaf_spec(like_opt_state)
        _compare("like_model", meta["model_spec"], m_spec, step, written)
        _compare("like_opt_state", meta["opt_state_spec"], o_spec, step, written)
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
                return read_state(target)
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

    def _read_meta(self, step: int, where: str, read: Callable[[], Any]) -> dict[str, Any]:
        try:
            meta = read()
        except Exception as e:
            raise CorruptCheckpointError(f"{where}: its metadata cannot be read ({type(e).__name__}: {e})") from e
        if not isinstance(meta, dict):
            raise CorruptCheckpointError(f"{where}: its metadata is missing or not a JSON object")
        version = meta.get("format_version")
        if version not in _READABLE_VERSIONS or isinstance(version, bool):
            raise CheckpointFormatError(_format_message(where, version, meta.get("jaxsciml_version")))
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
