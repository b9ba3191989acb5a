"""Root refreshes never issue a batched CPU LAPACK call, so they cannot deadlock XLA's intra-op thread pool.

jaxlib 0.10.0-0.10.2 split a batched CPU ``eigh`` (and qr/svd/cholesky/lu/trsm) into chunks on XLA's intra-op pool and
block a pool thread until they finish; two such calls running concurrently (one per block shape inside the refresh's
``lax.cond``, or one per device under ``mesh=``) could hang forever on a 2-core machine. Two checks:

1. static, deterministic: the compiled CPU update of every optimizer (shampoo, soap, 4-bit, ``mesh=``) on multi-shape
   models contains LAPACK custom calls only on single matrices (rank-2 operands);
2. dynamic: the failing pattern (multi-shape model, ``precondition_every=1``) runs in a subprocess, with the user's
   default XLA/thread settings plus 4 fake devices, for 100 refreshes in total over several block-shape mixes, bounded
   by a timeout (``--runslow``: 3 processes x 400 refreshes).
"""

import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh

from jaxsciml.optim import scale_by_shampoo, scale_by_soap
from jaxsciml.optim._roots import eigh_psd, stacked_eigh

MIXES = [
    {"a": (128, 64), "b": (64, 32), "c": (32, 16)},
    {"w1": (96, 80), "w2": (80, 48), "conv": (3, 3, 8, 16), "bias": (16,)},
    {"x": (300, 70), "y": (130, 5), "z": (40, 40)},
]

_CALL = re.compile(r'custom_call_target="(lapack_\w+)"')
_SHAPES = re.compile(r"operand_layout_constraints=\{([^}]*)\}")


def lapack_operand_ranks(compiled_text: str) -> list[tuple[str, int]]:
    """``(target, rank)`` of every operand of every LAPACK custom call in compiled HLO text."""
    out = []
    for line in compiled_text.splitlines():
        m = _CALL.search(line)
        if not m:
            continue
        shapes = _SHAPES.search(line)
        assert shapes, f"cannot read operand shapes of {m.group(1)}: {line[:300]}"
        for dims in re.findall(r"\w+\[([\d,]*)\]", shapes.group(1)):
            out.append((m.group(1), len([d for d in dims.split(",") if d])))
    return out


def _zeros(shapes):
    return {k: jnp.zeros(v) for k, v in shapes.items()}


def _optimizers(devices, full):
    mesh = Mesh(np.array(devices), ("x",))
    opts = {
        "shampoo": scale_by_shampoo(block_size=64, precondition_every=1),
        "shampoo-4bit": scale_by_shampoo(block_size=64, precondition_every=1, quantize_eigenvectors=True),
        "shampoo-mesh": scale_by_shampoo(block_size=64, precondition_every=1, mesh=mesh),
        "soap": scale_by_soap(block_size=64, precondition_every=1),
    }
    if full:
        opts["soap-mesh"] = scale_by_soap(block_size=64, precondition_every=1, mesh=mesh)
        opts["shampoo-4bit-mesh"] = scale_by_shampoo(
            block_size=64, precondition_every=1, quantize_eigenvectors=True, mesh=mesh
        )
    return opts


def test_stacked_eigh_matches_batched_and_is_unbatched_on_cpu():
    a = jax.random.normal(jax.random.key(0), (5, 12, 12))
    a = a @ jnp.swapaxes(a, -1, -2)
    w, q = jax.jit(stacked_eigh)(a)
    w_ref, _ = jnp.linalg.eigh(a)
    np.testing.assert_allclose(w, w_ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(q @ (w[..., None] * jnp.swapaxes(q, -1, -2)), a, rtol=1e-4, atol=1e-3)
    ranks = lapack_operand_ranks(jax.jit(eigh_psd).lower(a).compile().as_text())
    assert ranks and all(r == 2 for _, r in ranks), ranks
    # the detector does see a batched call
    batched = lapack_operand_ranks(jax.jit(jnp.linalg.eigh).lower(a).compile().as_text())
    assert any(r == 3 for _, r in batched), batched
    with pytest.raises(ValueError, match="stack of matrices"):
        stacked_eigh(a[0])


def _check_no_batched_lapack(devices, mix, full):
    params = _zeros(MIXES[mix])
    for name, opt in _optimizers(devices, full).items():
        state = opt.init(params)
        ranks = lapack_operand_ranks(jax.jit(opt.update).lower(params, state).compile().as_text())
        assert ranks, f"{name}: no LAPACK call found; the check would be vacuous"
        bad = [(t, r) for t, r in ranks if r != 2]
        assert not bad, f"{name} on mix {mix}: batched LAPACK calls {bad}"


def test_compiled_updates_have_no_batched_lapack_call(devices4):
    _check_no_batched_lapack(devices4, 0, full=False)


@pytest.mark.slow
@pytest.mark.parametrize("mix", range(len(MIXES)))
def test_compiled_updates_have_no_batched_lapack_call_all(devices4, mix):
    _check_no_batched_lapack(devices4, mix, full=True)


_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh
    from jaxsciml.optim import shampoo, soap
    mixes = {mixes!r}
    iters = int(sys.argv[1])
    if sys.argv[2] == "merged":  # one model holding every block shape of the first two mixes
        mixes = [{{f"{{m}}{{k}}": s for m, mix in enumerate(mixes[:2]) for k, s in mix.items()}}]
    mesh = Mesh(np.array(jax.devices()[:4]), ("x",))
    makers = [
        lambda: shampoo(1e-3, block_size=64, precondition_every=1),
        lambda: soap(1e-3, block_size=64, precondition_every=1),
        lambda: shampoo(1e-3, block_size=64, precondition_every=1, quantize_eigenvectors=True),
        lambda: shampoo(1e-3, block_size=64, precondition_every=1, mesh=mesh),
    ]
    done = 0
    for m, shapes in enumerate(mixes):
        params = {{k: jax.random.normal(jax.random.key(i), s) for i, (k, s) in enumerate(shapes.items())}}
        for j, make in enumerate(makers):
            opt = make()
            state = opt.init(params)
            step = jax.jit(opt.update)
            for i in range(iters):
                g = jax.tree_util.tree_map(lambda x: x * (1.0 + 0.01 * i), params)
                u, state = step(g, state, params)
                jax.block_until_ready(u)
                done += 1
                print(done, end=" ", flush=True)
            print("| mix", m, "opt", j, "ok", flush=True)
    print("\\nrefreshes", done, flush=True)
    """
)


def _cpu_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):  # not Linux, or the process is gone
        return None


def _run_trials(iters: int, timeout: float, merged: bool, idle: float = 45.0) -> str:
    """Run the script; fail on a non-zero exit, on ``timeout``, or (Linux) when the process uses no CPU for ``idle``
    seconds while unfinished -- the signature of the deadlock (a busy but slow machine keeps the CPU time growing)."""
    env = dict(os.environ)  # the user's defaults (no thread limits) plus the 4 fake devices of tests/conftest.py
    code = _SCRIPT.format(mixes=MIXES)
    args = [sys.executable, "-c", code, str(iters), "merged" if merged else "separate"]
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, text=True, env=env)
        t0 = last_change = time.monotonic()
        last = _cpu_ticks(proc.pid)
        verdict = None
        while proc.poll() is None:
            time.sleep(0.5)
            now, ticks = time.monotonic(), _cpu_ticks(proc.pid)
            if ticks != last:
                last, last_change = ticks, now
            if ticks is not None and now - last_change > idle:
                verdict = f"used no CPU for {idle:.0f} s (deadlock)"
            elif now - t0 > timeout:
                verdict = f"did not finish within {timeout:.0f} s"
            if verdict:
                proc.kill()
                proc.wait()
                break
        out.seek(0)
        text = out.read()
    if verdict:
        pytest.fail(f"optimizer updates {verdict}; progress:\n{text[-2000:]}")
    assert proc.returncode == 0, text[-3000:]
    return text


def test_multi_shape_refreshes_finish_in_subprocess():
    """One model with the shapes of two mixes (7 block shapes), 4 optimizers x 25 refreshes = 100 refreshes."""
    out = _run_trials(iters=25, timeout=900, merged=True)
    assert "refreshes 100" in out, out


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(3))
def test_multi_shape_refreshes_finish_in_subprocess_many(trial):
    """3 processes x 3 mixes x 4 optimizers x 34 refreshes."""
    out = _run_trials(iters=34, timeout=900, merged=False)
    assert "refreshes 408" in out, out


def test_masked_and_chained_state_compiles_without_batched_lapack(devices4):
    """The same holds inside optax combinators (chain/masked), which is how models use the transforms."""
    params = _zeros(MIXES[0])
    opt = optax.chain(
        optax.masked(scale_by_shampoo(block_size=64, precondition_every=1), {"a": True, "b": True, "c": False})
    )
    state = opt.init(params)
    ranks = lapack_operand_ranks(jax.jit(opt.update).lower(params, state, params).compile().as_text())
    assert ranks and all(r == 2 for _, r in ranks), ranks
