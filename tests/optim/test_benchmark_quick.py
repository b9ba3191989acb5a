import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def test_shampoo_benchmark_quick(tmp_path):
    from benchmarks.shampoo import main

    payload = main(["--quick", "--out", str(tmp_path)])
    assert (tmp_path / "shampoo.json").exists() and (tmp_path / "shampoo.md").exists()
    tables = payload["tables"]
    assert set(tables) == {"regression"}
    for rows in tables.values():
        methods = [r["method"] for r in rows]
        assert methods[:5] == ["adamw", "muon", "shampoo", "soap", "shampoo_4bit"]
        for r in rows:
            assert math.isfinite(r["final_loss"]) and r["per_step_ms"] > 0 and r["state_bytes"] > 0
        by = {r["method"]: r for r in rows}
        # the 4-bit preconditioner is far smaller than the fp32 one
        assert by["shampoo_4bit"]["precond_vs_fp32"] <= 0.25
        # fp32 Shampoo reaches the target loss
        assert isinstance(by["shampoo"]["steps_to_target"], int)
