"""A neural ODE trained on stiff dynamics with an implicit solver (Kvaerno5), with and without the error heuristic R_E
(issue 21, section 1).

Data: ``y' = A y + 0.1 tanh(y)`` in 2-D with ``A = Q diag(-1, -lam_fast) Q^T`` (``Q`` a rotation by 0.5 rad), random
initial states off the slow manifold, observed at ``ts`` (dense near ``t = 0`` to see the fast transient). Model:
``NeuralODE`` with an MLP field, Kvaerno5 (SDIRK, order 5), PID controller. Implicit solvers have no fixed cost per
step, so the cost is reported as accepted and rejected steps per solve (each step solves 5 implicit stages by a
Newton-type iteration) and prediction wall time; accuracy as held-out trajectory MSE. Compile time is excluded from
the timings and reported apart; the machine is shared (load average recorded).

Run: ``python benchmarks/ode_stiff.py [--quick] [--out DIR] [--newton]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import optimistix as optx

from benchmarks._common import time_call, write_results
from jaxsciml.ode import HeuristicRegularization, MLPVectorField, NeuralODE, NoRegularization, SolverConfig

NAME = "ode_stiff"

CONFIGS = {
    "default": dict(
        lam_fast=50.0, n_train=128, n_test=64, batch=16, width=32, steps=200, rtol=1e-4, atol=1e-6, weights=(1.0, 10.0)
    ),
    "quick": dict(lam_fast=20.0, n_train=16, n_test=8, batch=4, width=8, steps=3, rtol=1e-3, atol=1e-4, weights=(1.0,)),
}
TS = np.array([0.0, 0.01, 0.02, 0.04, 0.07, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0])


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _data(cfg, n, key):
    """``n`` trajectories at ``TS`` (float64 reference solve at rtol = atol = 1e-10, returned as float32)."""
    c, s = np.cos(0.5), np.sin(0.5)
    q = np.array([[c, -s], [s, c]])
    y0 = np.asarray(jax.random.uniform(key, (n, 2), minval=-2.0, maxval=2.0), np.float64)
    with jax.enable_x64(True):
        a = jnp.asarray(q @ np.diag([-1.0, -cfg["lam_fast"]]) @ q.T)
        field = lambda t, y, args: a @ y + 0.1 * jnp.tanh(y)
        ctrl = dfx.PIDController(rtol=1e-10, atol=1e-10)
        solver = dfx.Kvaerno5(root_finder=optx.Newton(rtol=1e-12, atol=1e-12))

        def solve(y):
            sol = dfx.diffeqsolve(
                dfx.ODETerm(field), solver, 0.0, 1.0, 1e-4, y, stepsize_controller=ctrl, saveat=dfx.SaveAt(ts=TS)
            )
            return sol.ys

        ys = np.asarray(jax.jit(jax.vmap(solve))(jnp.asarray(y0)))
    return jnp.asarray(y0, jnp.float32), jnp.asarray(ys, jnp.float32)


def _run(cfg, reg, train, test, solver):
    y0s, yss = train
    ts = jnp.asarray(TS, jnp.float32)
    model = NeuralODE(
        MLPVectorField(2, cfg["width"], 2, key=jax.random.key(0)),
        0.0,
        1.0,
        SolverConfig(solver=solver, rtol=cfg["rtol"], atol=cfg["atol"]),
    )
    opt = optax.adam(3e-3)
    opt_state = opt.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, opt_state, y0, ys):
        def loss(m):
            out = jax.vmap(lambda y: m(y, ts, regularizer=reg))(y0)
            return jnp.mean((out.ys - ys) ** 2) + jnp.mean(out.penalty), out.stats

        (_, stats), g = eqx.filter_value_and_grad(loss, has_aux=True)(model)
        updates, opt_state = opt.update(g, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, jnp.mean(stats.num_accepted)

    n = y0s.shape[0]
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    idx = rng.choice(n, cfg["batch"], replace=False)
    model, opt_state, acc = step(model, opt_state, y0s[idx], yss[idx])
    jax.block_until_ready(acc)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(1, cfg["steps"]):
        idx = rng.choice(n, cfg["batch"], replace=False)
        model, opt_state, acc = step(model, opt_state, y0s[idx], yss[idx])
    jax.block_until_ready(acc)
    train_s = time.perf_counter() - t0

    @eqx.filter_jit
    def predict(model, y0):
        out = jax.vmap(lambda y: model(y, ts))(y0)
        return out.ys, out.stats.num_accepted, out.stats.num_rejected

    ty0, tys = test
    ys, accepted, rejected = predict(model, ty0)
    pred = time_call(lambda: predict(model, ty0), repeats=5)
    return dict(
        test_mse=float(jnp.mean((ys - tys) ** 2)),
        accepted_steps=float(jnp.mean(accepted)),
        rejected_steps=float(jnp.mean(rejected)),
        pred_ms=1e3 * pred["median_s"],
        train_s=train_s,
        compile_s=compile_s,
        load=_load(),
    )


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke size")
    parser.add_argument("--out", default=None, help="output directory (default benchmarks/results)")
    parser.add_argument("--weights", default=None, help="comma-separated lam_E values (besides 0)")
    parser.add_argument("--default-root-finder-only", action="store_true", help="skip the Newton root-finder rows")
    parser.add_argument("--name", default=NAME, help="results file name")
    args = parser.parse_args(argv)
    cfg = dict(CONFIGS["quick" if args.quick else "default"])
    if args.weights:
        cfg["weights"] = tuple(float(w) for w in args.weights.split(","))
    progress = (lambda s: None) if args.quick else (lambda s: print(s, flush=True))
    train = _data(cfg, cfg["n_train"], jax.random.key(1))
    test = _data(cfg, cfg["n_test"], jax.random.key(2))
    solvers = {
        "Kvaerno5 (diffrax default root finder)": dfx.Kvaerno5(),
        "Kvaerno5 + Newton (controller's rtol, atol)": dfx.Kvaerno5(
            root_finder=optx.Newton(rtol=cfg["rtol"], atol=cfg["atol"])
        ),
    }
    if args.default_root_finder_only:
        solvers = dict(list(solvers.items())[:1])
    rows = []
    for sname, solver in solvers.items():
        base = None
        for w in (0.0, *cfg["weights"]):
            reg = NoRegularization() if w == 0 else HeuristicRegularization(error_weight=w)
            r = _run(cfg, reg, train, test, solver)
            base = r if base is None else base
            row = {
                "solver": sname,
                "lam_E": w,
                **r,
                "accepted_ratio": r["accepted_steps"] / base["accepted_steps"],
                "pred_ratio": r["pred_ms"] / base["pred_ms"],
                "train_ratio": r["train_s"] / base["train_s"],
            }
            rows.append(row)
            progress(str(row))
    notes = (
        f"Stiff 2-D system y' = A y + 0.1 tanh(y), eigenvalues of A -1 and -{cfg['lam_fast']}, t in [0, 1], "
        f"{len(TS)} observation times (dense near 0). MLP field width {cfg['width']}, {cfg['steps']} Adam steps "
        f"(3e-3) of batch {cfg['batch']}, {cfg['n_train']} train / {cfg['n_test']} test trajectories, float32, "
        f"rtol={cfg['rtol']}, atol={cfg['atol']}, automatic first step. Steps are per solve, mean over the test set "
        "(prediction: unregularized solve). One seed; shared 2-core machine (load in each row)."
    )
    return write_results(args.name, {"stiff neural ODE, Kvaerno5": rows}, out_dir=args.out, notes=notes, config=cfg)


if __name__ == "__main__":
    main()
