"""Multi-host data parallelism for real: 2 local processes joined by `jax.distributed.initialize` (CPU, gloo).

The worker (tests/train/_multiprocess_worker.py) trains with `fit` + `make_sharded_train_step` on a 4-device mesh
spanning both processes (2 fake CPU devices each), checkpointing with `Checkpointer`, and resumes from its own
checkpoint. Here we check that both processes agree exactly, that the result equals a single-process run over 4 fake
devices on the same global batches, and that the 2-process checkpoint restores into this single process (a different
process count) and resumes to the same result.
"""

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import equinox as eqx
import jax
import numpy as np

from jaxsciml.train import (
    Checkpointer,
    FitResult,
    data_mesh,
    fit,
    make_sharded_train_step,
    replicate,
    shard_batch,
)

from ._multiprocess_worker import EVERY, STEPS
from ._util import ADAM, make_batch, make_model, mse

REPO = pathlib.Path(__file__).resolve().parents[2]
NUM_PROCESSES = 2
# Generous bound for a loaded 2-core CI runner (about 20 s when the machine is idle); the processes are killed after it.
TIMEOUT_S = 300
# float32: the 2-process run and the 1-process run partition the batch identically over 4 devices; only the
# all-reduce (gloo vs in-process) may sum in another order, i.e. a few ulp per step; after 6 Adam steps (lr 1e-2) the
# parameters agree to ~1e-6 absolute.
RTOL, ATOL = 1e-5, 1e-6


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(workdir: pathlib.Path) -> tuple[list[int], str]:
    """Run the worker in NUM_PROCESSES processes; returns their exit codes (-9: killed) and the ends of their logs.

    Each process runs in its own session; whatever is still running when one fails or the time is up is killed (its
    whole process group), so nothing outlives the test."""
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    env.pop("XLA_FLAGS", None)  # the worker sets its own device count (2 per process)
    procs, logs = [], []
    try:
        for pid in range(NUM_PROCESSES):
            log = open(workdir / f"log_{pid}.txt", "w")  # noqa: SIM115 - closed below
            logs.append(log)
            cmd = [sys.executable, "-m", "tests.train._multiprocess_worker", str(port)]
            cmd += [str(NUM_PROCESSES), str(pid), str(workdir)]
            procs.append(
                subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            )
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes) or any(c not in (None, 0) for c in codes):
                break  # all done, or one failed (the others would wait for it forever)
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for log in logs:
            log.close()
    codes = [p.returncode for p in procs]
    text = "\n".join(
        f"--- process {i} ---\n{(workdir / f'log_{i}.txt').read_text()[-3000:]}" for i in range(len(procs))
    )
    return codes, text


def _params(model):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))]


def test_two_processes_train_checkpoint_and_resume(tmp_path, devices4):
    t0 = time.monotonic()
    for attempt in range(2):
        workdir = tmp_path / f"attempt{attempt}"
        workdir.mkdir()
        codes, logs = _launch(workdir)
        if codes == [0] * NUM_PROCESSES or "address already in use" not in logs.lower():
            break  # (retry only if the free port was taken meanwhile)
    tmp_path = workdir
    assert codes == [0] * NUM_PROCESSES, f"exit codes {codes} after {time.monotonic() - t0:.0f} s\n{logs}"
    out = [np.load(tmp_path / f"process_{i}.npz") for i in range(NUM_PROCESSES)]
    n = len([k for k in out[0].files if k.startswith("a_")])

    # Both processes hold identical parameters, PRNG keys and losses (bitwise).
    for k in out[0].files:
        np.testing.assert_array_equal(out[0][k], out[1][k], err_msg=k)
    # Resuming from the 2-process checkpoint with 2 processes is bit-identical to the uninterrupted run.
    for i in range(n):
        np.testing.assert_array_equal(out[0][f"a_{i}"], out[0][f"b_{i}"])
    np.testing.assert_array_equal(out[0]["loss_a"], out[0]["loss_b"])
    np.testing.assert_array_equal(out[0]["key_a"], out[0]["key_b"])
    two_process = [out[0][f"a_{i}"] for i in range(n)]
    assert bool(out[0]["differing_key_refused"])

    # One process, 4 fake devices, the same global batches: equal within float tolerance.
    mesh = data_mesh(devices4)
    step_fn = make_sharded_train_step(mse, ADAM, mesh)

    def data(step):
        return shard_batch(make_batch(step), mesh)

    kwargs = dict(key=jax.random.key(7), data_arg="step", train_step=step_fn, progress=False)
    ref = fit(replicate(make_model(), mesh), mse, ADAM, data, STEPS, **kwargs)
    for x, y in zip(_params(ref.model), two_process):
        np.testing.assert_allclose(x, y, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(ref.history["loss"], out[0]["loss_a"], rtol=RTOL)
    assert not np.allclose(_params(make_model())[0], two_process[0], atol=1e-3)  # training moved the weights

    # The 2-process checkpoints restore into this single process (another process count and device assignment):
    # the last one exactly; the middle one resumes to the same result.
    template = replicate(make_model(seed=5), mesh)
    like_opt = ADAM.init(eqx.filter(template, eqx.is_inexact_array))
    with Checkpointer(tmp_path / "ckpt_a") as ckpt:
        assert ckpt.all_steps() == [EVERY, STEPS]
        last = ckpt.restore(template, like_opt, step=STEPS)
        mid = ckpt.restore(template, like_opt, step=EVERY)
    for x, y in zip(_params(last[0]), two_process):
        np.testing.assert_array_equal(x, y)
    assert last[0].layers[0].weight.sharding.is_fully_replicated and len(last[0].layers[0].weight.devices()) == 4
    np.testing.assert_array_equal(jax.random.key_data(last[3]), out[0]["key_a"])
    model, opt_state, step, key, history = mid
    assert step == EVERY and len(history["loss"]) == EVERY
    resumed = fit(model, mse, ADAM, data, STEPS, start=FitResult(model, opt_state, step, key, history), **kwargs)
    for x, y in zip(_params(resumed.model), two_process):
        np.testing.assert_allclose(x, y, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(jax.random.key_data(resumed.key), out[0]["key_a"])
