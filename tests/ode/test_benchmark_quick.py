"""Smoke test of benchmarks/ode_regularization.py at --quick size."""

import math

from benchmarks.ode_regularization import main


def test_quick_benchmark(tmp_path):
    payload = main(["--quick", "--out", str(tmp_path)])
    assert (tmp_path / "ode_regularization.json").exists() and (tmp_path / "ode_regularization.md").exists()
    tables = payload["tables"]
    digits = tables["(a) digits classifier (accuracy %)"]
    assert {r["method"] for r in digits} == {"unregularized", "error (global)"}
    for rows in tables.values():
        for r in rows:
            for k, v in r.items():
                if isinstance(v, float):
                    assert math.isfinite(v), (k, r)
    for r in digits:
        assert 0 <= r["accuracy_%"] <= 100 and r["pred_nfe"] >= 7
    over = tables["heuristic recording overhead (forward+backward)"]
    assert len(over) == 3 and all(0.3 < r["ratio_min"] < 3.0 for r in over)
