"""Overhead of the training loop: ``train.fit`` against hand-written loops running the very same step.

Scientific-ML models are small, so a step takes microseconds to milliseconds and the loop's own overhead (Python,
dispatch, a host sync per step) can decide the wall time. For each task the same loss, optimiser and data function
are run as

- ``fit``: ``jaxsciml.train.fit(model, loss, opt, data, steps, progress=False)`` (data a jittable ``data(step)`` or
  ``data(key)`` callable);
- ``python_loop``: one jitted step (data generation, loss, gradient, update) called from a Python loop, with no host
  sync until the end;
- ``scan``: all steps inside one jitted ``lax.scan`` (the floor: one device call);
- ``train_operator`` (NSM only): ``jaxsciml.pde.train_operator``.

Tasks: ``mlp`` (``eqx.nn.MLP`` 8->32->32->1, batch 64, Adam, regression on fresh Gaussian inputs per step) and
``nsm_poisson`` (an NSM on ``pde.PoissonPeriodic``, fresh GRF sources per step, spectral loss, Adam).

Timing: every method is compiled/run once first (``first_s``; ``compile_s = first_s - median``), then the methods
are timed in interleaved rounds (method order rotated each round) and the median over rounds is reported; every
timed call ends with ``jax.block_until_ready``. ``ratio_vs_scan`` = median / median of ``scan``; ``cpu_s`` and
``cpu_ratio_vs_scan`` the same from this process's CPU time (all threads), which other sessions on a shared machine
disturb less than wall time. The load average is
recorded before and after since the machine may be shared. ``--baseline FILE`` adds the ``runs`` table of an earlier
run (e.g. before a change) to the report as ``before``.

Also (full runs; ``--no-variants`` / ``--first-call-trials 0`` to skip): ``first_call``, the first 100 steps of the
MLP in fresh Python processes, ``fit`` against a plain ``jax.jit`` step in a Python loop (compilation included, the
methods alternated over trials, medians), and the MLP ``VARIANTS`` grid (dataset of 512 or 4096 rows, batch 32 or 256,
``data(step)`` slices or ``data(key)`` samples), ``fit`` against ``scan``. ``--tasks mlp`` runs a subset of the main
tasks and names the results ``train_loop_mlp``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from benchmarks._common import write_results  # noqa: E402
from jaxsciml import pde, train  # noqa: E402


def _hand_written(loss_fn: Callable, opt: Any, data: Callable, by_key: bool):
    """The step of ``fit`` written by hand, as a Python loop and as one ``lax.scan``: ``(python_loop, scan)``."""

    def step(model, opt_state, x):
        batch = data(x)
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, batch)
        updates, opt_state = opt.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    jstep = eqx.filter_jit(step)

    def python_loop(model, steps, key):
        opt_state = opt.init(eqx.filter(model, eqx.is_inexact_array))
        loss = None
        for i in range(steps):
            if by_key:
                key, sub = jax.random.split(key)
                model, opt_state, loss = jstep(model, opt_state, sub)
            else:
                model, opt_state, loss = jstep(model, opt_state, jnp.asarray(i))  # an array: a Python int is static
        return jax.block_until_ready((model, loss))

    @eqx.filter_jit
    def _scan(model, key, steps):
        params, static = eqx.partition(model, eqx.is_array)
        opt_state = opt.init(eqx.filter(model, eqx.is_inexact_array))

        def body(carry, i):
            p, s, k = carry
            if by_key:
                k, x = jax.random.split(k)
            else:
                x = i
            m, s, loss = step(eqx.combine(p, static), s, x)
            return (eqx.filter(m, eqx.is_array), s, k), loss

        (params, _, _), losses = jax.lax.scan(body, (params, opt_state, key), jnp.arange(steps))
        return eqx.combine(params, static), losses

    def scan(model, steps, key):
        return jax.block_until_ready(_scan(model, key, steps))

    return python_loop, scan


def task_mlp(steps: int, quick: bool = False) -> dict[str, Any]:
    model = eqx.nn.MLP(8, 1, 32, 2, key=jax.random.key(0))
    opt = optax.adam(1e-3)
    base = jax.random.key(1)

    def data(step):
        x = jax.random.normal(jax.random.fold_in(base, step), (64, 8))
        return x, jnp.sum(jnp.sin(x), axis=1, keepdims=True)

    def loss_fn(m, batch):
        x, y = batch
        return jnp.mean((jax.vmap(m)(x) - y) ** 2)

    python_loop, scan = _hand_written(loss_fn, opt, data, by_key=False)
    methods = {
        "fit": lambda: train.fit(model, loss_fn, opt, data, steps, progress=False),
        "python_loop": lambda: python_loop(model, steps, None),
        "scan": lambda: scan(model, steps, None),
    }
    return {"methods": methods, "config": {"model": "MLP 8-32-32-1", "batch": 64, "optimizer": "adam(1e-3)"}}


def task_nsm_poisson(steps: int, quick: bool = False) -> dict[str, Any]:
    n, width, depth = (7, 8, 1) if quick else (11, 16, 2)
    prob = pde.PoissonPeriodic(n=n)
    model = pde.NSM(prob.basis, 1, 1, width=width, depth=depth, activation=jax.nn.gelu, key=jax.random.key(0))
    opt = optax.adam(1e-3)
    key = jax.random.key(1)

    def data(k):
        return prob.sample(k, 16)

    def loss_fn(m, f):
        return pde.nsm_loss(m, prob, f)

    python_loop, scan = _hand_written(loss_fn, opt, data, by_key=True)
    methods = {
        "fit": lambda: train.fit(model, loss_fn, opt, data, steps, key=key, progress=False),
        "python_loop": lambda: python_loop(model, steps, key),
        "scan": lambda: scan(model, steps, key),
        "train_operator": lambda: pde.train_operator(model, loss_fn, data, steps, key, optimizer=opt),
    }
    config = {"problem": f"PoissonPeriodic(n={n})", "model": f"NSM width {width} depth {depth}", "batch": 16,
              "optimizer": "adam(1e-3)"}  # fmt: skip
    return {"methods": methods, "config": config}


def task_mlp_variant(rows: int, batch: int, call: str) -> Callable[[int, bool], dict[str, Any]]:
    """The benchmark's MLP on a fixed dataset of ``rows`` samples, minibatches of ``batch`` rows drawn as
    ``data(step)`` (consecutive slices, cycling over the dataset) or ``data(key)`` (rows sampled with replacement)."""

    def task(steps: int, quick: bool = False) -> dict[str, Any]:
        model = eqx.nn.MLP(8, 1, 32, 2, key=jax.random.key(0))
        opt = optax.adam(1e-3)
        xs = jax.random.normal(jax.random.key(2), (rows, 8))
        ys = jnp.sum(jnp.sin(xs), axis=1, keepdims=True)
        per_epoch = rows // batch

        def data_step(step):
            start = (step % per_epoch) * batch
            return jax.lax.dynamic_slice_in_dim(xs, start, batch), jax.lax.dynamic_slice_in_dim(ys, start, batch)

        def data_key(k):
            idx = jax.random.randint(k, (batch,), 0, rows)
            return xs[idx], ys[idx]

        def loss_fn(m, b):
            x, y = b
            return jnp.mean((jax.vmap(m)(x) - y) ** 2)

        by_key = call == "key"
        data = data_key if by_key else data_step
        key = jax.random.key(1) if by_key else None
        python_loop, scan = _hand_written(loss_fn, opt, data, by_key=by_key)
        methods = {
            "fit": lambda: train.fit(model, loss_fn, opt, data, steps, key=key, progress=False),
            "scan": lambda: scan(model, steps, key),
        }
        config = {"model": "MLP 8-32-32-1", "rows": rows, "batch": batch, "data": f"data({call})",
                  "optimizer": "adam(1e-3)"}  # fmt: skip
        return {"methods": methods, "config": config}

    return task


TASKS = {"mlp": task_mlp, "nsm_poisson": task_nsm_poisson}
VARIANTS = {
    f"mlp_rows{rows}_batch{batch}_{call}": task_mlp_variant(rows, batch, call)
    for rows in (512, 4096)
    for batch in (32, 256)
    for call in ("step", "key")
}


# ------------------------------------------------------------------------------------ first call, fresh process
_FIRST_CALL_WORKER = """
import sys, time
import equinox as eqx, jax, jax.numpy as jnp, optax
from jaxsciml import train
method, steps = sys.argv[1], int(sys.argv[2])
model = eqx.nn.MLP(8, 1, 32, 2, key=jax.random.key(0))
opt = optax.adam(1e-3)
base = jax.random.key(1)
def data(step):
    x = jax.random.normal(jax.random.fold_in(base, step), (64, 8))
    return x, jnp.sum(jnp.sin(x), axis=1, keepdims=True)
def loss_fn(m, batch):
    x, y = batch
    return jnp.mean((jax.vmap(m)(x) - y) ** 2)
jax.block_until_ready(model)
t0 = time.perf_counter()
if method == "fit":
    out = train.fit(model, loss_fn, opt, data, steps, progress=False)
    jax.block_until_ready((out.model, out.opt_state))
else:
    @eqx.filter_jit
    def step(model, opt_state, i):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, data(i))
        updates, opt_state = opt.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), opt_state, loss
    opt_state = opt.init(eqx.filter(model, eqx.is_inexact_array))
    for i in range(steps):
        model, opt_state, loss = step(model, opt_state, jnp.asarray(i))
    jax.block_until_ready((model, opt_state, loss))
print("SECONDS", time.perf_counter() - t0)
"""


def first_call(trials: int, steps: int = 100) -> list[dict[str, Any]]:
    """Wall seconds of the first ``steps`` steps in a fresh Python process (imports and model construction excluded,
    tracing and compilation included): ``fit`` against a plain ``jax.jit`` step called from a Python loop. Trials
    alternate the two methods; medians over trials."""
    import subprocess

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    times: dict[str, list[float]] = {"fit": [], "jit_loop": []}
    for t in range(trials):
        for m in ["fit", "jit_loop"] if t % 2 == 0 else ["jit_loop", "fit"]:
            res = subprocess.run(
                [sys.executable, "-c", _FIRST_CALL_WORKER, m, str(steps)],
                capture_output=True, text=True, check=True, env=env,
            )  # fmt: skip
            times[m].append(float(res.stdout.split("SECONDS")[-1]))
    med = {m: statistics.median(v) for m, v in times.items()}
    return [
        {
            "method": m,
            "steps": steps,
            "trials": trials,
            "median_s": med[m],
            "min_s": min(v),
            "max_s": max(v),
            "ratio_vs_jit_loop": med[m] / med["jit_loop"],
        }  # fmt: skip
        for m, v in times.items()
    ]


def _block(out: Any) -> Any:
    """Block on a method's result (``fit`` returns a dataclass, ``train_operator`` a tuple holding a dict)."""
    if isinstance(out, train.FitResult):
        return jax.block_until_ready((out.model, out.opt_state))
    return jax.block_until_ready(jax.tree_util.tree_leaves(out, is_leaf=lambda x: isinstance(x, dict)))


def bench_task(name: str, steps: int, rounds: int, quick: bool = False) -> list[dict[str, Any]]:
    spec = {**TASKS, **VARIANTS}[name](steps, quick)
    methods: dict[str, Callable[[], Any]] = spec["methods"]
    first, fit_info = {}, {}
    for m, fn in methods.items():
        t0 = time.perf_counter()
        out = fn()
        _block(out)
        first[m] = time.perf_counter() - t0
        if isinstance(out, train.FitResult):  # fit's own timing of its first (compiling) call
            fit_info = {k: getattr(out, k) for k in ("compile_s", "step_s") if hasattr(out, k)}
    times: dict[str, list[float]] = {m: [] for m in methods}
    cpu: dict[str, list[float]] = {m: [] for m in methods}
    order = list(methods)
    for r in range(rounds):
        for m in order[r % len(order) :] + order[: r % len(order)]:
            t0, c0 = time.perf_counter(), time.process_time()
            _block(methods[m]())
            times[m].append(time.perf_counter() - t0)
            cpu[m].append(time.process_time() - c0)
    med = {m: statistics.median(t) for m, t in times.items()}
    med_cpu = {m: statistics.median(t) for m, t in cpu.items()}
    rows = []
    for m in methods:
        row = {
            "task": name,
            "method": m,
            "steps": steps,
            "median_s": med[m],
            "min_s": min(times[m]),
            "per_step_us": 1e6 * med[m] / steps,
            "first_s": first[m],
            "compile_s": max(first[m] - med[m], 0.0),
            "ratio_vs_scan": med[m] / med["scan"],
            "cpu_s": med_cpu[m],
            "cpu_ratio_vs_scan": med_cpu[m] / med_cpu["scan"],
        }
        if m == "fit":
            row.update({f"fit_reported_{k}": v for k, v in fit_info.items()})
        rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CI smoke size")
    parser.add_argument("--out", default=None, help="output directory (default benchmarks/results)")
    parser.add_argument("--rounds", type=int, default=None, help="timed interleaved rounds per task (default 7)")
    parser.add_argument("--baseline", default=None, help="an earlier train_loop JSON whose runs become `before`")
    parser.add_argument("--variants", action=argparse.BooleanOptionalAction, default=None,
                        help="also run the MLP variants grid (default: on unless --quick)")  # fmt: skip
    parser.add_argument("--first-call-trials", type=int, default=None,
                        help="fresh-process first-call trials (default 7; 0 with --quick)")  # fmt: skip
    parser.add_argument("--tasks", default=None, help="comma-separated subset of the main tasks (mlp,nsm_poisson)")
    args = parser.parse_args(argv)
    steps = {"mlp": 200, "nsm_poisson": 40} if args.quick else {"mlp": 2000, "nsm_poisson": 500}
    rounds = args.rounds or (2 if args.quick else 7)
    variants = (not args.quick) if args.variants is None else args.variants
    trials = args.first_call_trials if args.first_call_trials is not None else (0 if args.quick else 7)
    names = args.tasks.split(",") if args.tasks else list(TASKS)
    load_before = os.getloadavg()
    tables: dict[str, list[dict[str, Any]]] = {}
    if trials:
        tables["first_call"] = first_call(trials)
    rows: list[dict[str, Any]] = []
    for name in names:
        rows += bench_task(name, steps[name], rounds, args.quick)
    if variants:
        for name in VARIANTS:
            rows += bench_task(name, steps["mlp"], rounds, args.quick)
    load_after = os.getloadavg()
    tables["runs"] = rows
    summary = []
    for r in rows:
        if r["method"] != "fit":
            continue
        s = {"task": r["task"], "fit_over_scan": r["ratio_vs_scan"], "fit_over_scan_cpu": r.get("cpu_ratio_vs_scan")}
        py = [q["median_s"] for q in rows if q["task"] == r["task"] and q["method"] == "python_loop"]
        s["fit_over_python_loop"] = r["median_s"] / py[0] if py else float("nan")
        summary.append(s)
    if args.baseline:
        before = json.loads(Path(args.baseline).read_text())
        tables["before"] = before["tables"]["runs"]
        for s in summary:
            old = [r for r in tables["before"] if r["task"] == s["task"] and r["method"] == "fit"]
            s["before_fit_over_scan"] = old[0]["ratio_vs_scan"] if old else float("nan")
        if "first_call" in before["tables"]:
            tables["first_call_before"] = before["tables"]["first_call"]
    tables["summary"] = summary
    notes = (
        f"Load average (1, 5, 15 min) before: {tuple(round(x, 2) for x in load_before)}, after: "
        f"{tuple(round(x, 2) for x in load_after)}. Medians over {rounds} interleaved rounds, compile excluded "
        "(reported as compile_s). Target: fit <= 1.3x scan. `cpu_s`: the median CPU seconds of this process (all "
        "threads) for the same calls, less sensitive than wall time to other sessions on the machine. first_call: the "
        "first 100 steps of the MLP in a fresh "
        f"process ({trials} trials, methods alternated, medians; imports excluded, compilation included). Target: "
        "fit <= 1.5x jit_loop. The machine's 2 cores are shared with other sessions: single timings vary, the "
        "interleaved ratios are the meaningful numbers."
    )
    every = {**TASKS, **VARIANTS} if variants else TASKS
    config = {"steps": steps, "rounds": rounds, "tasks": {n: every[n](1, args.quick)["config"] for n in every}}
    name = "train_loop" if set(names) == set(TASKS) else "train_loop_" + "_".join(names)
    return write_results(name + ("_quick" if args.quick else ""), tables, args.out, notes, config)


if __name__ == "__main__":
    main()
