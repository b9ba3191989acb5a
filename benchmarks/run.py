"""Run every benchmark (or chosen ones) and write a combined summary.

Usage (from the repository root)::

    python benchmarks/run.py            # real sizes; results into benchmarks/results/
    python benchmarks/run.py --quick    # CI-sized smoke run
    python benchmarks/run.py --only shampoo,nsm --out /tmp/results

Each benchmark script writes ``<name>.json`` and ``<name>.md``; this runner adds ``SUMMARY.md`` (machine, versions,
date and every table) and one comparison plot per benchmark (``<name>.png``: every column whose name ends in
``_ratio``, per row).
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

from benchmarks._common import RESULTS_DIR, machine_info, markdown_table  # noqa: E402

BENCHMARKS = ("ode_regularization", "nsm", "shampoo")


def _label(row: dict) -> str:
    keys = [k for k in ("task", "problem", "method", "model", "optimizer") if k in row]
    return " / ".join(str(row[k]) for k in keys) or "row"


def plot_ratios(payload: dict, path: Path) -> bool:
    """Bar chart of every ``*_ratio`` column of every table; returns whether a figure was written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for title, rows in payload.get("tables", {}).items():
        cols = sorted({c for r in rows for c in r if c.endswith("_ratio")})
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
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CI-sized smoke run")
    parser.add_argument(
        "--only", default=",".join(BENCHMARKS), help="comma-separated subset of " + ",".join(BENCHMARKS)
    )
    parser.add_argument("--out", default=str(RESULTS_DIR), help="output directory (default benchmarks/results)")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    for n in names:
        if n not in BENCHMARKS:
            raise SystemExit(f"--only: unknown benchmark {n!r}; expected a subset of {BENCHMARKS}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    timings = []
    for n in names:
        mod = importlib.import_module(f"benchmarks.{n}")
        t0 = time.perf_counter()
        mod.main((["--quick"] if args.quick else []) + ["--out", str(out)])
        timings.append({"benchmark": n, "wall_s": time.perf_counter() - t0})
        results[n] = json.loads((out / f"{n}.json").read_text())
        if not args.no_plots:
            plot_ratios(results[n], out / f"{n}.png")
    m = machine_info()
    md = [
        "# jaxsciml benchmark summary",
        "",
        f"- date: {m['date']}",
        f"- size: {'quick' if args.quick else 'default'}",
        f"- machine: {m['cpu']} ({m['cpu_count']} cores), {m['platform']}, backend {m['jax_backend']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        "",
        "Reproduce: `python benchmarks/run.py" + (" --quick" if args.quick else "") + "`",
        "",
        markdown_table(timings),
    ]
    for n, payload in results.items():
        md += [f"## {n}", ""]
        for title, rows in payload["tables"].items():
            md += [f"### {title}", "", markdown_table(rows)]
        if payload.get("notes"):
            md += [payload["notes"], ""]
        if (out / f"{n}.png").exists() and not args.no_plots:
            md += [f"![{n}]({n}.png)", ""]
    (out / "SUMMARY.md").write_text("\n".join(md))
    print("\n".join(md))
    return results


if __name__ == "__main__":
    main()
