"""Shampoo-family optimizers vs optax AdamW and Muon, side by side with the same seeds.

Methods: ``adamw`` (optax), ``muon`` (optax.contrib), ``shampoo`` (fp32), ``soap`` (eigenvalue-corrected Shampoo),
``shampoo_4bit`` (4-bit eigenvectors), and on the regression task the New-Perspective variants ``shampoo2``
(exponent 1/2) and ``shampoo_pi2`` (two power-iteration levels). Tasks (deterministic full-batch losses):

(a) ``regression``: least squares ``0.5 mean ||X W - Y||^2`` with a design of condition number 1e3;
(b) ``digits_mlp``: a 64-128-10 tanh MLP on scikit-learn digits (train 80%, cross-entropy; metric test accuracy);
(c) ``nsm_poisson``: an NSM (``jaxsciml.pde.NSM``) on ``PoissonPeriodic`` with a fixed batch of sources
    (spectral loss; metric relative L2 error vs the exact solve);
(d) ``neural_ode``: a ``jaxsciml.ode.NeuralODE`` fitted to the time-1 flow of a damped linear spiral.

Every method's learning rate is tuned on a small grid (the best = fewest steps to the target loss, ties by final
loss); per-step time is the median of timed ``precondition_every``-step chunks (compile excluded), divided by the
chunk length, so root refreshes are amortised; wall time to target = steps to target x per-step time.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from benchmarks._common import single_threaded_lapack, time_call, write_results  # noqa: E402
from jaxsciml.optim import preconditioner_memory_bytes, shampoo, soap, state_memory_bytes  # noqa: E402

EVERY = 10  # root / eigenbasis refresh interval for all Shampoo-family methods


def methods(task: str, quick: bool = False) -> dict[str, optax.GradientTransformation]:
    """Optimizers with learning rate 1 (the tuned rate multiplies the update; every method is linear in it)."""
    common = dict(block_size=128, precondition_every=EVERY, beta2=0.99, graft="adam")
    out = {
        "adamw": optax.adamw(1.0, weight_decay=0.0),
        "muon": optax.contrib.muon(1.0),
        "shampoo": shampoo(1.0, **common),
        "soap": soap(1.0, beta1=0.9, beta2=0.999, shampoo_beta2=0.99, precondition_every=EVERY),
        "shampoo_4bit": shampoo(
            1.0, quantize_eigenvectors=True, four_bit_mode="eigenvalue_tracking", bjorck_iters=1, **common
        ),
    }
    if task == "regression" and not quick:
        out["shampoo2"] = shampoo(1.0, exponent_override=0.5, **common)
        out["shampoo_pi2"] = shampoo(1.0, power_iterations=2, **common)
    return out


# ----------------------------------------------------------------------------------------------------------- tasks
def task_regression(quick: bool):
    rng = np.random.default_rng(0)
    n, d, k = (256, 32, 8) if quick else (512, 64, 16)
    u, _ = np.linalg.qr(rng.normal(size=(n, d)))
    v, _ = np.linalg.qr(rng.normal(size=(d, d)))
    x = jnp.asarray((u * np.logspace(0, 1.5, d)) @ v.T * math.sqrt(n) / 10, jnp.float32)
    w_true = jnp.asarray(rng.normal(size=(d, k)), jnp.float32)
    y = x @ w_true

    def loss(p):
        return 0.5 * jnp.mean(jnp.sum((x @ p["w"] - y) ** 2, -1))

    params = {"w": jnp.zeros((d, k), jnp.float32)}
    l0 = float(loss(params))
    return dict(params=params, loss=loss, target=1e-4 * l0, metric=("final_loss", loss), steps=150 if quick else 400)


def task_digits(quick: bool):
    from sklearn.datasets import load_digits

    data = load_digits()
    xs = (data.data / 16.0).astype(np.float32)
    ys = data.target.astype(np.int32)
    perm = np.random.default_rng(0).permutation(len(xs))
    ntr = int(0.8 * len(xs))
    xtr, ytr = jnp.asarray(xs[perm[:ntr]]), jnp.asarray(ys[perm[:ntr]])
    xte, yte = jnp.asarray(xs[perm[ntr:]]), jnp.asarray(ys[perm[ntr:]])
    k1, k2 = jax.random.split(jax.random.key(0))
    h = 64 if quick else 128
    params = {
        "w1": jax.random.normal(k1, (64, h)) / 8.0,
        "b1": jnp.zeros(h),
        "w2": jax.random.normal(k2, (h, 10)) / math.sqrt(h),
        "b2": jnp.zeros(10),
    }

    def logits(p, x):
        return jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

    def loss(p):
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits(p, xtr), ytr))

    def acc(p):
        return jnp.mean(jnp.argmax(logits(p, xte), -1) == yte)

    return dict(params=params, loss=loss, target=0.02, metric=("test_accuracy", acc), steps=150 if quick else 400)


def task_nsm(quick: bool):
    from jaxsciml import pde

    # the smooth sources and unscaled output of the results recorded so far (the paper kernel is the pde default now)
    prob = pde.PoissonPeriodic(n=9 if quick else 15, length_scale=0.25, kernel="squared_exponential")
    model = pde.NSM(
        prob.basis, 1, 1, width=8 if quick else 16, depth=2, activation=jax.nn.gelu, output_scale=1.0,
        key=jax.random.key(0),
    )  # fmt: skip
    params, static = eqx.partition(model, eqx.is_inexact_array)
    batch = prob.sample(jax.random.key(1), 8)
    ref = jax.vmap(prob.solve)(batch)

    def loss(p):
        return pde.nsm_loss(eqx.combine(p, static), prob, batch)

    def rel(p):
        pred = pde.nsm_predict(eqx.combine(p, static), prob, batch)
        return pde.relative_error(pred, ref)

    l0 = float(loss(params))
    return dict(params=params, loss=loss, target=1e-2 * l0, metric=("relative_l2", rel), steps=100 if quick else 300)


def task_neural_ode(quick: bool):
    import diffrax

    from jaxsciml import ode

    a = jnp.array([[-0.1, 2.0], [-2.0, -0.1]])
    y0 = jax.random.normal(jax.random.key(2), (32 if quick else 64, 2))
    target = y0 @ jax.scipy.linalg.expm(a).T
    field = ode.MLPVectorField(2, 16 if quick else 32, 2, key=jax.random.key(3))
    cfg = ode.SolverConfig(solver=diffrax.Tsit5(), dt0=0.1, rtol=1e-4, atol=1e-6)
    model = ode.NeuralODE(field, 0.0, 1.0, config=cfg)
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss(p):
        m = eqx.combine(p, static)
        pred = jax.vmap(lambda y: m(y).ys)(y0)
        return jnp.mean(jnp.sum((pred - target) ** 2, -1))

    l0 = float(loss(params))
    return dict(params=params, loss=loss, target=1e-2 * l0, metric=("final_loss", loss), steps=60 if quick else 200)


TASKS: dict[str, Callable] = {
    "regression": task_regression,
    "digits_mlp": task_digits,
    "nsm_poisson": task_nsm,
    "neural_ode": task_neural_ode,
}


# ---------------------------------------------------------------------------------------------------------- runner
def make_runner(opt: optax.GradientTransformation, loss: Callable, steps: int):
    def step(carry, lr):
        p, s = carry
        val, g = jax.value_and_grad(loss)(p)
        u, s = opt.update(g, s, p)
        p = optax.apply_updates(p, jax.tree_util.tree_map(lambda x: lr * x, u))
        return (p, s), val

    @jax.jit
    def train(params, lr):
        s = opt.init(params)
        (p, s), losses = jax.lax.scan(step, (params, s), jnp.full((steps,), lr))
        return p, s, jnp.append(losses, loss(p))

    @jax.jit
    def chunk(params, state, lr):
        (p, s), losses = jax.lax.scan(step, (params, state), jnp.full((EVERY,), lr))
        return p, s, losses

    return train, chunk


def steps_to_target(losses: np.ndarray, target: float) -> int | None:
    hit = np.nonzero(np.asarray(losses) <= target)[0]
    return int(hit[0]) if len(hit) else None


def run_task(name: str, quick: bool, lrs: Sequence[float], repeats: int) -> list[dict]:
    t = TASKS[name](quick)
    params, loss, target, steps = t["params"], t["loss"], t["target"], t["steps"]
    metric_name, metric_fn = t["metric"]
    metric_fn = jax.jit(metric_fn)
    rows = []
    for mname, opt in methods(name, quick).items():
        train, chunk = make_runner(opt, loss, steps)
        t0 = time.perf_counter()
        train(params, jnp.float32(lrs[0]))[2].block_until_ready()
        compile_s = time.perf_counter() - t0
        best = None
        for lr in lrs:
            p, s, losses = train(params, jnp.float32(lr))
            losses = np.asarray(losses)
            finite = bool(np.all(np.isfinite(losses)))
            n_hit = steps_to_target(losses, target) if finite else None
            final = float(losses[-1]) if finite else float("inf")
            key = (n_hit if n_hit is not None else steps + 1, final)
            if best is None or key < best[0]:
                best = (key, lr, p, s, losses)
        (_, _), lr, p, s, losses = best
        # Timed from the common initial parameters and a fresh state, so every method pays the same model cost (for
        # the neural ODE, the solver's step count depends on the parameters) and the ratio isolates the optimizer.
        s0 = opt.init(params)
        timing = time_call(lambda s0=s0, lr=lr, chunk=chunk: chunk(params, s0, jnp.float32(lr)), repeats=repeats)
        per_step = timing["median_s"] / EVERY
        n_hit = steps_to_target(losses, target)
        metric = float(metric_fn(p))
        state0 = opt.init(params)
        rows.append(
            dict(
                task=name,
                method=mname,
                lr=lr,
                steps_to_target=n_hit if n_hit is not None else f">{steps}",
                final_loss=float(losses[-1]),
                metric=metric_name,
                final_metric=metric,
                per_step_ms=1e3 * per_step,
                wall_to_target_s=(n_hit * per_step) if n_hit is not None else float("nan"),
                state_bytes=state_memory_bytes(state0),
                precond_bytes=preconditioner_memory_bytes(state0),
                compile_s=compile_s,
            )
        )
    base = next(r for r in rows if r["method"] == "adamw")
    fp32 = next(r for r in rows if r["method"] == "shampoo")
    for r in rows:
        sb = base["steps_to_target"]
        r["steps_ratio"] = (
            r["steps_to_target"] / sb if isinstance(sb, int) and isinstance(r["steps_to_target"], int) else float("nan")
        )
        r["wall_ratio"] = (
            r["wall_to_target_s"] / base["wall_to_target_s"] if base["wall_to_target_s"] > 0 else float("nan")
        )
        r["per_step_ratio"] = r["per_step_ms"] / base["per_step_ms"]
        r["state_mem_ratio"] = r["state_bytes"] / base["state_bytes"]
        r["precond_vs_fp32"] = r["precond_bytes"] / fp32["precond_bytes"] if fp32["precond_bytes"] else float("nan")
        denom = abs(fp32["final_metric"]) if fp32["final_metric"] != 0 else 1.0
        r["metric_rel_diff_vs_fp32"] = abs(r["final_metric"] - fp32["final_metric"]) / denom
    return rows


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CI smoke size")
    parser.add_argument("--out", default=None, help="output directory (default benchmarks/results)")
    parser.add_argument("--tasks", default=None, help="comma-separated subset of " + ",".join(TASKS))
    args = parser.parse_args(argv)
    with single_threaded_lapack():  # scipy's OpenBLAS threads thrash on a loaded machine
        return _main(args)


def _main(args) -> dict:
    quick = args.quick
    tasks = args.tasks.split(",") if args.tasks else (["regression"] if quick else list(TASKS))
    lrs = (1e-1,) if quick else (3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
    repeats = 2 if quick else 30
    t0 = time.perf_counter()
    tables = {}
    for name in tasks:
        tables[name] = run_task(name, quick, lrs, repeats)
    total = time.perf_counter() - t0
    notes = build_notes(tables, lrs, total)
    config = dict(quick=quick, lr_grid=list(lrs), precondition_every=EVERY, tasks=tasks, repeats=repeats)
    payload = write_results("shampoo", tables, args.out, notes=notes, config=config)
    return payload


def build_notes(tables: dict, lrs, total_s: float) -> str:
    lines = [
        "## Notes",
        "",
        f"- Learning-rate sweep: every method, every task, grid {list(lrs)}; the best rate has the fewest steps to the "
        "target loss (ties: lowest final loss). Same seeds, data and initialisation for all methods.",
        f"- Shampoo family: roots/eigenbases every {EVERY} steps, block size 128, statistics EMA beta2 = 0.99, Adam "
        "grafting; SOAP betas (0.9, 0.999); 4-bit: Linear-2 4-bit eigenvectors, 1 Björck step, "
        "four_bit_mode='eigenvalue_tracking' (no full-precision statistics).",
        "- per_step_ms: median over repeats of a jitted 10-step chunk from the common initial parameters and a fresh "
        "optimizer state (compile excluded), divided by 10 -- the root "
        "refresh is amortised. wall_to_target_s = steps_to_target x per_step. Timings on a small CPU are noisy "
        "(ratios in one run are comparable; absolute times across runs are not). BLAS/LAPACK "
        "threads are limited to 1 (threadpoolctl): with OpenBLAS threads, jax's CPU `eigh` (LAPACK via scipy) "
        "took 1-200 ms for the same 128x128 matrix on this loaded machine, vs a steady 0.8 ms single-threaded.",
        "- Memory: bytes of the optimizer state at init (`state_memory_bytes`); precond_vs_fp32 compares the "
        "preconditioner part (`preconditioner_memory_bytes`) to fp32 Shampoo.",
        f"- Total benchmark time {total_s:.0f} s.",
        "",
        "### Targets",
        "",
    ]
    for name, rows in tables.items():
        base = next(r for r in rows if r["method"] == "adamw")
        for r in rows:
            if r["method"] == "adamw":
                continue
            fewer = isinstance(r["steps_to_target"], int) and (
                not isinstance(base["steps_to_target"], int) or r["steps_to_target"] < base["steps_to_target"]
            )
            lines.append(
                f"- {name}/{r['method']}: steps to target {r['steps_to_target']} vs adamw {base['steps_to_target']} "
                f"({'fewer' if fewer else 'NOT fewer'}); per-step {r['per_step_ratio']:.2f}x adamw "
                f"({'<= 1.3x' if r['per_step_ratio'] <= 1.3 else '> 1.3x'}); state {r['state_mem_ratio']:.2f}x adamw"
                + (
                    f"; preconditioner {r['precond_vs_fp32']:.3f}x fp32, final {r['metric']} rel. diff vs fp32 "
                    f"{r['metric_rel_diff_vs_fp32']:.3%}"
                    if r["method"] == "shampoo_4bit"
                    else ""
                )
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
