"""Smoke test of benchmarks/train_loop.py at its --quick size (timings are not asserted: the CI machine is shared)."""

import math

import pytest

from benchmarks.train_loop import main


@pytest.mark.slow  # compiles 7 training loops (about a minute on 2 idle cores)
def test_benchmark_quick(tmp_path):
    out = main(["--quick", "--rounds", "1", "--out", str(tmp_path)])
    assert (tmp_path / "train_loop_quick.json").exists() and (tmp_path / "train_loop_quick.md").exists()
    rows = out["tables"]["runs"]
    methods = {"mlp": {"fit", "python_loop", "scan"}, "nsm_poisson": {"fit", "python_loop", "scan", "train_operator"}}
    assert {(r["task"], r["method"]) for r in rows} == {(t, m) for t, ms in methods.items() for m in ms}
    for r in rows:
        assert math.isfinite(r["median_s"]) and r["median_s"] > 0 and r["ratio_vs_scan"] > 0
        if r["method"] == "scan":
            assert r["ratio_vs_scan"] == 1.0
        if r["method"] == "fit":  # fit's own timing fields made it into the table
            assert r["fit_reported_step_s"] > 0 and r["fit_reported_compile_s"] >= 0
    assert {s["task"] for s in out["tables"]["summary"]} == {"mlp", "nsm_poisson"}
    assert "Load average" in out["notes"]
