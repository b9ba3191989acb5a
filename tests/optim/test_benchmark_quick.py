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


def test_peers_skip_with_reason_when_not_importable(monkeypatch):
    import importlib

    import benchmarks.shampoo_peers as sp

    real = importlib.import_module

    def fake(name, *a, **k):
        if name.startswith(("optax_shampoo", "psgd_jax")):
            raise ImportError(f"No module named {name!r}")
        return real(name, *a, **k)

    monkeypatch.setattr(sp.importlib, "import_module", fake)
    peers = sp.load_peers()
    assert set(peers) == {"distributed_shampoo", "psgd_kron"}
    assert all(isinstance(v, str) and "not usable" in v for v in peers.values())
    assert list(sp.methods(peers)) == [
        "adamw",
        "muon",
        "shampoo",
        "shampoo_bias_corrected",
        "shampoo_default",
        "shampoo_default_bc",
        "shampoo_nesterov",
        "spectral",
        "soap",
        "soap_beta1_09",
        "soap_stats_099",
        "soap_beta2_0999",
    ]


def test_shampoo_peers_benchmark_quick(tmp_path):
    from benchmarks.shampoo_peers import main

    payload = main(["--quick", "--out", str(tmp_path)])
    assert (tmp_path / "shampoo_peers.json").exists() and (tmp_path / "shampoo_peers.md").exists()
    tables = payload["tables"]
    key = tables.pop("key_ratios")
    summary = tables.pop("final_loss_summary")
    assert [r["task"] for r in summary] == list(tables)
    for r in summary:  # the best peer's own loss is the minimum over the peers present
        assert r["best_peer_loss"] == min(r[m] for m in ("adamw", "muon", "psgd_kron", "distributed_shampoo") if m in r)
    assert [r["task"] for r in key] == list(tables)
    for rows in tables.values():
        by = {r["method"]: r for r in rows}
        assert {"adamw", "muon", "shampoo", "shampoo_bias_corrected", "soap", "soap_beta1_09"} <= set(by)
        assert not {"soap_stats_099", "soap_beta2_0999"} & set(by)  # ablation rows: full runs only
        for peer, status in payload["config"]["peers"].items():
            assert (peer in by) == (status == "ok")
        assert by["adamw"]["step_ratio"] == 1.0 and by["adamw"]["state_ratio"] == 1.0
        for r in rows:
            assert math.isfinite(r["final_loss"]) and r["step_ms"] > 0 and r["step_ratio"] > 0
        # Shampoo holds Kronecker statistics and roots on top of the graft and momentum: more state than AdamW
        assert by["shampoo"]["state_bytes"] > by["adamw"]["state_bytes"]
        # the bias-corrected variant only changes how the momentum is read: the same state
        assert by["shampoo_bias_corrected"]["state_bytes"] == by["shampoo"]["state_bytes"]


def test_shampoo_scale_counter_hits_and_misses_the_refresh():
    import jax
    import jax.numpy as jnp

    from benchmarks.shampoo_peers import jaxsciml_shampoo
    from benchmarks.shampoo_scale import _set_count

    opt = jaxsciml_shampoo(1.0, "eigh", block_size=8)
    params = {"w": jnp.zeros((8, 16))}
    g = {"w": jax.random.normal(jax.random.key(0), (8, 16))}
    update = jax.jit(opt.update)
    _, s = update(g, opt.init(params), params)
    _, s = update(g, s, params)  # step 2: no refresh, the statistics have moved on since the step-1 roots
    roots = lambda st: jax.tree_util.tree_leaves(st[0].roots)
    _, s_hit = update(g, _set_count(s, 10), params)
    _, s_miss = update(g, _set_count(s, 11), params)
    assert all(bool(jnp.array_equal(a, b)) for a, b in zip(roots(s_miss), roots(s)))
    assert not all(bool(jnp.allclose(a, b)) for a, b in zip(roots(s_hit), roots(s)))


def test_shampoo_scale_benchmark_quick(tmp_path):
    from benchmarks.shampoo_scale import main

    payload = main(["--quick", "--out", str(tmp_path)])
    assert (tmp_path / "shampoo_scale.json").exists()
    for rows in payload["tables"].values():
        by = {r["method"]: r for r in rows}
        assert {"shampoo_eigh", "shampoo_newton"} <= set(by)
        for r in rows:
            assert r["refresh_s"] > 0 and r["step_ms"] > 0 and r["loop_step_ms"] > 0 and r["state_mib"] > 0
        # both root methods keep the same state (statistics and roots)
        assert by["shampoo_eigh"]["state_mib"] == by["shampoo_newton"]["state_mib"]


def test_default_momentum_is_the_plain_ema():
    """``shampoo`` (default, distributed_shampoo's plain EMA momentum): its update is ``(1 - beta1^t)`` times the
    ``bias_correction=True`` one (the statistics and roots do not depend on the momentum)."""
    import jax
    import jax.numpy as jnp

    from benchmarks.shampoo_peers import BETA1, jaxsciml_shampoo

    params = {"w": jnp.zeros((8, 16))}
    grads = [{"w": jax.random.normal(k, (8, 16))} for k in jax.random.split(jax.random.key(1), 3)]
    plain, debiased = jaxsciml_shampoo(1.0, block_size=8), jaxsciml_shampoo(1.0, block_size=8, bias_correction=True)
    sp, sb = plain.init(params), debiased.init(params)
    for t, g in enumerate(grads, start=1):
        up, sp = jax.jit(plain.update)(g, sp, params)
        ub, sb = jax.jit(debiased.update)(g, sb, params)
        assert jnp.allclose(up["w"], (1.0 - BETA1**t) * ub["w"], rtol=1e-5, atol=1e-7)
