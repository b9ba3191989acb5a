import math

from jaxsciml.optim._demo import run_demo


def test_demo_small():
    rows = run_demo("small", progress=False)
    assert [r["method"] for r in rows] == ["adamw", "shampoo", "shampoo_4bit"]
    by = {r["method"]: r for r in rows}
    for r in rows:
        assert r["pillar"] == "optim" and r["metric"] == "final_loss"
        assert math.isfinite(r["value"]) and 0 <= r["value"] < r["initial_loss"]
        assert r["wall_s"] >= 0 and r["compile_s"] >= 0 and 0 <= r["steps_or_nfe"] <= 200
    # Shampoo reaches the target (1e-4 x initial loss) and beats AdamW's final loss on this ill-conditioned problem
    assert by["shampoo"]["reached_target"]
    assert by["shampoo"]["value"] < 0.1 * by["adamw"]["value"]
