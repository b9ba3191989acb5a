"""The ``jaxsciml`` console script.

``jaxsciml demo`` trains a small version of each pillar end to end (progress bars on stderr) and prints one results
table; ``--out DIR`` also writes the plots as PNGs. ``jaxsciml version`` prints the versions in use.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

PILLARS = ("ode", "pde", "optim")
COLUMNS = ("pillar", "task", "method", "metric", "value", "steps_or_nfe", "wall_s", "compile_s")
LEGEND = {
    "ode": "steps_or_nfe = vector-field evaluations of one prediction solve (fewer is cheaper)",
    "pde": "steps_or_nfe = training steps (the same budget for both models)",
    "optim": "steps_or_nfe = steps to reach 1e-4 x the initial loss ('>N': not reached in N steps)",
}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        return f"{v:.4g}"
    return str(v)


def _cell(row: dict[str, Any], column: str) -> str:
    if column == "steps_or_nfe" and row.get("reached_target") is False:
        return f">{row[column]}"
    return _fmt(row.get(column, ""))


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] = COLUMNS) -> str:
    """Plain-text table of ``rows`` (dicts) with the given ``columns``; a row with ``reached_target=False`` shows
    its ``steps_or_nfe`` as ``>N``."""
    cells = [[c for c in columns]] + [[_cell(r, c) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = []
    for j, row in enumerate(cells):
        lines.append("  ".join(s.ljust(w) for s, w in zip(row, widths)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run_demo(
    pillars: Sequence[str] = PILLARS, size: str = "small", progress: bool = True, out_dir: str | None = None
) -> list[dict[str, Any]]:
    """Run each pillar's ``_demo.run_demo`` and return all result rows."""
    for p in pillars:
        if p not in PILLARS:
            raise ValueError(f"pillar must be one of {PILLARS}, got {p!r}")
    if size not in ("small", "medium"):
        raise ValueError(f"size must be 'small' or 'medium', got {size!r}")
    rows: list[dict[str, Any]] = []
    for p in pillars:
        try:
            mod = importlib.import_module(f"jaxsciml.{p}._demo")
        except ModuleNotFoundError as e:
            if e.name != f"jaxsciml.{p}._demo":
                raise
            print(f"[jaxsciml demo] pillar {p!r} has no demo yet; skipped", file=sys.stderr)
            continue
        print(f"[jaxsciml demo] {p} ...", file=sys.stderr)
        rows.extend(mod.run_demo(size=size, progress=progress, out_dir=out_dir))
    return rows


def _version() -> None:
    import importlib.metadata as md

    import jax

    from jaxsciml import __version__

    print(f"jaxsciml {__version__}")
    for pkg in ("jax", "jaxlib", "equinox", "optax", "diffrax", "orbax-checkpoint"):
        print(f"{pkg} {md.version(pkg)}")
    print(f"backend {jax.default_backend()} devices {jax.devices()}")


def _check_plotting(out_dir: str | None) -> None:
    """Fail before any training if ``--out`` asks for plots that cannot be drawn."""
    if out_dir is None:
        return
    try:
        importlib.import_module("matplotlib")
    except ModuleNotFoundError:
        raise SystemExit(
            "jaxsciml demo: --out writes plots and needs matplotlib, which is not installed. "
            'Install it (pip install matplotlib, or pip install "jaxsciml[notebooks]") or drop --out.'
        ) from None


def main(argv: Sequence[str] | None = None) -> int:
    from jaxsciml._version import __version__  # not the package: `--version` should not import jax

    parser = argparse.ArgumentParser(prog="jaxsciml", description=__doc__)
    parser.add_argument("--version", action="version", version=f"jaxsciml {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a small version of each pillar and print a results table")
    demo.add_argument("--pillar", choices=(*PILLARS, "all"), default="all", help="which pillar to run (default all)")
    demo.add_argument(
        "--size",
        choices=("small", "medium"),
        default="small",
        help="problem size: small (default, about 1 minute on 2 CPU cores) or medium (larger models, "
        "longer training and reaction-diffusion; several minutes on 2 CPU cores)",
    )
    demo.add_argument("--out", default=None, metavar="DIR", help="also write plots (PNG) into DIR")
    demo.add_argument("--no-progress", action="store_true", help="disable progress bars")
    sub.add_parser("version", help="print versions of jaxsciml and its engine")
    args = parser.parse_args(argv)

    if args.command == "version":
        _version()
        return 0
    pillars = PILLARS if args.pillar == "all" else (args.pillar,)
    _check_plotting(args.out)
    t0 = time.perf_counter()
    rows = run_demo(pillars, size=args.size, progress=not args.no_progress, out_dir=args.out)
    print()
    print(format_table(rows))
    for p in dict.fromkeys(r["pillar"] for r in rows):
        if p in LEGEND:
            print(f"  {p}: {LEGEND[p]}")
    print(f"\ntotal wall time {time.perf_counter() - t0:.1f} s")
    if args.out:
        print(f"plots written to {args.out}")
    bad = [r for r in rows if isinstance(r.get("value"), float) and not math.isfinite(r["value"])]
    return 1 if bad else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
