"""Shared helpers for the benchmark scripts: timing, machine facts, result files.

Every benchmark script exposes ``main(argv=None) -> dict`` accepting ``--quick`` (CI-sized smoke run) and ``--out DIR``
(default ``benchmarks/results``) and writes ``<name>.json`` and ``<name>.md`` there via :func:`write_results`.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine_info() -> dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    for pkg in ["jax", "jaxlib", "equinox", "optax", "diffrax", "orbax-checkpoint", "numpy"]:
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:  # pragma: no cover
            versions[pkg] = "n/a"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:  # pragma: no cover
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "versions": versions,
    }


def single_threaded_lapack():
    """Context that limits BLAS/LAPACK to one thread (threadpoolctl; a no-op without it).

    jax's CPU ``eigh`` runs LAPACK through scipy's OpenBLAS, whose threads thrash on a loaded machine. One ``eigh``
    runs first so that the library is loaded (threadpoolctl only limits libraries already loaded)."""
    import contextlib

    import jax.numpy as jnp

    jnp.linalg.eigh(jnp.eye(2)).eigenvalues.block_until_ready()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(limits=1)


def block(x: Any) -> Any:
    return jax.block_until_ready(x)


def time_call(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Time ``fn()`` (which must return JAX values): first call = compile+run, then median over ``repeats``."""
    t0 = time.perf_counter()
    block(fn())
    first = time.perf_counter() - t0
    for _ in range(max(warmup - 1, 0)):
        block(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        block(fn())
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"median_s": med, "min_s": min(times), "first_call_s": first, "compile_s": max(first - med, 0.0)}


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, floatfmt: str = ".4g") -> str:
    if not rows:
        return "(no rows)\n"
    if columns is None:  # union of the rows' keys, in order of first appearance (rows may differ in columns)
        columns = list(dict.fromkeys(k for r in rows for k in r))
    columns = list(columns)

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return format(v, floatfmt)
        return str(v)

    out = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        out.append("| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |")
    return "\n".join(out) + "\n"


def write_results(
    name: str,
    tables: dict[str, Sequence[dict[str, Any]]],
    out_dir: str | os.PathLike | None = None,
    notes: str = "",
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``<name>.json`` and ``<name>.md`` with machine facts; returns the JSON payload."""
    out = Path(out_dir) if out_dir is not None else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    payload = {"name": name, "machine": machine_info(), "config": config or {}, "tables": tables, "notes": notes}
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str))
    (out / f"{name}.md").write_text(render_markdown(payload))
    return payload


def render_markdown(payload: dict[str, Any]) -> str:
    """The ``<name>.md`` report of a benchmark payload (as written to ``<name>.json``)."""
    m = payload["machine"]
    config = payload.get("config")
    md = [
        f"# {payload['name']}",
        "",
        f"- date: {m['date']}",
        f"- machine: {m['cpu']} ({m['cpu_count']} cores), {m['platform']}",
        f"- backend: {m['jax_backend']}, python {m['python']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        "",
    ]
    if config:
        md += ["config: `" + json.dumps(config, default=str) + "`", ""]
    for title, rows in payload["tables"].items():
        md += [f"## {title}", "", markdown_table(rows)]
    if payload.get("notes"):
        md += ["", payload["notes"], ""]
    return "\n".join(md)
