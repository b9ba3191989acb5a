"""Shampoo at scale on CPU: one root refresh and one ordinary step for large single parameters.

For each parameter shape (default ``(1024, 1024)`` and ``(2048, 4096)``, ``block_size=1024``: 1 and 8 blocks, so 2
and 16 statistics of 1024 x 1024) and each optimizer -- ``jaxsciml.optim.shampoo`` with ``root_method="eigh"`` and
``"newton"``, and ``distributed_shampoo`` (``optax-shampoo``, skipped with a printed reason when not importable; the
compatibility aliases of :mod:`benchmarks.shampoo_peers` apply) at the matched settings of
:mod:`benchmarks.shampoo_peers` -- this times the jitted ``update`` on a step that recomputes every root (refresh) and
on a step that does not (ordinary), from the same state (a state after 3 non-refresh updates with random gradients,
its step counter set to hit or miss the refresh). Methods are interleaved round by round; medians are reported,
compile time separately. Memory: the state bytes and XLA's compiled-memory analysis of the update (arguments +
outputs + temporaries - aliased bytes), i.e. the peak the update needs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks._common import block, single_threaded_lapack, write_results  # noqa: E402
from benchmarks.shampoo_peers import EVERY, jaxsciml_shampoo, load_peers  # noqa: E402
from jaxsciml.optim import state_memory_bytes  # noqa: E402

SHAPES = ((1024, 1024), (2048, 4096))
QUICK_SHAPES = ((64, 128),)


def _set_count(state, count: int):
    """The state with its Shampoo step counter set (jaxsciml: a chain whose first state has ``count``)."""

    def fix(s):
        if hasattr(s, "_replace") and hasattr(s, "count") and hasattr(s, "stats"):
            return s._replace(count=jnp.asarray(count, jnp.int32))
        return s

    if isinstance(state, tuple) and not hasattr(state, "_fields"):
        return tuple(fix(s) for s in state)
    return fix(state)


def _peak_bytes(compiled) -> int | None:
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)
    except Exception:  # noqa: BLE001 -- not every backend reports it
        return None


def _training_loop(opt):
    """``EVERY`` steps of SGD-style training (``params += update``) in one jitted ``lax.scan`` with the optimizer
    state donated, as a training loop runs it: state buffers are updated in place, not re-allocated per step.

    The gradient of step ``i`` is ``(1 + i / 100) * grads``: with the same gradient every step XLA would hoist the
    Gram matrices ``G G^T`` out of the loop (loop-invariant code motion) and time a step that does less work."""

    def loop(state, params, grads):
        def body(carry, i):
            p, s = carry
            g = jax.tree_util.tree_map(lambda x: x * (1.0 + i / 100.0), grads)
            u, s = opt.update(g, s, p)
            return (jax.tree_util.tree_map(lambda a, b: a + 1e-3 * b, p, u), s), None

        return jax.lax.scan(body, (params, state), jnp.arange(EVERY, dtype=jnp.float32))[0]

    return jax.jit(loop, donate_argnums=0)


def _copy(tree):
    return block(jax.tree_util.tree_map(jnp.copy, tree))


def run_shape(shape, opts: dict, repeats: int, refresh_repeats: int, block_size: int, log) -> list[dict]:
    params = {"w": jnp.zeros(shape, jnp.float32)}
    grads = [{"w": jax.random.normal(k, shape, jnp.float32)} for k in jax.random.split(jax.random.key(0), 4)]
    prepared = {}
    for name, opt in opts.items():
        upd = jax.jit(opt.update)
        t0 = time.perf_counter()
        compiled = upd.lower(grads[0], opt.init(params), params).compile()
        compile_s = time.perf_counter() - t0
        s = _set_count(opt.init(params), 1)  # start past the step-1 refresh: the 3 warm-up updates only accumulate
        for g in grads[:3]:
            _, s = compiled(g, s, params)
        block(s)
        # jaxsciml refreshes when (t - 1) % EVERY == 0 (t = count + 1); distributed_shampoo when count % EVERY == 0
        s_refresh, s_plain = _set_count(s, EVERY), _set_count(s, EVERY + 1)
        loop = _training_loop(opt).lower(_copy(s_plain), params, grads[3]).compile()
        prepared[name] = (compiled, s_refresh, s_plain, loop, compile_s, state_memory_bytes(s), _peak_bytes(compiled))
        log(f"  {shape} {name}: compiled in {compile_s:.1f} s")
    times = {n: {"refresh": [], "step": [], "loop": []} for n in prepared}
    names = list(prepared)
    for r in range(max(repeats, refresh_repeats)):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            compiled, s_refresh, s_plain, loop = prepared[n][:4]
            kinds = (("refresh", s_refresh),) if r < refresh_repeats else ()
            kinds += (("step", s_plain),) if r < repeats else ()
            for kind, s in kinds:
                t0 = time.perf_counter()
                block(compiled(grads[3], s, params))
                times[n][kind].append(time.perf_counter() - t0)
            if r < refresh_repeats:  # EVERY steps from t = EVERY + 2: exactly one refresh inside the loop
                s = _copy(s_plain)
                t0 = time.perf_counter()
                block(loop(s, params, grads[3]))
                times[n]["loop"].append(time.perf_counter() - t0)
        log(f"  {shape} round {r + 1} done")
    rows = []
    for n in names:
        compile_s, state_b, peak_b = prepared[n][4:]
        refresh, step = statistics.median(times[n]["refresh"]), statistics.median(times[n]["step"])
        rows.append(
            dict(
                shape=f"{shape[0]}x{shape[1]}",
                method=n,
                block_size=block_size,
                refresh_s=refresh,
                step_ms=1e3 * step,
                amortised_ms=1e3 * (refresh + (EVERY - 1) * step) / EVERY,
                loop_step_ms=1e3 * statistics.median(times[n]["loop"]) / EVERY,
                compile_s=compile_s,
                state_mib=state_b / 2**20,
                peak_update_mib=peak_b / 2**20 if peak_b is not None else float("nan"),
            )
        )
    for ref in ("shampoo_eigh", "distributed_shampoo"):
        base = next((r for r in rows if r["method"] == ref), None)
        if base is None:
            continue
        tag = "eigh" if ref == "shampoo_eigh" else "ds"
        for r in rows:
            for key in ("refresh_s", "step_ms", "loop_step_ms"):
                r[f"{key.rsplit('_', 1)[0]}_vs_{tag}"] = r[key] / base[key]
    return rows


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CI smoke size (64x128, block 64)")
    parser.add_argument("--out", default=None, help="output directory (default benchmarks/results)")
    parser.add_argument("--repeats", type=int, default=None, help="ordinary-step timings (default 5; quick 1)")
    parser.add_argument("--refresh-repeats", type=int, default=None, help="refresh timings (default 2; quick 1)")
    args = parser.parse_args(argv)
    with single_threaded_lapack():  # scipy's OpenBLAS threads thrash on a loaded machine
        return _main(args)


def _main(args) -> dict:
    log = lambda s: print(s, flush=True)  # noqa: E731
    shapes = QUICK_SHAPES if args.quick else SHAPES
    block_size = 64 if args.quick else 1024
    repeats = args.repeats or (1 if args.quick else 5)
    refresh_repeats = args.refresh_repeats or (1 if args.quick else 2)
    opts = {
        "shampoo_eigh": jaxsciml_shampoo(1.0, "eigh", block_size),
        "shampoo_newton": jaxsciml_shampoo(1.0, "newton", block_size),
    }
    peers = load_peers()
    ds = peers["distributed_shampoo"]
    if callable(ds):
        opts["distributed_shampoo"] = ds(1.0, block_size)
    else:
        log(f"skipping distributed_shampoo: {ds}")
    load = [os.getloadavg()]
    t0 = time.perf_counter()
    tables = {}
    for shape in shapes:
        tables[f"{shape[0]}x{shape[1]}"] = run_shape(shape, opts, repeats, refresh_repeats, block_size, log)
        load.append(os.getloadavg())
        payload = _write(args, tables, shapes, block_size, repeats, refresh_repeats, load, time.perf_counter() - t0, ds)
    return payload


def _write(args, tables, shapes, block_size, repeats, refresh_repeats, load, total, ds) -> dict:
    """Write the results so far (after every shape, so that a long run leaves its finished shapes behind)."""
    config = dict(
        quick=args.quick,
        shapes=[list(s) for s in shapes],
        block_size=block_size,
        precondition_every=EVERY,
        repeats=repeats,
        refresh_repeats=refresh_repeats,
        loadavg=[list(x) for x in load],
        total_s=round(total, 1),
        peers={"distributed_shampoo": "ok" if callable(ds) else ds},
    )
    notes = "\n".join(
        [
            "## Notes",
            "",
            "- refresh_s: one update that recomputes every root; step_ms: one update that does not; amortised_ms: "
            f"(refresh + {EVERY - 1} steps) / {EVERY}. Medians over interleaved rounds ({refresh_repeats} refreshes, "
            f"{repeats} ordinary steps per method); compile excluded. Both are single jitted `update` calls without "
            "buffer donation, so they include allocating a fresh output state. loop_step_ms: a jitted `lax.scan` of "
            f"{EVERY} training steps (exactly one refresh) with the state donated, divided by {EVERY}: the amortised "
            "step as a training loop (e.g. `jaxsciml.train.fit`) runs it. `*_vs_ds`: ratio to distributed_shampoo. "
            "BLAS/LAPACK threads limited to 1; XLA's own CPU thread pool as default.",
            "- peak_update_mib: XLA memory analysis of the compiled update (arguments + outputs + temporaries - "
            "aliased); state_mib: optimizer-state bytes.",
            f"- load average (1, 5, 15 min) before / after each shape: {[tuple(round(v, 2) for v in x) for x in load]}"
            f"; total {total:.0f} s.",
        ]
    )
    return write_results("shampoo_scale", tables, args.out, notes=notes, config=config)


if __name__ == "__main__":
    main()
