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

# learning rates of fp32 ``shampoo`` picked by the peer grid (benchmarks/results/shampoo_peers.md)
LRS = {"digits_autoencoder": 1e-2, "char_lm": 3e-3, "deep_linear": 1e-3, "digits_mlp": 3e-2, "regression": 1e-1}

VARIANTS = {
    "fp32": {},
    "4bit": dict(quantize_eigenvectors=True),  # the default 4-bit mode ("eigenbasis")
    "4bit_roots": dict(quantize_eigenvectors=True, four_bit_mode="roots"),
    "4bit_eigenvalue_tracking": dict(quantize_eigenvectors=True, four_bit_mode="eigenvalue_tracking"),
}

# a model with a few matrices (an MLP 256-128-128-10 and an embedding 64x128), for the bytes table
FEW_MATRICES = {
    "w1": (256, 128),
    "w2": (128, 128),
    "w3": (128, 10),
    "emb": (64, 128),
    "b1": (128,),
    "b2": (128,),
}


def bytes_rows(name: str, params, lr: float = 1e-3) -> list[dict]:
    """Bytes of each variant's state on ``params`` (preconditioner part and total) vs fp32 Shampoo and AdamW."""
    ref = memory_breakdown(make(lr).init(params))
    adamw = memory_breakdown(optax.adamw(lr).init(params))
    rows = []
    for k, kw in VARIANTS.items():
        br = memory_breakdown(make(lr, **kw).init(params))
        rows.append(
            dict(
                model=name,
                variant=k,
                preconditioner_bytes=br["preconditioner"],
                preconditioner_vs_fp32=br["preconditioner"] / ref["preconditioner"],
                total_bytes=br["total"],
                total_vs_fp32=br["total"] / ref["total"],
                total_vs_adamw=br["total"] / adamw["total"],
                **{f"{f}_bytes": br.get(f, 0) for f in ("stats", "roots", "eigvals", "eigvecs")},
            )
        )
    return rows


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

    leaf_names = [
        jax.tree_util.keystr(kp) + " " + "x".join(map(str, x.shape))
        for kp, x in jax.tree_util.tree_flatten_with_path(params)[0]
        if x.ndim >= 2
    ]
    leaf_rows = []
    for j, k in enumerate(others):
        for li, leaf in enumerate(leaf_names):
            e = errs[:, j, li]
            leaf_rows.append(
                dict(
                    task=name,
                    variant=k,
                    leaf=leaf,
                    relerr_median=float(np.median(e)),
                    relerr_p90=float(np.percentile(e, 90)),
                    relerr_last_quarter_median=float(np.median(e[3 * len(e) // 4 :])),
                    cos_mean=float(np.mean(coss[:, j, li])),
                )
            )
    rows = []
    base_state = memory_breakdown(ref.init(params))
    adamw_state = memory_breakdown(optax.adamw(lr).init(params))
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
            state_vs_adamw=br["total"] / adamw_state["total"],
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
    return rows, leaf_rows


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    parser.add_argument("--tasks", default="digits_autoencoder,char_lm,digits_mlp,regression")
    parser.add_argument("--name", default="shampoo_4bit")
    args = parser.parse_args(argv)
    load = [os.getloadavg()]
    few = {k: jnp.zeros(v, jnp.float32) for k, v in FEW_MATRICES.items()}
    tables: dict[str, list[dict]] = {"bytes (model with a few matrices)": bytes_rows("few_matrices", few)}
    print(tables, flush=True)
    leaf_table: list[dict] = []
    with single_threaded_lapack():
        for name in args.tasks.split(","):
            tables[name], leaf_rows = run_task(name, args.quick, VARIANTS)
            leaf_table += leaf_rows
            load.append(os.getloadavg())
    tables["update error per leaf"] = leaf_table
    notes = "\n".join(
        [
            "## Notes",
            "",
            "- update_relerr: ||u_4bit - u_fp32|| / ||u_fp32|| per matrix leaf and step, both optimizers fed the "
            "gradients of the fp32 trajectory (median and p90 over steps x leaves); update_cos_mean likewise. The "
            "per-leaf table gives the same per leaf (and the median over the last quarter of the steps).",
            "- 4bit is the default 4-bit mode (four_bit_mode='eigenbasis', quant_block_size 32, bjorck_iters 2): "
            "statistics held in their 4-bit eigenbasis (fp32 diagonal, off-diagonal upper triangle as int16 "
            "fixed-point correlations m_ij / sqrt(m_ii m_jj)), root in that basis as fp32 diagonal + float8 "
            "off-diagonal; 4bit_roots (the paper's form: 4-bit eigenvectors with Björck rectification and fp32 "
            "eigenvalues of the root) keeps fp32 statistics; "
            "4bit_eigenvalue_tracking is the paper-like schedule (statistics only as 4-bit eigenvectors + "
            "eigenvalues, eigenvalues tracked between refreshes).",
            "- final_loss: independent training runs, same start, minibatches and learning rate (char_lm: mean "
            "training loss of the last 10 steps).",
            "- state_vs_fp32 / state_vs_adamw: whole optimizer state (incl. momentum and graft accumulators) vs fp32 "
            "Shampoo's / optax.adamw's; "
            "preconditioner_vs_fp32: statistics + roots + eigenvalues + 4-bit eigenvectors only.",
            f"- load average (1, 5, 15 min) per task: {[tuple(round(v, 2) for v in x) for x in load]} "
            "(2 cores shared with other sessions).",
        ]
    )
    return write_results(args.name, tables, args.out, notes=notes, config=dict(quick=args.quick, lrs=LRS))


if __name__ == "__main__":
    main()
