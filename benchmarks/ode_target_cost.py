"""Ask for the cost: ``TargetCost`` (adaptive error-heuristic weight) at 0.3/0.5/0.7x the unregularized prediction NFE,
against a fixed-weight sweep, on the digits classifier of ``benchmarks/ode_regularization.py`` (issue 21, section 2).

Per run: test accuracy, prediction NFE (mean per test example, unregularized solve: the heuristics change no step),
training wall time (compile excluded) and, for ``TargetCost``, the final weight and the reached NFE relative to the
target. For each target the best fixed-weight run of the sweep whose NFE is within 10% of (or below) the target is
listed beside it. Settings are CPU-sized (see ``CONFIGS``) and the machine is shared: ``os.getloadavg()`` is recorded.

Run: ``python benchmarks/ode_target_cost.py [--quick | --config tight] [--out DIR]`` (``tight``: rtol = atol = 1e-6,
600 steps, written to ``ode_target_cost_tight.*``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks._common import write_results
from benchmarks.ode_regularization import _digits_data, _digits_make, _digits_predict
from jaxsciml.ode import HeuristicRegularization, NoRegularization, SolverConfig, TargetCost

NAME = "ode_target_cost"

CONFIGS = {
    "default": dict(
        rtol=1e-5,
        atol=1e-5,
        digits_train=1400,
        digits_batch=64,
        digits_hidden=16,
        digits_width=32,
        digits_steps=300,
        fractions=(0.3, 0.5, 0.7),
        sweep=(0.1, 0.3, 1.0, 3.0, 10.0, 30.0),
        tc_lr=0.1,
        tc_init=1.0,
    ),
    "tight": dict(  # a tighter tolerance (more steps to remove) and longer training
        rtol=1e-6,
        atol=1e-6,
        digits_train=1400,
        digits_batch=64,
        digits_hidden=16,
        digits_width=32,
        digits_steps=600,
        fractions=(0.3, 0.5, 0.7),
        sweep=(0.1, 0.3, 1.0, 3.0, 10.0, 100.0),
        tc_lr=0.1,
        tc_init=1.0,
    ),
    "quick": dict(
        rtol=1e-3,
        atol=1e-3,
        digits_train=200,
        digits_batch=8,
        digits_hidden=4,
        digits_width=8,
        digits_steps=3,
        fractions=(0.5,),
        sweep=(1.0,),
        tc_lr=0.1,
        tc_init=1.0,
    ),
}


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _run(cfg, data, reg=None, tc: TargetCost | None = None):
    """Train one digits classifier under a fixed regularizer ``reg`` or a ``TargetCost`` ``tc``."""
    xtr, ytr, xte, yte = data
    bs, n_train = cfg["digits_batch"], len(xtr)
    model = _digits_make(cfg, SolverConfig(rtol=cfg["rtol"], atol=cfg["atol"]))
    opt = optax.adam(1e-2)
    opt_state = opt.init(eqx.filter(model, eqx.is_array))
    tc_state = tc.init() if tc is not None else None

    @eqx.filter_jit
    def step(model, opt_state, tc_state, xb, yb):
        r = tc.regularizer(tc_state) if tc is not None else reg

        def loss(m):
            out = jax.vmap(lambda x: m(x, regularizer=r))(xb)
            ce = optax.softmax_cross_entropy_with_integer_labels(out.ys, yb).mean()
            return ce + jnp.mean(out.penalty), out.stats

        (_, stats), g = eqx.filter_value_and_grad(loss, has_aux=True)(model)
        updates, opt_state = opt.update(g, opt_state, eqx.filter(model, eqx.is_array))
        tc_state = tc.update(tc_state, stats) if tc is not None else tc_state
        return eqx.apply_updates(model, updates), opt_state, tc_state, jnp.mean(stats.num_fevals)

    def batch(i):
        idx = np.random.default_rng(i).choice(n_train, bs, replace=False)
        return jnp.asarray(xtr[idx]), jnp.asarray(ytr[idx])

    t0 = time.perf_counter()
    model, opt_state, tc_state, nfe = step(model, opt_state, tc_state, *batch(0))
    jax.block_until_ready(nfe)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(1, cfg["digits_steps"]):
        model, opt_state, tc_state, nfe = step(model, opt_state, tc_state, *batch(i))
    jax.block_until_ready(nfe)
    train_s = time.perf_counter() - t0
    xte_j, yte_j = jnp.asarray(xte), jnp.asarray(yte)
    logits, pred_nfe = _digits_predict(model, xte_j)
    out = dict(
        accuracy=100 * float(jnp.mean(jnp.argmax(logits, -1) == yte_j)),
        pred_nfe=float(jnp.mean(pred_nfe)),
        train_s=train_s,
        compile_s=compile_s,
        load=_load(),
    )
    if tc is not None:
        out["final_weight"] = float(tc_state.weight)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke size")
    parser.add_argument("--out", default=None, help="output directory (default benchmarks/results)")
    parser.add_argument("--config", default=None, choices=sorted(CONFIGS), help="settings (default: 'default')")
    args = parser.parse_args(argv)
    name = args.config or ("quick" if args.quick else "default")
    cfg = dict(CONFIGS[name])
    progress = (lambda s: None) if args.quick else (lambda s: print(s, flush=True))
    data = _digits_data(cfg)
    base = _run(cfg, data, NoRegularization())
    progress(f"unregularized: {base}")
    sweep = [dict(weight=0.0, **base)]
    for w in cfg["sweep"]:
        r = _run(cfg, data, HeuristicRegularization(error_weight=w))
        sweep.append(dict(weight=w, **r))
        progress(f"fixed lam_E={w}: {r}")
    sweep_rows = [
        {
            "lam_E": r["weight"],
            "accuracy_%": r["accuracy"],
            "pred_nfe": r["pred_nfe"],
            "nfe_ratio": r["pred_nfe"] / base["pred_nfe"],
            "train_s": r["train_s"],
            "compile_s": r["compile_s"],
            "load": r["load"],
        }
        for r in sweep
    ]
    target_rows = []
    for frac in cfg["fractions"]:
        target = frac * base["pred_nfe"]
        tc = TargetCost(target=target, learning_rate=cfg["tc_lr"], init_weight=cfg["tc_init"])
        r = _run(cfg, data, tc=tc)
        progress(f"target {frac}x = {target:.1f}: {r}")
        within = [s for s in sweep if s["pred_nfe"] <= 1.1 * target]
        best = max(within, key=lambda s: s["accuracy"]) if within else None
        target_rows.append(
            {
                "target_x_unreg": frac,
                "target_nfe": target,
                "reached_nfe": r["pred_nfe"],
                "reached/target": r["pred_nfe"] / target,
                "within_10%": abs(r["pred_nfe"] / target - 1) <= 0.1,
                "accuracy_%": r["accuracy"],
                "final_lam_E": r["final_weight"],
                "train_s": r["train_s"],
                "best_fixed_lam_E (nfe <= 1.1 target)": None if best is None else best["weight"],
                "its_nfe": None if best is None else best["pred_nfe"],
                "its_accuracy_%": None if best is None else best["accuracy"],
                "load": r["load"],
            }
        )
    notes = (
        "Digits (sklearn 8x8, 1400 train / 397 test), classifier Linear(64, 16) -> tanh -> ODE block (MLP field, "
        f"width {cfg['digits_width']}) -> Linear(16, 10), Tsit5, rtol={cfg['rtol']}, atol={cfg['atol']}, automatic "
        f"first step, Adam 1e-2, {cfg['digits_steps']} steps of batch {cfg['digits_batch']}, one seed. TargetCost: "
        f"cost='nfe', learning_rate={cfg['tc_lr']}, init_weight={cfg['tc_init']}; the target is the fraction of the "
        "unregularized run's prediction NFE. Prediction NFE includes the 2 evaluations of the automatic first step "
        "and the FSAL evaluation (a Tsit5 solve costs 3 + 6 x steps). CPU-sized settings (not the papers'); shared "
        "2-core machine, load average in each row."
    )
    tables = {
        "fixed-weight sweep (lam_E = 0 is unregularized)": sweep_rows,
        "TargetCost at 0.3/0.5/0.7x the unregularized NFE": target_rows,
    }
    out_name = NAME if name in ("default", "quick") else f"{NAME}_{name}"
    return write_results(out_name, tables, out_dir=args.out, notes=notes, config=cfg)


if __name__ == "__main__":
    main()
