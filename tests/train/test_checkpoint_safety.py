"""Checkpoints never destroy or lock away data: read-only restores, incomplete steps moved aside (never deleted) and
restorable when they verify, format versions, one clear error on a full disk."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap
import time

import jax.numpy as jnp
import numpy as np
import pytest

from jaxsciml.train import Checkpointer

REPO = pathlib.Path(__file__).resolve().parents[2]
ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), XLA_FLAGS="")


def _files(root: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _write_two(directory, async_save=True):
    with Checkpointer(directory, max_to_keep=None, async_save=async_save) as ck:
        for step in (1, 2):
            ck.save(step, {"w": jnp.arange(6.0) * step}, None, None, {"s": [step]})


def _run(script: str, *args: str, timeout: float = 120) -> tuple[list[str], str, float]:
    """Run ``script`` in a fresh interpreter: (stdout lines, stderr, seconds from its last line to its exit)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, (out, err[-3000:])
    return out.strip().splitlines(), err, 0.0


# ------------------------------------------------------------------------------------------------ read-only storage
_READ_ONLY_RESTORE = """
import sys, time, numpy as np, jax.numpy as jnp
from jaxsciml.train import Checkpointer
ck = Checkpointer(sys.argv[1])
print("writable", ck.writable, ck.all_steps(), flush=True)
m, _, step, _, h = ck.restore({"w": jnp.zeros(6)}, None)
print("restored", step, np.asarray(m["w"]).tolist(), h, flush=True)
t0 = time.monotonic()
try:
    ck.save(3, {"w": jnp.ones(6)}, None)
except PermissionError as e:
    print("save refused", round(time.monotonic() - t0, 1), "not writable" in str(e), "read-only" in str(e), flush=True)
ck.close()
print("END", flush=True)
"""


def _make_read_only(path: pathlib.Path) -> str:
    """Make ``path`` (recursively) read-only for this process: `chmod` as a user; as root, where permissions do not
    stop writes, the immutable attribute (`chattr +i`), which stops root too. Returns the method used."""
    if os.geteuid() != 0:
        for p in [path, *path.rglob("*")]:
            os.chmod(p, 0o555 if p.is_dir() else 0o444)
        return "chmod"
    if subprocess.run(["chattr", "-R", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("running as root and `chattr +i` is unavailable: cannot make a directory read-only")
    return "chattr"


def _make_writable(path: pathlib.Path, how: str) -> None:
    if how == "chattr":
        subprocess.run(["chattr", "-R", "-i", str(path)], check=True)
    else:
        for p in [path, *path.rglob("*")]:
            os.chmod(p, 0o755)


def test_restore_from_read_only_directory(tmp_path):
    """A checkpoint on read-only storage restores bit-exact; only a save raises, at once, and the process exits
    promptly. The directory is made really read-only: `chmod` as a user, `chattr +i` (immutable) as root, where
    permission bits do not stop writes. Two trials in fresh interpreters (threads: a hang would be a bug)."""
    directory = tmp_path / "ck"
    _write_two(directory)
    before = _files(directory)
    how = _make_read_only(directory)
    try:
        for _ in range(2):
            t0 = time.monotonic()
            lines, _, _ = _run(_READ_ONLY_RESTORE, str(directory), timeout=120)
            assert time.monotonic() - t0 < 90
            assert lines[0] == "writable False [1, 2]"
            assert lines[1] == "restored 2 [0.0, 2.0, 4.0, 6.0, 8.0, 10.0] {'s': [2]}"
            assert lines[2].startswith("save refused") and lines[2].endswith("True True"), lines
            assert float(lines[2].split()[2]) < 5
            assert lines[3] == "END"
    finally:
        _make_writable(directory, how)
    assert _files(directory) == before


# ------------------------------------------------------------------------ incomplete steps: set aside, never lost
@pytest.mark.parametrize("missing", ["commit_success.txt", "_CHECKPOINT_METADATA"])
def test_newest_missing_marker_is_moved_aside_not_deleted(tmp_path, missing):
    """A newest checkpoint that lost only its commit marker or orbax's metadata file is moved aside as
    `<step>.incomplete` with a warning (its files kept byte for byte), the previous step is restored, and the set-aside
    step restores explicitly because its arrays verify against their digests."""
    _write_two(tmp_path)
    (tmp_path / "2" / missing).unlink()
    before = _files(tmp_path / "2")
    with pytest.warns(RuntimeWarning, match=r"moved 1 incomplete checkpoint directory .*'2 -> 2\.incomplete'"):
        ck = Checkpointer(tmp_path, max_to_keep=None)
    with ck:
        assert ck.all_steps() == [1] and ck.set_aside() == ["2.incomplete"]
        assert _files(tmp_path / "2.incomplete") == before
        m, _, step, _, h = ck.restore({"w": jnp.zeros(6)}, None)
        assert step == 1 and np.array_equal(m["w"], np.arange(6.0)) and h == {"s": [1]}
        m, _, step, _, h = ck.restore_set_aside({"w": jnp.zeros(6)}, None, "2.incomplete")
        assert step == 2 and np.array_equal(m["w"], 2 * np.arange(6.0)) and h == {"s": [2]}
        with pytest.raises(ValueError, match="set-aside checkpoint directory such as"):
            ck.restore_set_aside({"w": jnp.zeros(6)}, None, "2")
    # a second start-up leaves everything where it is (nothing else to move, nothing deleted)
    with Checkpointer(tmp_path, max_to_keep=None) as ck:
        assert ck.set_aside() == ["2.incomplete"]
    assert _files(tmp_path / "2.incomplete") == before


def test_set_aside_restore_refuses_damaged_arrays(tmp_path):
    """A set-aside step whose array data was modified is not restored (digest check), and stays where it is."""
    _write_two(tmp_path)
    (tmp_path / "2" / "commit_success.txt").unlink()
    with pytest.warns(RuntimeWarning, match="moved 1 incomplete"):
        ck = Checkpointer(tmp_path, max_to_keep=None)
    data = [p for p in (tmp_path / "2.incomplete" / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert data
    for path in data:  # flip one bit in every data file
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        path.write_bytes(bytes(raw))
    with ck:
        with pytest.raises(ValueError, match=r"set-aside checkpoint '2\.incomplete'"):
            ck.restore_set_aside({"w": jnp.zeros(6)}, None, "2.incomplete")
        assert ck.set_aside() == ["2.incomplete"] and ck.all_steps() == [1]


def test_no_start_up_or_restore_path_deletes_files(tmp_path):
    """Start-up, `restore()` falling back over a corrupt newest step, `restore_set_aside` and an explicit restore of a
    corrupt step: every file ever written is still there afterwards (possibly under a moved-aside directory)."""
    _write_two(tmp_path)
    with Checkpointer(tmp_path, max_to_keep=None) as ck:
        ck.save(3, {"w": jnp.arange(6.0) * 3}, None, None, {"s": [3]})
    (tmp_path / "3" / "_CHECKPOINT_METADATA").unlink()  # incomplete newest
    (tmp_path / "2" / "meta" / "metadata").write_text("{not json")  # corrupt next
    (tmp_path / "7.orbax-checkpoint-tmp-99").mkdir()  # interrupted save
    (tmp_path / "7.orbax-checkpoint-tmp-99" / "x").write_bytes(b"partial")

    def contents():
        return sorted(v for _, v in _files(tmp_path).items())

    before = contents()
    with pytest.warns(RuntimeWarning, match="moved 2 incomplete"):
        ck = Checkpointer(tmp_path, max_to_keep=None)
    with ck:
        with pytest.raises(ValueError, match="checkpoint at step 2"):
            ck.restore({"w": jnp.zeros(6)}, None, step=2)
        with pytest.warns(RuntimeWarning, match="restored step 1 instead"):
            _, _, step, _, _ = ck.restore({"w": jnp.zeros(6)}, None)
        assert step == 1
        ck.restore_set_aside({"w": jnp.zeros(6)}, None, "3.incomplete")
        assert ck.set_aside() == ["2.corrupt", "3.incomplete", "7.incomplete"]
    assert contents() == before


# ------------------------------------------------------------------------------------------------------ format version
@pytest.mark.parametrize("version", [99, 0, None])
def test_other_format_version_names_both_versions(tmp_path, version):
    """A checkpoint whose stored format version this jaxsciml does not read: a ValueError naming the stored and the
    current versions and what to do, from an explicit and an automatic restore alike; never moved aside."""
    _write_two(tmp_path)
    meta_file = tmp_path / "2" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    assert meta["format_version"] == 2 and "jaxsciml_version" in meta
    meta["jaxsciml_version"] = "9.9.9"
    if version is None:
        del meta["format_version"]
    else:
        meta["format_version"] = version
    meta_file.write_text(json.dumps(meta))
    import jaxsciml

    with Checkpointer(tmp_path, max_to_keep=None) as ck:
        for step in (2, None):
            with pytest.raises(ValueError) as info:
                ck.restore({"w": jnp.zeros(6)}, None, step=step)
            msg = str(info.value)
            assert f"this is jaxsciml {jaxsciml.__version__}, which writes format 2 and reads [1, 2]" in msg
            if version == 99:
                assert "written in checkpoint format 99 by jaxsciml 9.9.9" in msg and "upgrade jaxsciml" in msg
            elif version == 0:
                assert "format 0" in msg and "restore it with the jaxsciml version that wrote it (9.9.9)" in msg
            else:
                assert "has no checkpoint format version" in msg
        assert ck.all_steps() == [1, 2] and ck.set_aside() == []


# ---------------------------------------------------------------------------------------------------------- full disk
_FULL_DISK = """
import sys, numpy as np, jax.numpy as jnp
from jaxsciml.train import Checkpointer
ck = Checkpointer(sys.argv[1], max_to_keep=None)
ck.save(1, {"w": jnp.arange(100.0)}, None)
big = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(1000, 1000)).astype("float32"))}  # 4 MB, incompressible
for wait in (True, False):
    try:
        ck.save(2, big, None, wait=wait)
        ck.wait()
        print("SAVED", flush=True)
    except OSError as e:
        print("ENOSPC" if e.errno == 28 else "OTHER", e, flush=True)
m, _, step, _, _ = ck.restore({"w": jnp.zeros(100)}, None)
print("restored", step, bool(np.array_equal(m["w"], np.arange(100.0))), flush=True)
ck.close()
print("END", flush=True)
"""


def test_full_disk_gives_one_clear_error(tmp_path):
    """A save on a full disk raises one OSError (ENOSPC) naming the step and the intact steps, with or without
    waiting, and nothing else on stderr (orbax used to print several ERROR:absl lines with tracebacks); the earlier
    step restores exactly. The full disk is real: a 1 MiB tmpfs, mounted when the tests run as root (else skipped)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode
    ):
        pytest.skip("needs root and `mount -t tmpfs` for a real full disk")
    try:
        lines, err, _ = _run(_FULL_DISK, str(mnt / "ck"), timeout=120)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
    assert len(lines) == 4, (lines, err)
    for line in lines[:2]:
        assert line.startswith("ENOSPC [Errno 28] no space left on device: the checkpoint of step 2"), line
        assert "intact (steps [1])" in line
    assert lines[2:] == ["restored 1 True", "END"]
    assert "ERROR:absl" not in err and "Traceback" not in err and "Event loop is closed" not in err, err[-2000:]


def test_fit_resumes_from_read_only_and_refuses_to_train_into_it(tmp_path):
    """`fit` with a read-only checkpointer: a finished run restores (nothing to write); one that would train raises a
    PermissionError before its first step. Really read-only: `chmod` as a user, `chattr +i` as root."""
    from jaxsciml.train import fit

    from ._util import ADAM, make_batch, make_model, mse

    directory = tmp_path / "ck"
    with Checkpointer(directory) as ck:
        done = fit(make_model(), mse, ADAM, make_batch, 4, checkpointer=ck, progress=False)
    how = _make_read_only(directory)
    try:
        with Checkpointer(directory) as ck:
            assert not ck.writable
            again = fit(make_model(seed=5), mse, ADAM, make_batch, 4, checkpointer=ck, progress=False)
            assert again.step == 4 and again.history["loss"] == done.history["loss"]
            calls = []

            def data(step):
                calls.append(step)
                return make_batch(step)

            with pytest.raises(PermissionError, match="opened read-only"):
                fit(make_model(), mse, ADAM, data, 6, checkpointer=ck, progress=False, steps_per_call=1)
            assert calls == []
    finally:
        _make_writable(directory, how)
