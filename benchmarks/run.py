"""Run every benchmark (or chosen ones) and write a combined summary.

Usage (from the repository root)::

    python benchmarks/run.py            # real sizes; results into benchmarks/results/
    python benchmarks/run.py --quick    # CI-sized smoke run
    python benchmarks/run.py --only shampoo,nsm --out /tmp/results
    python benchmarks/run.py --summary-only   # rebuild SUMMARY.md and plots from the JSON results already there
    python benchmarks/run.py --only nsm_authors --authors-path ../Neural-Spectral-Methods \\
        --authors-python ../venv-nsm/bin/python   # the side-by-side against the authors' code (never by default)

Each benchmark script writes ``<name>.json`` and ``<name>.md``; this runner adds ``SUMMARY.md`` (machine, versions,
date and every table) and one comparison plot per benchmark (``<name>.png``: every column whose name contains
``ratio`` or ``_vs_``, per row).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._common import RESULTS_DIR, machine_info, markdown_table, render_markdown  # noqa: E402

BENCHMARKS = (
    "ode_regularization",
    "ode_target_cost",
    "ode_stiff",
    "ode_local_paper",
    "ode_target_cost_safeguard",
    "nsm",
    "shampoo",
    "shampoo_peers",
    "shampoo_scale",
    "train_loop",
)
# Off by default: runs the authors' NSM code from an external checkout in its own environment.
EXTERNAL = ("nsm_authors",)


def _label(row: dict) -> str:
    keys = [k for k in ("task", "problem", "solve", "method", "model", "optimizer", "vs", "grid") if k in row]
    return " / ".join(str(row[k]) for k in keys) or "row"


def plot_ratios(payload: dict, path: Path) -> bool:
    """Bar chart of every column whose name contains ``ratio`` or ``_vs_`` (a ratio to a baseline) of every table;
    returns whether a figure was written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for title, rows in payload.get("tables", {}).items():
        cols = sorted({c for r in rows for c in r if "ratio" in c or "_vs_" in c})
        for c in cols:
            pts = [(_label(r), float(r[c])) for r in rows if isinstance(r.get(c), int | float)]
            if pts:
                panels.append((f"{title}: {c}", pts))
    if not panels:
        return False
    n = len(panels)
    fig, axes = plt.subplots(
        n, 1, figsize=(8, 2.2 + 0.35 * max(len(p[1]) for p in panels)) if n == 1 else (8, 2.0 * n + 1), squeeze=False
    )
    for ax, (title, pts) in zip(axes[:, 0], panels):
        labels, vals = zip(*pts)
        ax.barh(range(len(vals)), vals, color="tab:blue")
        ax.set_yticks(range(len(vals)), labels, fontsize=7)
        ax.axvline(1.0, color="k", lw=0.8, ls="--")
        if min(vals) > 0 and max(vals) / min(vals) > 50:
            ax.set_xscale("log")
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def write_summary(results: dict, out: Path, *, size: str, timings: Sequence[dict] = (), plots: bool = True) -> str:
    """Write ``SUMMARY.md`` (and, if ``plots``, one ``<name>.png`` per benchmark) into ``out`` from the benchmark
    payloads in ``results`` (name -> the dict each script wrote as ``<name>.json``). Returns the Markdown."""
    if plots:
        for n, payload in results.items():
            plot_ratios(payload, out / f"{n}.png")
    m = machine_info()
    md = [
        "# jaxsciml benchmark summary",
        "",
        f"- summary written: {m['date']}",
        f"- size: {size}",
        "",
        "Reproduce: `python benchmarks/run.py" + (" --quick" if size == "quick" else "") + "` (each benchmark alone: "
        "`python benchmarks/<name>.py`)",
        "",
    ]
    if timings:
        md += [markdown_table(list(timings))]
    for n, payload in results.items():
        bm = payload.get("machine", {})
        md += [f"## {n}", ""]
        if bm:
            md += [
                f"- run: {bm.get('date', '?')} on {bm.get('cpu', '?')} ({bm.get('cpu_count', '?')} cores), "
                f"backend {bm.get('jax_backend', '?')}",
                "- versions: " + ", ".join(f"{k} {v}" for k, v in bm.get("versions", {}).items()),
                "",
            ]
        for title, rows in payload["tables"].items():
            md += [f"### {title}", "", markdown_table(rows)]
        if payload.get("notes"):
            md += [payload["notes"], ""]
        if plots and (out / f"{n}.png").exists():
            md += [f"![{n}]({n}.png)", ""]
    text = "\n".join(md)
    (out / "SUMMARY.md").write_text(text)
    return text


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CI-sized smoke run")
    parser.add_argument(
        "--only", default=",".join(BENCHMARKS), help="comma-separated subset of " + ",".join(BENCHMARKS)
    )
    parser.add_argument("--out", default=str(RESULTS_DIR), help="output directory (default benchmarks/results)")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument(
        "--authors-path", default=None, help="for nsm_authors: the authors' Neural-Spectral-Methods checkout"
    )
    parser.add_argument("--authors-python", default=None, help="for nsm_authors: python of the authors' environment")
    parser.add_argument(
        "--summary-only",
        action="store_true",
        help="run nothing: rebuild <name>.md, SUMMARY.md and the plots from the <name>.json files in --out",
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    for n in names:
        if n not in BENCHMARKS + EXTERNAL:
            raise SystemExit(f"--only: unknown benchmark {n!r}; expected a subset of {BENCHMARKS + EXTERNAL}")
        if n in EXTERNAL and not args.summary_only and not (args.authors_path and args.authors_python):
            raise SystemExit(f"--only {n} needs --authors-path and --authors-python")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    timings = []
    for n in names:
        if args.summary_only:
            path = out / f"{n}.json"
            if not path.exists():
                raise SystemExit(f"--summary-only: {path} does not exist; run the benchmark first")
            (out / f"{n}.md").write_text(render_markdown(json.loads(path.read_text())))
        else:
            mod = importlib.import_module(f"benchmarks.{n}")
            t0 = time.perf_counter()
            extra = (
                ["--authors-path", args.authors_path, "--authors-python", args.authors_python] if n in EXTERNAL else []
            )
            mod.main((["--quick"] if args.quick else []) + ["--out", str(out)] + extra)
            timings.append({"benchmark": n, "wall_s": time.perf_counter() - t0})
        results[n] = json.loads((out / f"{n}.json").read_text())
    size = "quick" if args.quick else ("as recorded in each benchmark's config" if args.summary_only else "default")
    print(write_summary(results, out, size=size, timings=timings, plots=not args.no_plots))
    return results


if __name__ == "__main__":
    main()
