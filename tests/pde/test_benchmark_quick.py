"""Smoke test of benchmarks/nsm.py at its --quick size."""

import math

import pytest

from benchmarks.nsm import main


@pytest.mark.slow  # ~150 s on a 2-core CI machine (compiles FNO, NSM and reference solvers for three problems)
def test_benchmark_quick(tmp_path):
    out = main(["--quick", "--out", str(tmp_path)])
    assert (tmp_path / "nsm_quick.json").exists() and (tmp_path / "nsm_quick.md").exists()
    rows = out["tables"]["models"]
    problems = {r["problem"] for r in rows}
    assert problems == {"poisson_periodic", "reaction_diffusion", "navier_stokes_nu1e-3"}
    for r in rows:
        assert math.isfinite(r["rel_l2"]) and 0 <= r["rel_l2"] < 5
        for k, v in r.items():
            if k.startswith("infer_ms@") or k in ("train_s", "step_ms"):
                assert math.isfinite(v) and v > 0
    assert out["tables"]["navier_stokes_reference_solver"]
    assert any("error_ratio_fno_over_nsm" in s for s in out["tables"]["summary"])
