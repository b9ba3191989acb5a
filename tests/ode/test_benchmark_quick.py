"""Smoke test of benchmarks/ode_regularization.py at --quick size."""

import math

import pytest

from benchmarks.ode_regularization import main


def test_quick_benchmark(tmp_path):
    payload = main(["--quick", "--out", str(tmp_path)])
    assert (tmp_path / "ode_regularization.json").exists() and (tmp_path / "ode_regularization.md").exists()
    tables = payload["tables"]
    for rows in tables.values():
        for r in rows:
            for k, v in r.items():
                if isinstance(v, float):
                    assert math.isfinite(v), (k, r)
    curve = next(v for k, v in tables.items() if k.startswith("trade-off: digits"))
    assert [r["weight"] for r in curve] == [0.0, 0.1]
    for r in curve:
        assert 0 <= r["accuracy_%"] <= 100 and r["pred_nfe"] >= 9  # one Tsit5 step + FSAL + initial step
    shared = next(v for k, v in tables.items() if k.startswith("shared-step vs vmap"))
    assert len(shared) == 2
    for r in shared:
        assert r["shared_ms"] > 0 and r["vmap_ms"] > 0 and r["vmap_nfe_max"] >= r["vmap_nfe_mean"]
        assert abs(r["shared_acc_%"] - r["vmap_acc_%"]) <= 5.0  # the same ODE at the same tolerances
    over = tables["heuristic recording overhead (forward+backward)"]
    assert len(over) == 3 and all(0.3 < r["ratio_min"] < 3.0 for r in over)


@pytest.mark.slow  # ~1-2 min of compilation (three digits trainings)
def test_quick_target_cost_benchmark(tmp_path):
    from benchmarks.ode_target_cost import main as target_main

    payload = target_main(["--quick", "--out", str(tmp_path)])
    assert (tmp_path / "ode_target_cost.md").exists()
    rows = payload["tables"]["TargetCost at 0.3/0.5/0.7x the unregularized NFE"]
    assert len(rows) == 1 and rows[0]["target_x_unreg"] == 0.5 and rows[0]["final_lam_E"] > 0


@pytest.mark.slow  # ~1-2 min of compilation (implicit solves)
def test_quick_stiff_benchmark(tmp_path):
    from benchmarks.ode_stiff import main as stiff_main

    payload = stiff_main(["--quick", "--out", str(tmp_path)])
    rows = payload["tables"]["stiff neural ODE, Kvaerno5"]
    assert len(rows) == 4 and all(r["accepted_steps"] >= 1 and math.isfinite(r["test_mse"]) for r in rows)


@pytest.mark.slow  # ~1-2 min of compilation (four digits trainings in float64)
def test_quick_local_paper_benchmark(tmp_path):
    from benchmarks.ode_local_paper import main as paper_main

    payload = paper_main(["--quick", "--out", str(tmp_path)])
    assert (tmp_path / "ode_local_paper.md").exists()
    summary = payload["tables"]["summary (mean over seeds; ratios vs unregularized, same seed)"]
    assert [r["method"] for r in summary] == ["unregularized", "global R_E", "local unbiased", "local biased"]
    assert summary[0]["nfe_ratio"] == 1.0 and all(r["pred_nfe"] >= 9 for r in summary)
    runs = payload["tables"]["per run"]
    # the local methods pay two extra solver steps per training solve; prediction solves are plain
    assert all(r["train_nfe_last10%"] > r["pred_nfe"] for r in runs if r["method"].startswith("local"))
    assert "Differences from the paper" in (tmp_path / "ode_local_paper.md").read_text()


@pytest.mark.slow  # ~1 min of compilation (three small digits trainings)
def test_quick_target_cost_safeguard_benchmark(tmp_path):
    from benchmarks.ode_target_cost_safeguard import main as safeguard_main

    payload = safeguard_main(["--quick", "--out", str(tmp_path)])
    rows = payload["tables"]["unreachable targets: stall_growth=100 (default) vs None"]
    assert [r["stall_growth"] for r in rows] == [100.0, "None"]
    assert all(0 < r["final_lam_E"] <= 1e6 and 0 <= r["accuracy_%"] <= 100 for r in rows)
