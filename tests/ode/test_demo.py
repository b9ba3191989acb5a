"""The `jaxsciml demo` hook of the ode pillar runs and returns plausible rows."""

import math

from jaxsciml.ode._demo import run_demo


def test_run_demo_small(tmp_path):
    rows = run_demo("small", progress=False, out_dir=str(tmp_path))
    assert [r["method"] for r in rows] == ["unregularized", "error-regularized"]
    keys = {"pillar", "task", "method", "metric", "value", "steps_or_nfe", "wall_s", "compile_s"}
    for r in rows:
        assert keys <= set(r)
        assert r["pillar"] == "ode"
        assert math.isfinite(r["value"]) and 0 <= r["value"] < 1.0  # the data has MSE ~ 1 around zero
        assert 7 <= r["steps_or_nfe"] < 2000  # Tsit5: 6 per step + 1
        assert r["wall_s"] > 0 and r["compile_s"] > 0
    assert (tmp_path / "ode_spiral.png").stat().st_size > 1000
