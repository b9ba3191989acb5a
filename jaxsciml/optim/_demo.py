"""Demo for ``jaxsciml demo``: AdamW vs Shampoo (and its 4-bit variant) on an ill-conditioned least-squares problem.

Synthetic data: ``X`` (n x d) with singular values spread over ``10^1.5`` (Hessian condition number ~1e3),
``Y = X W*``; loss ``0.5 mean ||X W - Y||^2``. Every method runs the same number of full-batch steps from ``W = 0``
with a fixed, pre-tuned learning rate; rows report the final loss, steps to reach ``1e-4 x`` the initial loss, wall
time (compile excluded) and compile time.
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._shampoo import shampoo


def _problem(size: str):
    n, d, k, steps = (256, 32, 8, 200) if size == "small" else (1024, 128, 32, 400)
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.normal(size=(n, d)))
    v, _ = np.linalg.qr(rng.normal(size=(d, d)))
    x = jnp.asarray((u * np.logspace(0, 1.5, d)) @ v.T * math.sqrt(n) / 10, jnp.float32)
    w_true = jnp.asarray(rng.normal(size=(d, k)), jnp.float32)
    return x, x @ w_true, (d, k), steps


def run_demo(size: str = "small", progress: bool = True, out_dir: str | None = None) -> list[dict]:
    """Train AdamW, Shampoo and 4-bit Shampoo; return one row per method (see the module docstring)."""
    if size not in ("small", "medium"):
        raise ValueError(f"`size` must be 'small' or 'medium', got {size!r}")
    x, y, shape, steps = _problem(size)

    def loss(w):
        return 0.5 * jnp.mean(jnp.sum((x @ w - y) ** 2, -1))

    w0 = jnp.zeros(shape, jnp.float32)
    l0 = float(loss(w0))
    target = 1e-4 * l0
    opts = {
        "adamw": optax.adamw(0.1, weight_decay=0.0),
        "shampoo": shampoo(0.1, block_size=128, precondition_every=10, beta2=0.99, graft="adam"),
        "shampoo_4bit": shampoo(
            0.1, block_size=128, precondition_every=10, beta2=0.99, graft="adam", quantize_eigenvectors=True
        ),
    }
    chunk = 20
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(opts) * steps, desc="optim demo", leave=False)
    rows, curves = [], {}
    for name, opt in opts.items():

        @jax.jit
        def run_chunk(w, s, opt=opt):
            def step(carry, _):
                w, s = carry
                val, g = jax.value_and_grad(loss)(w)
                u, s = opt.update(g, s, w)
                return (optax.apply_updates(w, u), s), val

            (w, s), vals = jax.lax.scan(step, (w, s), None, length=chunk)
            return w, s, vals

        state = opt.init(w0)
        t0 = time.perf_counter()
        compiled = run_chunk.lower(w0, state).compile()
        compile_s = time.perf_counter() - t0
        w, chunks = w0, []
        t0 = time.perf_counter()
        for _ in range(steps // chunk):
            w, state, vals = compiled(w, state)
            chunks.append(np.asarray(vals))
            if bar is not None:
                bar.update(chunk)
        wall = time.perf_counter() - t0
        losses = np.concatenate(chunks + [np.asarray([loss(w)])])
        hit = np.nonzero(losses <= target)[0]
        curves[name] = losses
        rows.append(
            dict(
                pillar="optim",
                task="ill_conditioned_regression",
                method=name,
                metric="final_loss",
                value=float(losses[-1]),
                steps_or_nfe=int(hit[0]) if len(hit) else steps,
                wall_s=wall,
                compile_s=compile_s,
                reached_target=bool(len(hit)),
                initial_loss=l0,
            )
        )
    if bar is not None:
        bar.close()
    if out_dir is not None:
        import os

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        os.makedirs(out_dir, exist_ok=True)
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, c in curves.items():
            ax.semilogy(c, label=name)
        ax.axhline(target, color="k", ls=":", label="target")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title("ill-conditioned least squares")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "optim_demo.png"), dpi=100)
        plt.close(fig)
    return rows
