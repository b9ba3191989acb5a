"""Checkpointer: round trips, max_to_keep, validated restores, atomicity, bit-identical resume of fit."""

import json
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from jaxsciml.train import Checkpointer, fit

from ._util import ADAM, make_batch, make_batch_from_key, make_model, mse, mse_aux

REPO = pathlib.Path(__file__).resolve().parents[2]


def _equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


def _scale(model, c):
    return jax.tree_util.tree_map(lambda x: x * c if eqx.is_array(x) else x, model)


def _state(seed=0):
    model = make_model(seed)
    opt_state = ADAM.init(eqx.filter(model, eqx.is_inexact_array))
    return model, opt_state


def test_roundtrip_model_opt_state_key_history(tmp_path):
    model, _ = _state(0)
    res = fit(model, mse, ADAM, make_batch, 3, progress=False)  # non-trivial Adam moments
    key = jax.random.key(5)
    history = {"loss": [1.0, float("nan"), 0.5], "step": [0, 1, 2]}
    with Checkpointer(tmp_path / "ck") as ck:
        ck.save(3, res.model, res.opt_state, key, history)
        assert ck.all_steps() == [3] and ck.latest_step() == 3
        like_model, like_opt = _state(1)  # different values, same structure
        m, s, step, k, h = ck.restore(like_model, like_opt)
    assert step == 3
    assert _equal(m, res.model) and _equal(s, res.opt_state)
    assert not _equal(like_model, res.model)
    assert jax.dtypes.issubdtype(k.dtype, jax.dtypes.prng_key)
    assert np.array_equal(jax.random.key_data(k), jax.random.key_data(key))
    assert h["step"] == [0, 1, 2] and h["loss"][0] == 1.0 and np.isnan(h["loss"][1])
    # the restored model is usable (static part taken from the template)
    np.testing.assert_array_equal(mse(m, make_batch(0)), mse(res.model, make_batch(0)))


def test_raw_key_none_key_and_sgd_state(tmp_path):
    model, _ = _state()
    opt = optax.sgd(1e-2)  # a state with no arrays at all
    s0 = opt.init(eqx.filter(model, eqx.is_inexact_array))
    with Checkpointer(tmp_path) as ck:
        ck.save(1, model, s0, jax.random.PRNGKey(3), {})
        ck.save(2, model, s0, None, None)
        _, _, _, k1, _ = ck.restore(model, s0, step=1)
        _, s2, _, k2, h2 = ck.restore(model, s0, step=2)
    assert k1.dtype == jnp.uint32 and np.array_equal(k1, jax.random.PRNGKey(3))
    assert k2 is None and h2 == {}
    assert _equal(s2, s0)


def test_max_to_keep_and_step_selection(tmp_path):
    model, opt_state = _state()
    with Checkpointer(tmp_path, max_to_keep=2) as ck:
        for step in (1, 2, 3, 4):
            scaled = _scale(model, step)
            ck.save(step, scaled, opt_state, None, {"s": [step]})
        assert ck.all_steps() == [3, 4]
        m3, _, step, _, h = ck.restore(model, opt_state, step=3)
        assert step == 3 and h == {"s": [3]}
        assert _equal(m3, _scale(model, 3))
        with pytest.raises(ValueError, match=r"`step` 1 has no finalised checkpoint.*available steps: \[3, 4\]"):
            ck.restore(model, opt_state, step=1)
        with pytest.raises(ValueError, match="already checkpointed"):
            ck.save(4, model, opt_state)


def test_restore_empty_directory(tmp_path):
    model, opt_state = _state()
    with Checkpointer(tmp_path / "new") as ck:
        assert ck.latest_step() is None and ck.all_steps() == []
        with pytest.raises(FileNotFoundError, match="no finalised checkpoint"):
            ck.restore(model, opt_state)


def test_restore_wrong_shape_names_leaf(tmp_path):
    model, opt_state = _state()
    with Checkpointer(tmp_path) as ck:
        ck.save(1, model, opt_state)
        wide = eqx.nn.MLP(3, 2, 32, 2, activation=jax.nn.tanh, key=jax.random.key(0))
        wide_opt = ADAM.init(eqx.filter(wide, eqx.is_inexact_array))
        with pytest.raises(
            ValueError, match=r"leaf `\.layers\[0\]\.weight` has shape \(16, 3\).*expected shape \(32, 3\)"
        ):
            ck.restore(wide, wide_opt)
        deep = eqx.nn.MLP(3, 2, 16, 3, activation=jax.nn.tanh, key=jax.random.key(0))
        with pytest.raises(ValueError, match=r"`like_model`: different tree structure.*only in `like_model`"):
            ck.restore(deep, opt_state)
        with pytest.raises(ValueError, match="`like_opt_state`"):
            ck.restore(model, optax.sgd(0.1, momentum=0.9).init(eqx.filter(model, eqx.is_inexact_array)))
        f64 = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64) if eqx.is_inexact_array(x) else x, model)
        with pytest.raises(ValueError, match="dtype float32 in the checkpoint but expected.*dtype float64"):
            ck.restore(f64, opt_state)


def test_directory_is_a_file(tmp_path):
    f = tmp_path / "not_a_dir"
    f.write_text("x")
    with pytest.raises(ValueError, match="`directory`.*existing file"):
        Checkpointer(f)
    with pytest.raises(TypeError, match="`directory`"):
        Checkpointer(123)
    with pytest.raises(ValueError, match="`max_to_keep`"):
        Checkpointer(tmp_path / "d", max_to_keep=0)


def test_refuses_to_save_nonfinite_and_closed(tmp_path):
    model, opt_state = _state()
    bad = eqx.tree_at(lambda m: m.layers[0].bias, model, model.layers[0].bias.at[0].set(jnp.nan))
    ck = Checkpointer(tmp_path)
    with pytest.raises(FloatingPointError, match="step 1"):
        ck.save(1, bad, opt_state)
    assert ck.all_steps() == [] and not any(p.name.startswith("1") for p in tmp_path.iterdir())
    ck.close()
    ck.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        ck.save(2, model, opt_state)


def test_leftovers_moved_aside_at_start(tmp_path, caplog):
    """Leftovers of an interrupted save (an orbax tmp dir, a step dir without the commit marker) and of a deletion
    killed midway (orbax removes an old step file by file) are moved aside as `<step>.incomplete` at start (never
    deleted), with one warning; orbax then never logs "Metadata file does not exist" for them."""
    model, opt_state = _state()
    with Checkpointer(tmp_path, max_to_keep=None) as ck:
        for step in (3, 5):
            ck.save(step, _scale(model, step), opt_state, None, {"s": [step]})
    # (a) a crash before the atomic rename leaves `<step>.orbax-checkpoint-tmp*`
    tmp = tmp_path / "9.orbax-checkpoint-tmp-1234567"
    (tmp / "state").mkdir(parents=True)
    (tmp / "state" / "junk").write_bytes(b"\x00" * 10)
    # (b) a step directory that was never committed (e.g. a partial copy): no commit_success.txt
    (tmp_path / "12" / "state").mkdir(parents=True)
    (tmp_path / "12" / "state" / "junk").write_bytes(b"\x00" * 10)
    # (c) the deletion of old step 3 killed midway: its metadata files are gone, part of its arrays remain
    for name in ("_CHECKPOINT_METADATA", "meta"):
        path = tmp_path / "3" / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    caplog.set_level("WARNING")
    with pytest.warns(RuntimeWarning, match=r"moved 3 incomplete checkpoint directories.*'12 -> 12\.incomplete'"):
        ck = Checkpointer(tmp_path)
    with ck:
        assert sorted(p.name for p in tmp_path.iterdir()) == ["12.incomplete", "3.incomplete", "5", "9.incomplete"]
        assert ck.set_aside() == ["3.incomplete", "9.incomplete", "12.incomplete"]
        assert (tmp_path / "12.incomplete" / "state" / "junk").read_bytes() == b"\x00" * 10  # nothing deleted
        assert ck.all_steps() == [5] and ck.latest_step() == 5
        m, _, step, _, h = ck.restore(model, opt_state)
        assert step == 5 and h == {"s": [5]} and _equal(m, _scale(model, 5))
        with pytest.raises(ValueError, match="`step` 12 has no finalised checkpoint"):
            ck.restore(model, opt_state, step=12)
        assert not [r for r in caplog.records if "Metadata file does not exist" in r.getMessage()]
        # a leftover appearing while the Checkpointer is open is replaced by a later save of that step
        (tmp_path / "12" / "state").mkdir(parents=True)
        with pytest.warns(RuntimeWarning, match="replacing the unfinalised checkpoint directory of step 12"):
            ck.save(12, _scale(model, 2), opt_state, None, {"s": [12]})
        m, _, step, _, h = ck.restore(model, opt_state)
        assert step == 12 and h == {"s": [12]} and _equal(m, _scale(model, 2))
        assert ck.all_steps() == [5, 12]


def test_save_failing_midway_keeps_previous(tmp_path, monkeypatch):
    """An exception during orbax's finalisation (files written, not committed) leaves no valid new step."""
    model, opt_state = _state()
    with Checkpointer(tmp_path) as ck:
        ck.save(1, model, opt_state, None, {"s": [1]})

    async def crash(self):
        raise OSError("simulated crash during finalize")

    monkeypatch.setattr(ocp._src.path.atomicity.AtomicRenameTemporaryPath, "finalize", crash)
    ck = Checkpointer(tmp_path)
    with pytest.raises(OSError, match="simulated crash"):
        ck.save(2, _scale(model, 2), opt_state, None, {"s": [2]})
    monkeypatch.undo()
    with pytest.warns(RuntimeWarning, match=r"moved 1 incomplete checkpoint directory .*'2\.orbax-checkpoint-tmp"):
        fresh = Checkpointer(tmp_path)
    with fresh:
        assert fresh.all_steps() == [1]
        m, _, step, _, h = fresh.restore(model, opt_state)
        assert step == 1 and h == {"s": [1]} and _equal(m, model)


_KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    import jax.numpy as jnp
    from jaxsciml.train import Checkpointer
    ck = Checkpointer(sys.argv[1], max_to_keep=None)
    for step in range(1, 1000):
        model = {"w": jnp.full((1024, 1024), float(step))}  # 4 MB per save
        ck.save(step, model, None, None, {"step": [step]})
        print(step, flush=True)
    """
)


def _save_then_kill(directory, delay):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), XLA_FLAGS="")
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_SCRIPT, str(directory)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "1"  # at least one committed save
        time.sleep(delay)  # then kill at an arbitrary point of a later save
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_killed_mid_save_never_restores_invalid(tmp_path):
    """SIGKILL a process that saves 4 MB checkpoints in a loop: the step being written is never offered, every step
    offered restores to its exact values, and a resumed run can write that step again.

    The kill lands inside a save most of the time (observed 2 of 3); we retry up to 3 times to catch one."""
    for attempt, delay in enumerate((0.3, 0.45, 0.2)):
        directory = tmp_path / f"attempt{attempt}"
        _save_then_kill(directory, delay)
        if any(".orbax-checkpoint-tmp" in p.name for p in directory.iterdir()):
            break
    like = {"w": jnp.zeros((1024, 1024))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "removed 1 incomplete checkpoint directory", if any
        ck = Checkpointer(directory, max_to_keep=None)
    assert not [p for p in directory.iterdir() if ".orbax-checkpoint-tmp" in p.name]  # leftover moved aside
    with ck:
        steps = ck.all_steps()
        assert steps and steps == list(range(1, len(steps) + 1))
        for step in (steps[0], steps[-1]):
            m, _, s, _, h = ck.restore(like, None, step=step)
            assert s == step and h == {"step": [step]}
            assert float(m["w"].min()) == float(m["w"].max()) == float(step)
        nxt = steps[-1] + 1  # the step that was (possibly) being written when killed
        ck.save(nxt, {"w": jnp.full((1024, 1024), -1.0)}, None)
        m, _, s, _, _ = ck.restore(like, None)
        assert s == nxt and float(m["w"][0, 0]) == -1.0


def _fit_kwargs(ck, data=make_batch_from_key):
    return dict(
        has_aux=True, key=jax.random.key(11), checkpointer=ck, checkpoint_every=5, progress=False, data_arg="auto"
    )


@pytest.mark.parametrize("data_kind", ["key_callable", "list"])
def test_resume_is_bit_identical(tmp_path, data_kind):
    """fit 20 steps == fit 10, then a fresh Checkpointer + fresh template model, fit to 20 (resume)."""
    if data_kind == "key_callable":
        data = make_batch_from_key
    else:
        data = [make_batch(i) for i in range(7)]  # re-iterable: cycled, fast-forwarded on resume
    full = fit(make_model(), mse_aux, ADAM, data, 20, has_aux=True, key=jax.random.key(11), progress=False)
    with Checkpointer(tmp_path / "run", max_to_keep=2) as ck:
        first = fit(make_model(), mse_aux, ADAM, data, 10, **_fit_kwargs(ck))
        assert first.step == 10 and ck.all_steps() == [5, 10]
    # "new process": a new Checkpointer on the same directory and a differently initialised template.
    with Checkpointer(tmp_path / "run", max_to_keep=2) as ck:
        resumed = fit(make_model(seed=99), mse_aux, ADAM, data, 20, **_fit_kwargs(ck))
        assert ck.all_steps() == [15, 20]
    assert resumed.step == 20
    assert _equal(resumed.model, full.model)
    assert _equal(resumed.opt_state, full.opt_state)
    assert np.array_equal(jax.random.key_data(resumed.key), jax.random.key_data(full.key))
    assert resumed.history["loss"] == full.history["loss"]
    assert resumed.history["step"] == list(range(20))
    assert resumed.history["max_err"] == full.history["max_err"]


# ---------------------------------------------------------------------------------------------------- integrity
def _random_state():
    """Leaves with incompressible values (so that the bytes in the data files are the values themselves)."""
    model = {"w": jax.random.normal(jax.random.key(0), (96, 96)), "b": jnp.arange(16.0)}
    opt_state = {"mu": jax.random.normal(jax.random.key(1), (64, 48)), "count": jnp.array(7, jnp.int32)}
    like = jax.tree_util.tree_map(jnp.zeros_like, (model, opt_state))
    return model, opt_state, like


def _data_files(step_dir):
    """The array data files of a checkpoint (OCDBT data under `state/**/d/`), largest first."""
    files = [p for p in (step_dir / "state").glob("**/d/*") if p.is_file()]
    return sorted(files, key=lambda p: p.stat().st_size, reverse=True)


def _flip_bit(path, offset, bit):
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_bit_flips_in_array_data_are_detected(tmp_path):
    """Single-bit flips at random offsets of the array data files: none restores silently changed values. A flip is
    caught on restore (a ValueError naming the step and path; a digest mismatch also names the leaf), unless it hit
    bytes the restore does not read (OCDBT files can hold superseded copies), in which case the values restored are
    exactly the saved ones. With these incompressible leaves nearly every flip lands in values that are read.

    Each trial flips one bit in a fresh copy of the checkpoint (a fresh path, so no cached read hides the flip)."""
    model, opt_state, (like_m, like_o) = _random_state()
    key = jax.random.key(3)
    with Checkpointer(tmp_path / "pristine") as ck:
        ck.save(4, model, opt_state, key, {"loss": [1.0]})
    rng = random.Random(1234)
    caught, unread = [], 0
    for trial in range(16):
        directory = tmp_path / f"trial{trial}"
        shutil.copytree(tmp_path / "pristine", directory)
        files = _data_files(directory / "4")
        path = rng.choices(files, weights=[p.stat().st_size for p in files])[0]
        _flip_bit(path, rng.randrange(path.stat().st_size), rng.randrange(8))
        with Checkpointer(directory) as ck:
            try:
                m, s, _, k, _ = ck.restore(like_m, like_o, step=4)
            except ValueError as e:
                assert re.match(rf"checkpoint at step 4 \('{directory}/4'\)", str(e)), str(e)
                caught.append(str(e))
                # without an explicit step there is nothing older to fall back to
                with pytest.raises(ValueError, match="no checkpoint in .* verifies: step 4: checkpoint at step 4"):
                    ck.restore(like_m, like_o)
            else:
                assert _equal(m, model) and _equal(s, opt_state), "a bit flip restored changed values silently"
                assert np.array_equal(jax.random.key_data(k), jax.random.key_data(key))
                unread += 1
    assert unread <= 2, f"{unread} of 16 flips hit bytes that are never read"
    digest = [c for c in caught if "does not match the sha256 digest" in c]
    assert len(digest) >= 8  # most flips land in the values: only the digest catches those
    assert all(re.search(r"leaf `(model|opt_state)\['\w+'\]`", c) for c in digest)
    # the untouched copy still restores exactly
    with Checkpointer(tmp_path / "pristine") as ck:
        m, s, step, k, _ = ck.restore(like_m, like_o)
    assert step == 4 and _equal(m, model) and _equal(s, opt_state)
    assert np.array_equal(jax.random.key_data(k), jax.random.key_data(key))


def _edit_meta(step_dir, **changes):
    path = step_dir / "meta" / "metadata"
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


def test_step_metadata_checked_against_directory(tmp_path):
    model, opt_state = _state()
    with Checkpointer(tmp_path) as ck:
        ck.save(10, _scale(model, 1), opt_state, None, {"s": [10]})
        ck.save(20, _scale(model, 2), opt_state, None, {"s": [20]})
    _edit_meta(tmp_path / "20", step=21)
    with Checkpointer(tmp_path) as ck:
        with pytest.raises(ValueError, match=r"step 20 .*metadata says step 21 but it is stored as step 20"):
            ck.restore(model, opt_state, step=20)
        with pytest.warns(
            RuntimeWarning, match=r"skipped 1 corrupt checkpoint.*restored step 10.*step 20: .*says step 21"
        ):
            m, _, step, _, h = ck.restore(model, opt_state)
        assert step == 10 and h == {"s": [10]} and _equal(m, model)
        assert ck.all_steps() == [10] and (tmp_path / "20.corrupt").is_dir()  # moved aside, kept for inspection


def _corrupt(step_dir, how):
    if how == "bad_json":
        path = step_dir / "meta" / "metadata"
        path.write_text(path.read_text()[:-7])
    elif how == "truncated_data":  # every data file cut to a quarter (a partial copy, a disk that lost blocks)
        for path in _data_files(step_dir):
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 4])
    elif how == "bit_flip":  # one bit in every 64 bytes of every data file: sure to hit values that are read
        for path in _data_files(step_dir):
            for offset in range(0, path.stat().st_size, 64):
                _flip_bit(path, offset, offset % 8)
    else:
        raise AssertionError(how)


# orbax may report a failed read's leftover callbacks ("Event loop is closed") at garbage collection: noise.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("how", ["bad_json", "truncated_data", "bit_flip"])
def test_corrupt_newest_falls_back(tmp_path, how):
    """A corrupt newest checkpoint: an explicit restore names step and path; `restore()` and therefore `fit` fall back
    to the newest one that verifies, say what was skipped, and the resumed run equals an uninterrupted one."""
    data = make_batch_from_key
    full = fit(make_model(), mse_aux, ADAM, data, 10, has_aux=True, key=jax.random.key(11), progress=False)
    with Checkpointer(tmp_path, max_to_keep=None) as ck:
        first = fit(make_model(), mse_aux, ADAM, data, 10, **_fit_kwargs(ck))
        assert first.step == 10 and ck.all_steps() == [5, 10]
    _corrupt(tmp_path / "10", how)
    model, opt_state = _state()
    with Checkpointer(tmp_path, max_to_keep=None) as ck:
        with pytest.raises(ValueError, match=rf"checkpoint at step 10 \('{tmp_path}/10'\)") as info:
            ck.restore(model, opt_state, step=10)
        assert not isinstance(info.value, json.JSONDecodeError)
        with pytest.warns(RuntimeWarning, match=r"skipped 1 corrupt checkpoint.*restored step 5 instead: step 10: "):
            resumed = fit(make_model(seed=99), mse_aux, ADAM, data, 10, **_fit_kwargs(ck))
        assert ck.all_steps() == [5, 10]  # step 10 written again by the resumed run
    assert (tmp_path / "10.corrupt").is_dir()
    assert resumed.step == 10 and _equal(resumed.model, full.model) and _equal(resumed.opt_state, full.opt_state)
    assert resumed.history["loss"] == full.history["loss"]


_READ_ONLY_SCRIPT = textwrap.dedent(
    """
    import os, pathlib, subprocess, sys
    import jax.numpy as jnp
    from jaxsciml.train import Checkpointer

    def make_read_only(path):
        if sys.argv[2] == "chattr":  # as root: the immutable attribute stops root's writes too
            subprocess.run(["chattr", "+i", str(path)], check=True)
        else:
            os.chmod(path, 0o555)

    root = pathlib.Path(sys.argv[1])
    read_only = root / "read_only"
    read_only.mkdir()
    make_read_only(read_only)
    ro = Checkpointer(read_only)
    print("CREATED", ro.writable, flush=True)
    try:
        ro.save(1, {"w": jnp.ones(4)}, None)
        print("SAVED", flush=True)
    except PermissionError as e:
        print("CREATE_ERR", e, flush=True)
    ro.close()
    later = root / "later"
    ck = Checkpointer(later)
    ck.save(1, {"w": jnp.ones(4)}, None)
    make_read_only(later)  # the directory becomes read-only while training
    try:
        ck.save(2, {"w": jnp.ones(4)}, None, wait=False)
        print("SAVED", flush=True)
    except PermissionError as e:
        print("SAVE_ERR", e, flush=True)
    ck._check_writable = lambda: None  # skip our check: orbax's own directory creation fails in the background
    try:
        ck.save(3, {"w": jnp.ones(4)}, None, wait=False)
        ck.wait()
        print("SAVED", flush=True)
    except OSError as e:
        print("ORBAX_ERR", type(e).__name__, e, flush=True)
    ck.close()
    print("END", flush=True)
    """
)


def test_read_only_directory_fails_at_once_and_exits_promptly(tmp_path):
    """A read-only checkpoint directory opens read-only and refuses a save at once; one that turns read-only is
    refused before a save starts; and when orbax's own background save fails, the process still exits within seconds
    (orbax's writer threads used to wait 300 s for the step directory at interpreter exit).

    As root, permissions do not stop writes: the directories are then made immutable (`chattr +i`) instead."""
    how = "chmod"
    if os.geteuid() == 0:
        probe = tmp_path / "probe"
        probe.mkdir()
        if subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode != 0:
            pytest.skip("running as root and `chattr +i` is unavailable: cannot make a directory read-only")
        subprocess.run(["chattr", "-i", str(probe)], check=True)
        how = "chattr"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), XLA_FLAGS="")
    proc = subprocess.Popen(
        [sys.executable, "-c", _READ_ONLY_SCRIPT, str(tmp_path), how],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line.strip())
            if line.startswith("END"):
                break
        end = time.monotonic()
        proc.wait(timeout=120)
        exit_s = time.monotonic() - end
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for name in ("read_only", "later"):
            if how == "chattr" and (tmp_path / name).exists():
                subprocess.run(["chattr", "-i", str(tmp_path / name)], check=True)
            elif (tmp_path / name).exists():
                os.chmod(tmp_path / name, 0o755)
    assert proc.returncode == 0, lines
    denied = "(Permission denied|Operation not permitted)"
    assert len(lines) == 5, lines
    assert lines[0] == "CREATED False"
    created = rf"CREATE_ERR the checkpoint `directory` '{tmp_path}/read_only' is not writable: {denied}"
    assert re.match(created, lines[1])
    assert re.fullmatch(rf"SAVE_ERR the checkpoint `directory` '{tmp_path}/later' is not writable: {denied}", lines[2])
    assert lines[3].startswith("ORBAX_ERR PermissionError") and lines[4] == "END"
    assert exit_s < 30, f"the process took {exit_s:.0f} s to exit after a failed save"
