"""The `jaxsciml demo` hook for the pde pillar."""

import math

from jaxsciml.pde._demo import run_demo


def test_demo_small(tmp_path):
    rows = run_demo("small", progress=False, out_dir=str(tmp_path))
    assert len(rows) == 2
    keys = {"pillar", "task", "method", "metric", "value", "steps_or_nfe", "wall_s", "compile_s"}
    for r in rows:
        assert keys <= set(r) and r["pillar"] == "pde"
        assert math.isfinite(r["value"]) and 0 < r["value"] < 1.0
        assert r["wall_s"] > 0 and r["steps_or_nfe"] == 300
    nsm = next(r for r in rows if r["method"].startswith("NSM"))
    assert nsm["value"] < 0.03  # short float32 run; typically ~0.4%
    assert (tmp_path / "pde_poisson_nsm.png").exists()
