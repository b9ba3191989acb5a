"""Per-step latency of Shampoo's root refresh: synchronised (every root on one step in ``precondition_every``) vs
``stagger_refresh=True`` (each step refreshes its share), on the ``char_lm`` transformer of ``shampoo_peers``.

Both optimizers train the same model from the same start on the same minibatches, one jitted step (gradient, update,
parameter update; state donated) at a time, *interleaved* step by step so that machine load hits both alike. Every
step is timed with ``block_until_ready``; the compiled step is warmed up on a throw-away copy first (compile time
reported apart). Reported: median, p90, p99 and max step time, p99 / median, and the final held-out loss (equal loss
is the condition for making staggering the default). Settings: those of ``shampoo_peers`` (``jaxsciml_shampoo``:
block 128, refresh every 10 steps, RMSprop grafting, beta2 0.99), learning rate 3e-3 (the best of the peer grid for
``shampoo`` on ``char_lm``), and the same for 4-bit roots.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from benchmarks._common import single_threaded_lapack, write_results  # noqa: E402
from benchmarks.shampoo_peers import BETA1, BETA2, BLOCK, EPS, EVERY, GRAFT_EPS, TASKS  # noqa: E402
from jaxsciml.optim import shampoo  # noqa: E402

LR = 3e-3


def make(stagger: bool, four_bit: bool = False) -> optax.GradientTransformation:
    return shampoo(
        LR,
        block_size=BLOCK,
        beta1=BETA1,
        beta2=BETA2,
        epsilon=EPS,
        precondition_every=EVERY,
        graft="rmsprop",
        graft_beta2=BETA2,
        graft_epsilon=GRAFT_EPS,
        quantize_eigenvectors=four_bit,
        stagger_refresh=stagger,
    )


def fresh(tree):
    """Distinct buffers for every leaf (donation rejects a buffer that appears twice, e.g. shared zeros)."""
    return jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), tree)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    parser.add_argument("--epochs", type=int, default=2, help="passes over the task's minibatch budget")
    parser.add_argument("--four-bit", action="store_true", help="also compare the 4-bit roots mode")
    parser.add_argument("--name", default=None, help="result file name")
    args = parser.parse_args(argv)
    with single_threaded_lapack():
        return _main(args)


def _main(args) -> dict:
    task = TASKS["char_lm"](args.quick)
    params, batch_loss, valid = task["params"], task["batch_loss"], jax.jit(task["loss"])
    steps = task["steps"] * args.epochs
    variants = {"synchronised": make(False), "staggered": make(True)}
    if args.four_bit:
        variants.update({"4bit_synchronised": make(False, True), "4bit_staggered": make(True, True)})
    load = [os.getloadavg()]
    runs = {}
    for name, opt in variants.items():

        def step(p, s, i, opt=opt):
            val, g = jax.value_and_grad(batch_loss)(p, i)
            u, s = opt.update(g, s, p)
            return optax.apply_updates(p, u), s, val

        fn = jax.jit(step, donate_argnums=(0, 1))
        t0 = time.perf_counter()
        jax.block_until_ready(fn(fresh(params), fresh(opt.init(params)), jnp.int32(0)))
        runs[name] = dict(fn=fn, p=fresh(params), s=fresh(opt.init(params)))
        runs[name]["compile_s"] = time.perf_counter() - t0
        runs[name]["times"], runs[name]["losses"] = [], []
    for i in range(steps):
        for name in variants:
            r = runs[name]
            t0 = time.perf_counter()
            r["p"], r["s"], val = jax.block_until_ready(r["fn"](r["p"], r["s"], jnp.int32(i)))
            r["times"].append(time.perf_counter() - t0)
            r["losses"].append(float(val))
    load.append(os.getloadavg())
    rows = []
    for name, r in runs.items():
        t = 1e3 * np.asarray(r["times"])
        med, p99 = float(np.median(t)), float(np.percentile(t, 99))
        rows.append(
            dict(
                variant=name,
                steps=steps,
                median_ms=med,
                p90_ms=float(np.percentile(t, 90)),
                p99_ms=p99,
                max_ms=float(t.max()),
                p99_over_median=p99 / med,
                mean_ms=float(t.mean()),
                train_loss_last10=float(np.mean(r["losses"][-10:])),
                valid_loss=float(valid(r["p"])),
                compile_s=r["compile_s"],
                phase_median_ms=[float(np.median(t[k::EVERY])) for k in range(EVERY)],
            )
        )
        print(rows[-1], flush=True)
    notes = "\n".join(
        [
            "## Notes",
            "",
            f"- char_lm ({'quick' if args.quick else 'full'} size), {steps} steps ({args.epochs} passes over the "
            f"minibatches), learning rate {LR}, refresh every {EVERY} steps; variants interleaved step by step.",
            "- phase_median_ms[k]: median time of the steps t with (t - 1) % 10 == k (k = 0: the synchronised "
            "refresh steps).",
            "- Target (issue 19): p99 <= 1.5x median with staggering, at equal final loss.",
            f"- load average (1, 5, 15 min) before / after: {[tuple(round(v, 2) for v in x) for x in load]} "
            "(2 cores shared with other sessions).",
        ]
    )
    return write_results(
        args.name or ("shampoo_refresh" if not args.quick else "shampoo_refresh_quick"),
        {"step_times": rows},
        args.out,
        notes=notes,
        config=dict(lr=LR, every=EVERY, steps=steps, quick=args.quick, loadavg=[list(x) for x in load]),
    )


if __name__ == "__main__":
    main()
