"""4-bit Shampoo vs fp32 Shampoo on the ``shampoo_peers`` tasks: optimizer-state bytes, per-step update error on a
common gradient sequence, and final loss of independent training runs.

- ``state``: bytes of the whole optimizer state pytree and of its preconditioner part
  (:func:`jaxsciml.optim.memory_breakdown`), as ratios to fp32 Shampoo at the same settings.
- ``update error``: fp32 Shampoo trains the model; at every step the 4-bit variant (its own state, fed the same
  gradients) gives its update, and ``||u_4 - u_32|| / ||u_32||`` is taken per matrix leaf; reported: the median and
  the 90th percentile over steps and leaves, and the mean cosine.
- ``final loss``: each variant trains from the common start (same minibatches, learning rate of fp32 ``shampoo`` from
  the peer grid); ratio of final losses to fp32.

Shampoo settings are those of ``shampoo_peers`` (block 128, refresh every 10 steps, RMSprop grafting, beta2 0.99).
"""

from __future__ import annotations

import argparse
import os
import sys
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
from benchmarks.shampoo_peers import TASKS, jaxsciml_shampoo  # noqa: E402
from jaxsciml.optim import memory_breakdown  # noqa: E402

LRS = {"digits_autoencoder": 1e-2, "char_lm": 3e-3, "deep_linear": 1e-3, "digits_mlp": 3e-2}

VARIANTS = {
    "fp32": {},
    "4bit_roots": dict(quantize_eigenvectors=True, four_bit_mode="roots"),
    "4bit_eigenvalue_tracking": dict(quantize_eigenvectors=True, four_bit_mode="eigenvalue_tracking"),
}


def make(lr, **kw) -> optax.GradientTransformation:
    base = jaxsciml_shampoo(lr)  # the matched settings; rebuilt below with the 4-bit options
    del base
    from benchmarks import shampoo_peers as sp
    from jaxsciml.optim import shampoo

    return shampoo(
        lr,
        block_size=sp.BLOCK,
        beta1=sp.BETA1,
        beta2=sp.BETA2,
        epsilon=sp.EPS,
        precondition_every=sp.EVERY,
        graft="rmsprop",
        graft_beta2=sp.BETA2,
        graft_epsilon=sp.GRAFT_EPS,
        **kw,
    )


def run_task(name: str, quick: bool, variants: dict) -> list[dict]:
    t = TASKS[name](quick)
    params, steps, loss = t["params"], t["steps"], t["loss"]
    batch_loss = t.get("batch_loss", lambda p, i: loss(p))
    smooth = t.get("smooth", 1)
    lr = LRS[name]
    opts = {k: make(lr, **kw) for k, kw in variants.items()}

    # update error on the fp32 trajectory's gradients
    ref = opts["fp32"]
    others = [k for k in opts if k != "fp32"]

    def step(carry, i):
        p, s_ref, s_oth = carry
        g = jax.grad(batch_loss)(p, i)
        u, s_ref = ref.update(g, s_ref, p)
        errs, coss, s_new = [], [], []
        for k, s in zip(others, s_oth):
            v, s = opts[k].update(g, s, p)
            s_new.append(s)
            e, c = [], []
            for a, b in zip(jax.tree_util.tree_leaves(u), jax.tree_util.tree_leaves(v)):
                if a.ndim < 2:
                    continue
                na = jnp.linalg.norm(a)
                e.append(jnp.linalg.norm(b - a) / na)
                c.append(jnp.sum(a * b) / (na * jnp.linalg.norm(b)))
            errs.append(jnp.stack(e))
            coss.append(jnp.stack(c))
        return (optax.apply_updates(p, u), s_ref, tuple(s_new)), (jnp.stack(errs), jnp.stack(coss))

    init = (params, ref.init(params), tuple(opts[k].init(params) for k in others))
    _, (errs, coss) = jax.jit(lambda c: jax.lax.scan(step, c, jnp.arange(steps)))(init)
    errs, coss = np.asarray(errs), np.asarray(coss)  # (steps, variant, leaf)

    def train(opt):
        def body(carry, i):
            p, s = carry
            val, g = jax.value_and_grad(batch_loss)(p, i)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), val

        (p, _), vals = jax.lax.scan(body, (params, opt.init(params)), jnp.arange(steps))
        return vals, loss(p)

    rows = []
    base_state = memory_breakdown(ref.init(params))
    finals = {}
    for k, opt in opts.items():
        vals, final = jax.jit(lambda opt=opt: train(opt))()
        vals = np.asarray(vals)
        finals[k] = float(np.mean(vals[-smooth:])) if smooth > 1 else float(final)
        br = memory_breakdown(opt.init(params))
        row = dict(
            task=name,
            variant=k,
            lr=lr,
            final_loss=finals[k],
            final_vs_fp32=finals[k] / finals["fp32"],
            state_bytes=br["total"],
            state_vs_fp32=br["total"] / base_state["total"],
            preconditioner_vs_fp32=br["preconditioner"] / base_state["preconditioner"],
        )
        if k in others:
            j = others.index(k)
            row.update(
                update_relerr_median=float(np.median(errs[:, j])),
                update_relerr_p90=float(np.percentile(errs[:, j], 90)),
                update_cos_mean=float(np.mean(coss[:, j])),
            )
        rows.append(row)
        print(row, flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    parser.add_argument("--tasks", default="digits_autoencoder,char_lm")
    parser.add_argument("--name", default="shampoo_4bit")
    args = parser.parse_args(argv)
    load = [os.getloadavg()]
    tables = {}
    with single_threaded_lapack():
        for name in args.tasks.split(","):
            tables[name] = run_task(name, args.quick, VARIANTS)
            load.append(os.getloadavg())
    notes = "\n".join(
        [
            "## Notes",
            "",
            "- update_relerr: ||u_4bit - u_fp32|| / ||u_fp32|| per matrix leaf and step, both optimizers fed the "
            "gradients of the fp32 trajectory (median and p90 over steps x leaves); update_cos_mean likewise.",
            "- final_loss: independent training runs, same start, minibatches and learning rate (char_lm: mean "
            "training loss of the last 10 steps).",
            "- state_vs_fp32: whole optimizer state (incl. momentum and graft accumulators); "
            "preconditioner_vs_fp32: statistics + roots + eigenvalues + 4-bit eigenvectors only.",
            f"- load average (1, 5, 15 min) per task: {[tuple(round(v, 2) for v in x) for x in load]} "
            "(2 cores shared with other sessions).",
        ]
    )
    return write_results(args.name, tables, args.out, notes=notes, config=dict(quick=args.quick, lrs=LRS))


if __name__ == "__main__":
    main()
