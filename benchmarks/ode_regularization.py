"""Solver-heuristic regularization of neural DEs vs baselines, side by side (Pal et al. 2021/2023 experiments scaled
to a 2-core CPU).

Tasks (same seeds, same data, same optimiser for every method):

(a) digits: sklearn's 8x8 digits, classifier ``Linear(64, d) -> tanh -> ODE block -> Linear(d, 10)``;
(b) latent ODE on synthetic irregularly sampled 2-D oscillations (random frequencies/phases/damping, a random half of
    the time points observed), reconstruction MSE on held-out series;
(c) 2-D spiral: fit a neural ODE to the trajectory of ``y' = A y^3``;
(d) neural SDE (Stratonovich, Heun + PID on a VirtualBrownianTree): fit a target endpoint, unregularized vs
    error-regularized.

Per method: final task metric, training wall time (compile excluded), prediction NFE (mean per example, unregularized
solve), prediction wall time (median of repeats, compile excluded), and ratios to the unregularized model. Also the
overhead of recording the heuristics vs a plain ``diffeqsolve`` forward+backward.

Added sections:

- trade-off curves: the error-heuristic weight swept over 3+ values per task (digits at the package's default
  ``SolverConfig()``: Tsit5, rtol 1e-3, atol 1e-6, automatic initial step), with the NFE ratio at equal accuracy;
- the papers' settings on digits (Tsit5, rtol = atol = 1.4e-8 in float64, lambda_E annealed 100 -> 10);
- shared-step vs vmap batching: prediction time (interleaved rounds, medians) and NFE of the digits test set solved
  as one system vs per example.

Every timing table records ``os.getloadavg()`` next to it (the CPU is shared).

Run: ``python benchmarks/ode_regularization.py [--quick] [--out DIR]``.
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

from benchmarks._common import time_call, write_results
from jaxsciml.ode import (
    RNODE,
    STEER,
    HeuristicRegularization,
    LatentODE,
    MLPVectorField,
    NeuralODE,
    NeuralSDE,
    NoRegularization,
    ODEClassifier,
    SolverConfig,
    TayNODE,
    initial_step_size,
    solve_with_heuristics,
)
from jaxsciml.ode._demo import spiral_data  # the same toy data as `jaxsciml demo`

NAME = "ode_regularization"


def _methods(cfg, trajectory: bool, scale: float = 1.0):
    """The methods compared; ``scale`` multiplies the heuristic weights (per task)."""
    lam_e, lam_s, lam_l = scale * cfg["lam_e"], scale * cfg["lam_s"], scale * cfg["lam_e_local"]
    m = {
        "unregularized": NoRegularization(),
        "error (global)": HeuristicRegularization(error_weight=lam_e),
        "error+stiffness (global)": HeuristicRegularization(error_weight=lam_e, stiffness_weight=lam_s),
        "error (local)": HeuristicRegularization(error_weight=lam_l, local="biased" if trajectory else "unbiased"),
        "RNODE": RNODE(kinetic_weight=cfg["rnode"], jacobian_weight=cfg["rnode"]),
        "TayNODE (K=2)": TayNODE(weight=cfg["taynode"], order=2),
    }
    if not trajectory:
        m["STEER"] = STEER(b=cfg["steer_b"])
    keep = cfg.get("methods")
    return {k: v for k, v in m.items() if keep is None or k in keep}


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _train(model, loss_fn, batches, steps, lr, key):
    """Adam training; returns (model, wall time excluding the first (compiling) step, compile time). ``loss_fn``
    gets ``(model, batch, key, step)`` (the step for weight schedules)."""
    opt = optax.adam(lr)
    state = opt.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, state, batch, key, i):
        (loss, aux), g = eqx.filter_value_and_grad(loss_fn, has_aux=True)(model, batch, key, i)
        updates, state = opt.update(g, state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), state, loss

    keys = jax.random.split(key, steps)
    t0 = time.perf_counter()
    model, state, loss = step(model, state, batches(0), keys[0], jnp.asarray(0))
    jax.block_until_ready(loss)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(1, steps):
        model, state, loss = step(model, state, batches(i), keys[i], jnp.asarray(i))
    jax.block_until_ready(loss)
    return model, time.perf_counter() - t0, compile_s


def _rows(task, results, metric_name, higher_better):
    base = results["unregularized"]
    rows = []
    for name, r in results.items():
        rows.append(
            {
                "task": task,
                "method": name,
                metric_name: r["metric"],
                "train_s": r["train_s"],
                "pred_nfe": r["nfe"],
                "pred_ms": 1e3 * r["pred_s"],
                "train_ratio": r["train_s"] / base["train_s"],
                "nfe_ratio": r["nfe"] / base["nfe"],
                "pred_ratio": r["pred_s"] / base["pred_s"],
                "metric_delta": r["metric"] - base["metric"],
            }
        )
    return rows


# ----------------------------------------------------------------------------------------------------------- digits
def _digits_data(cfg):
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int32)
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = x[perm], y[perm]
    n_train = cfg["digits_train"]
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def _digits_make(cfg, solver_cfg, dtype=jnp.float32):
    d = cfg["digits_hidden"]
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    enc = eqx.nn.Sequential([eqx.nn.Linear(64, d, key=k1), eqx.nn.Lambda(jnp.tanh)])
    ode = NeuralODE(MLPVectorField(d, cfg["digits_width"], 1, key=k2), 0.0, 1.0, solver_cfg)
    model = ODEClassifier(enc, ode, eqx.nn.Linear(d, 10, key=k3))
    return jax.tree_util.tree_map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, model)


@eqx.filter_jit
def _digits_predict(model, xs):
    out = jax.vmap(lambda x: model(x))(xs)
    return out.ys, out.stats.num_fevals


def _digits_run(cfg, reg, solver_cfg, data, steps=None, dtype=jnp.float32):
    """Train one digits classifier with ``reg``; return its metrics and the trained model."""
    xtr, ytr, xte, yte = data
    bs, n_train = cfg["digits_batch"], len(xtr)

    def batches(i):
        idx = np.random.default_rng(i).choice(n_train, bs, replace=False)
        return jnp.asarray(xtr[idx], dtype), jnp.asarray(ytr[idx])

    def loss_fn(model, batch, key, i):
        xb, yb = batch
        keys = jax.random.split(key, xb.shape[0])
        out = jax.vmap(lambda x, k: model(x, regularizer=reg, key=k, step=i))(xb, keys)
        ce = optax.softmax_cross_entropy_with_integer_labels(out.ys, yb).mean()
        return ce + jnp.mean(out.penalty), None

    steps = cfg["digits_steps"] if steps is None else steps
    model, train_s, compile_s = _train(
        _digits_make(cfg, solver_cfg, dtype), loss_fn, batches, steps, 1e-2, jax.random.key(1)
    )
    xte_j, yte_j = jnp.asarray(xte, dtype), jnp.asarray(yte)
    logits, nfe = _digits_predict(model, xte_j)
    acc = float(jnp.mean(jnp.argmax(logits, -1) == yte_j))
    pred = time_call(lambda: _digits_predict(model, xte_j), repeats=cfg["repeats"])
    return dict(
        metric=100 * acc,
        train_s=train_s,
        compile_s=compile_s,
        nfe=float(jnp.mean(nfe)),
        pred_s=pred["median_s"],
        model=model,
    )


def digits_task(cfg, progress=print):
    data = _digits_data(cfg)
    solver_cfg = SolverConfig(rtol=cfg["rtol"], atol=cfg["atol"])
    results = {}
    for name, reg in _methods(cfg, trajectory=False).items():
        results[name] = _digits_run(cfg, reg, solver_cfg, data)
        r = results[name]
        progress(f"digits {name}: acc {r['metric']:.1f}% nfe {r['nfe']:.1f} train {r['train_s']:.1f}s")
    return _rows("digits", results, "accuracy_%", True)


# -------------------------------------------------------------------------------------------------------- latent ODE
def _irregular_series(n, m, key):
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    ts = jnp.sort(jax.random.uniform(k1, (n, m), minval=0.0, maxval=4.0), axis=1)
    freq = jax.random.uniform(k2, (n, 1), minval=0.8, maxval=2.0)
    phase = jax.random.uniform(k3, (n, 1), minval=0.0, maxval=2 * np.pi)
    damp = jax.random.uniform(k4, (n, 1), minval=0.05, maxval=0.3)
    amp = jnp.exp(-damp * ts)
    xs = jnp.stack([amp * jnp.sin(freq * ts + phase), amp * jnp.cos(freq * ts + phase)], axis=-1)
    xs = xs + 0.02 * jax.random.normal(k5, xs.shape)
    mask = (jax.random.uniform(jax.random.fold_in(key, 7), (n, m)) < 0.5).astype(jnp.float32)
    mask = mask.at[:, 0].set(1.0)
    return ts, xs, mask


def latent_task(cfg, progress=print, methods=None, raw=False):
    n_tr, n_te, m = cfg["latent_train"], cfg["latent_test"], cfg["latent_points"]
    ts, xs, mask = _irregular_series(n_tr + n_te, m, jax.random.key(42))
    tr = (ts[:n_tr], xs[:n_tr], mask[:n_tr])
    te = (ts[n_tr:], xs[n_tr:], mask[n_tr:])
    solver_cfg = SolverConfig(rtol=cfg["rtol"], atol=cfg["atol"])
    bs = cfg["latent_batch"]

    def batches(i):
        idx = np.random.default_rng(100 + i).choice(n_tr, bs, replace=False)
        return tuple(a[idx] for a in tr)

    def mse(out_ys, xs, mask):
        return jnp.sum(mask[..., None] * (out_ys - xs) ** 2) / (2 * jnp.sum(mask))

    @eqx.filter_jit
    def predict(model, data):
        t, x, mk = data
        out = jax.vmap(lambda a, b, c: model(a, b, c))(t, x, mk)
        return out.ys, out.stats.num_fevals

    results = {}
    if methods is None:
        methods = _methods(cfg, trajectory=True, scale=cfg["latent_lam_scale"])
    for name, reg in methods.items():

        def loss_fn(model, batch, key, i, reg=reg):
            t, x, mk = batch
            keys = jax.random.split(key, t.shape[0])
            out = jax.vmap(lambda a, b, c, k: model(a, b, c, regularizer=reg, key=k))(t, x, mk, keys)
            return mse(out.ys, x, mk) + jnp.mean(out.penalty), None

        model = LatentODE(
            2, cfg["latent_dim"], 16, cfg["latent_width"], key=jax.random.key(0), t0=0.0, t1=4.0, config=solver_cfg
        )
        model, train_s, _ = _train(model, loss_fn, batches, cfg["latent_steps"], 1e-2, jax.random.key(1))
        ys, nfe = predict(model, te)
        err = float(mse(ys, te[1], jnp.ones_like(te[2])))  # all points, observed and unobserved
        pred = time_call(lambda model=model: predict(model, te), repeats=cfg["repeats"])
        results[name] = dict(metric=err, train_s=train_s, nfe=float(jnp.mean(nfe)), pred_s=pred["median_s"])
        progress(f"latent {name}: mse {err:.4f} nfe {float(jnp.mean(nfe)):.1f} train {train_s:.1f}s")
    return results if raw else _rows("latent_ode", results, "mse", False)


# ------------------------------------------------------------------------------------------------------------ spiral
def spiral_task(cfg, progress=print, methods=None, raw=False):
    ts, y0, ys_true = spiral_data(t1=cfg["spiral_t1"])
    solver_cfg = SolverConfig(rtol=cfg["rtol"], atol=cfg["atol"])

    def make():
        return NeuralODE(
            MLPVectorField(2, cfg["spiral_width"], 2, key=jax.random.key(0), time_dependent=False),
            0.0,
            float(ts[-1]),
            solver_cfg,
        )

    @eqx.filter_jit
    def predict(model):
        out = model(y0, ts)
        return out.ys, out.stats.num_fevals

    results = {}
    if methods is None:
        methods = _methods(cfg, trajectory=True, scale=cfg["spiral_lam_scale"])
    for name, reg in methods.items():
        if isinstance(reg, HeuristicRegularization) and reg.local == "biased":
            reg = HeuristicRegularization(error_weight=reg.error_weight, local="unbiased", num_samples=2)

        def loss_fn(model, batch, key, i, reg=reg):
            out = model(y0, ts, regularizer=reg, key=key)
            return jnp.mean((out.ys - ys_true) ** 2) + out.penalty, None

        model, train_s, _ = _train(make(), loss_fn, lambda i: None, cfg["spiral_steps"], 5e-3, jax.random.key(1))
        ys, nfe = predict(model)
        err = float(jnp.mean((ys - ys_true) ** 2))
        pred = time_call(lambda model=model: predict(model), repeats=cfg["repeats"])
        results[name] = dict(metric=err, train_s=train_s, nfe=float(nfe), pred_s=pred["median_s"])
        progress(f"spiral {name}: mse {err:.5f} nfe {float(nfe):.1f} train {train_s:.1f}s")
    return results if raw else _rows("spiral", results, "mse", False)


# --------------------------------------------------------------------------------------------------------- neural SDE
def sde_task(cfg, progress=print):
    n = cfg["sde_batch"]
    y0s = jax.random.normal(jax.random.key(1), (n, 2))
    keys = jax.random.split(jax.random.key(2), n)
    test_keys = jax.random.split(jax.random.key(3), 4 * n)
    test_y0 = jnp.tile(y0s, (4, 1))
    target = jnp.array([1.0, -1.0])

    def make():
        k1, k2 = jax.random.split(jax.random.key(0))
        drift = MLPVectorField(2, 16, 2, key=k1)
        drift = eqx.tree_at(lambda d: d.mlp.layers[-1].weight, drift, drift.mlp.layers[-1].weight * 8)
        diffusion = MLPVectorField(2, 8, 1, key=k2, final_activation=lambda x: 0.05 * jax.nn.sigmoid(x))
        return NeuralSDE(drift, diffusion, 0.0, 1.0, rtol=1e-2, atol=1e-2, dtmin=1e-4)

    @eqx.filter_jit
    def predict(model):
        out = jax.vmap(lambda y, k: model(y, key=k))(test_y0, test_keys)
        return out.ys, out.stats.num_fevals

    results = {}
    methods = {"unregularized": None}
    for lam in cfg["sde_lams"]:
        methods[f"error (global), lam_E={lam:g}"] = HeuristicRegularization(lam)
    for name, reg in methods.items():

        def loss_fn(model, batch, key, i, reg=reg):
            out = jax.vmap(lambda y, k: model(y, key=k, regularizer=reg))(y0s, keys)
            return jnp.mean((out.ys - target) ** 2) + jnp.mean(out.penalty), None

        model, train_s, _ = _train(make(), loss_fn, lambda i: None, cfg["sde_steps"], 3e-3, jax.random.key(1))
        ys, nfe = predict(model)
        err = float(jnp.mean((ys - target) ** 2))
        pred = time_call(lambda model=model: predict(model), repeats=cfg["repeats"])
        results[name] = dict(metric=err, train_s=train_s, nfe=float(jnp.mean(nfe)), pred_s=pred["median_s"])
        progress(f"sde {name}: mse {err:.4f} nfe {float(jnp.mean(nfe)):.1f} train {train_s:.1f}s")
    return _rows("neural_sde", results, "mse", False)


# --------------------------------------------------------------------------------------------------- trade-off
def _equal_accuracy(rows, metric, higher_better, tol):
    """The smallest NFE ratio among the regularized rows whose metric is within ``tol`` of the unregularized one
    (accuracy: ``>= base - tol`` points; MSE: ``<= base * (1 + tol)``)."""
    base = rows[0][metric]
    ok = [r for r in rows[1:] if (r[metric] >= base - tol if higher_better else r[metric] <= base * (1 + tol))]
    if not ok:
        return None
    best = min(ok, key=lambda r: r["nfe_ratio"])
    return {"weight": best["weight"], "nfe_ratio": best["nfe_ratio"], metric: best[metric], "base": base}


def _curve_rows(task, results, metric):
    base = results[0][1]
    rows = []
    for w, r in results:
        rows.append(
            {
                "task": task,
                "weight": w,
                metric: r["metric"],
                "pred_nfe": r["nfe"],
                "nfe_ratio": r["nfe"] / base["nfe"],
                "train_s": r["train_s"],
                "train_ratio": r["train_s"] / base["train_s"],
                "load_avg": r.get("load", _load()),
            }
        )
    return rows


def tradeoff(cfg, progress=print, models=None):
    """Error-heuristic weight sweeps (weight 0 = unregularized). Digits at the package defaults (SolverConfig());
    latent/spiral at the task settings. Returns (tables, equal-accuracy summary rows)."""
    tables, summary = {}, []
    tasks = cfg.get("tradeoff_tasks", ("digits", "latent", "spiral"))
    if "digits" in tasks:
        data = _digits_data(cfg)
        res = []
        for w in cfg["tradeoff_digits"]:
            reg = NoRegularization() if w == 0 else HeuristicRegularization(error_weight=w)
            r = _digits_run(cfg, reg, SolverConfig(), data)
            r["load"] = _load()
            res.append((w, r))
            if models is not None:
                models[w] = r["model"]
            progress(f"trade-off digits lam_E={w}: acc {r['metric']:.1f}% nfe {r['nfe']:.1f}")
        rows = _curve_rows("digits (SolverConfig() defaults)", res, "accuracy_%")
        tables["trade-off: digits at the package defaults (Tsit5, rtol 1e-3, atol 1e-6, auto dt0)"] = rows
        eq = _equal_accuracy(rows, "accuracy_%", True, cfg["equal_acc_points"])
        summary.append(
            {"task": "digits (defaults)", "criterion": f"acc >= unreg - {cfg['equal_acc_points']} pt", **(eq or {})}
        )
    for task, fn, metric in (("latent", latent_task, "mse"), ("spiral", spiral_task, "mse")):
        if task not in tasks:
            continue
        res = []
        for w in cfg[f"tradeoff_{task}"]:
            reg = NoRegularization() if w == 0 else HeuristicRegularization(error_weight=w)
            r = fn(cfg, lambda s: None, methods={"m": reg}, raw=True)["m"]
            r["load"] = _load()
            res.append((w, r))
            progress(f"trade-off {task} lam_E={w}: {metric} {r['metric']:.4g} nfe {r['nfe']:.1f}")
        rows = _curve_rows(task, res, metric)
        tables[f"trade-off: {task} (rtol={cfg['rtol']}, atol={cfg['atol']})"] = rows
        eq = _equal_accuracy(rows, metric, False, cfg["equal_mse_rel"])
        summary.append({"task": task, "criterion": f"mse <= unreg x {1 + cfg['equal_mse_rel']}", **(eq or {})})
    return tables, summary


def paper_settings(cfg, progress=print):
    """Digits at the papers' solver settings: Tsit5, rtol = atol = 1.4e-8 (float64), lambda_E annealed 100 -> 10
    linearly over training; unregularized at the same settings."""
    steps = cfg["paper_steps"]
    schedule = optax.linear_schedule(100.0, 10.0, steps)
    results = {}
    with jax.enable_x64(True):
        data = _digits_data(cfg)
        solver_cfg = SolverConfig(rtol=1.4e-8, atol=1.4e-8)
        for name, reg in (
            ("unregularized", NoRegularization()),
            ("error (global), lam_E 100 -> 10", HeuristicRegularization(error_weight=schedule)),
        ):
            r = _digits_run(cfg, reg, solver_cfg, data, steps=steps, dtype=jnp.float64)
            r.pop("model")
            results[name] = r
            progress(f"paper digits {name}: acc {r['metric']:.1f}% nfe {r['nfe']:.1f} train {r['train_s']:.1f}s")
    rows = _rows("digits (paper settings)", results, "accuracy_%", True)
    for r in rows:
        r["load_avg"] = _load()
    return rows


def shared_vs_vmap(cfg, models, progress=print):
    """Prediction of the digits test set: one system with one step sequence (``shared_steps=True``) vs ``vmap`` of
    per-example solves, for each trained model; interleaved rounds, medians, compile excluded."""
    _, _, xte, yte = _digits_data(cfg)
    xs, ys = jnp.asarray(xte), jnp.asarray(yte)

    @eqx.filter_jit
    def shared(m):
        out = m.batched(xs, shared_steps=True)
        return out.ys, out.stats.num_fevals

    @eqx.filter_jit
    def per_example(m):
        out = m.batched(xs, shared_steps=False)
        return out.ys, out.stats.num_fevals

    rows = []
    for w, m in models.items():
        fns = {"shared": shared, "vmap": per_example}
        outs, compile_s = {}, {}
        for k, fn in fns.items():
            t0 = time.perf_counter()
            outs[k] = jax.block_until_ready(fn(m))
            compile_s[k] = time.perf_counter() - t0
        times = {k: [] for k in fns}
        load0 = _load()
        for _ in range(cfg["shared_repeats"]):
            for k, fn in fns.items():
                t0 = time.perf_counter()
                jax.block_until_ready(fn(m))
                times[k].append(time.perf_counter() - t0)
        med = {k: float(np.median(v)) for k, v in times.items()}
        acc = {k: 100 * float(jnp.mean(jnp.argmax(outs[k][0], -1) == ys)) for k in fns}
        nfe_v = np.asarray(outs["vmap"][1])
        rows.append(
            {
                "model": "unregularized" if w == 0 else f"error (global), lam_E={w:g}",
                "batch": int(xs.shape[0]),
                "shared_ms": 1e3 * med["shared"],
                "vmap_ms": 1e3 * med["vmap"],
                "shared_over_vmap": med["shared"] / med["vmap"],
                "shared_nfe": float(outs["shared"][1]),
                "vmap_nfe_mean": float(nfe_v.mean()),
                "vmap_nfe_max": float(nfe_v.max()),
                "shared_acc_%": acc["shared"],
                "vmap_acc_%": acc["vmap"],
                "compile_s_shared": compile_s["shared"],
                "compile_s_vmap": compile_s["vmap"],
                "load_avg": 0.5 * (load0 + _load()),
            }
        )
        progress(f"shared vs vmap {rows[-1]['model']}: {rows[-1]['shared_ms']:.2f} vs {rows[-1]['vmap_ms']:.2f} ms")
    return rows


# ---------------------------------------------------------------------------------------------------------- overhead
def overhead(cfg):
    """Forward+backward of a batched solve: plain ``diffeqsolve`` vs ``solve_with_heuristics`` recording R_E, and
    R_E + R_S. The variants are timed interleaved (round-robin) so that load from other processes hits all alike;
    the ratios use the minimum over rounds (the least-disturbed run) and the median."""
    d = cfg["digits_hidden"]
    field = MLPVectorField(d, cfg["digits_width"], 1, key=jax.random.key(0))
    y0s = jax.random.normal(jax.random.key(1), (cfg["digits_batch"], d))
    ctrl = dfx.PIDController(rtol=cfg["rtol"], atol=cfg["atol"])

    def plain(f, y0):  # the same first step as solve_with_heuristics (Hairer's estimate)
        dt0 = initial_step_size(f, 0.0, 1.0, y0, None, order=5, rtol=ctrl.rtol, atol=ctrl.atol)
        sol = dfx.diffeqsolve(dfx.ODETerm(f), dfx.Tsit5(), 0.0, 1.0, dt0, y0, stepsize_controller=ctrl)
        return jnp.sum(sol.ys**2)

    def recorded(heuristics):
        def fn(f, y0):
            sol, h, _ = solve_with_heuristics(
                f, dfx.Tsit5(), 0.0, 1.0, y0, stepsize_controller=ctrl, heuristics=heuristics
            )
            return jnp.sum(sol.ys**2) + 0.1 * h.error + 0.01 * h.stiffness

        return fn

    variants = {
        "plain diffeqsolve": plain,
        "solve_with_heuristics (R_E)": recorded(("error",)),
        "solve_with_heuristics (R_E + R_S)": recorded(("error", "stiffness")),
    }
    grads = {}
    for name, fn in variants.items():
        g = eqx.filter_jit(eqx.filter_value_and_grad(lambda f, fn=fn: jnp.mean(jax.vmap(lambda y: fn(f, y))(y0s))))
        jax.block_until_ready(g(field))  # compile
        grads[name] = g
    times = {name: [] for name in variants}
    for _ in range(cfg["overhead_repeats"]):
        for name, g in grads.items():
            t0 = time.perf_counter()
            jax.block_until_ready(g(field))
            times[name].append(time.perf_counter() - t0)
    base = times["plain diffeqsolve"]
    rows = []
    for name, ts in times.items():
        rows.append(
            {
                "solve": name,
                "fwd_bwd_ms_median": 1e3 * float(np.median(ts)),
                "fwd_bwd_ms_min": 1e3 * min(ts),
                "ratio_min": min(ts) / min(base),
                "ratio_median": float(np.median(ts)) / float(np.median(base)),
                "load_avg": _load(),
            }
        )
    return rows


_DEFAULT = dict(
    rtol=1e-5,
    atol=1e-5,
    lam_e=1.0,
    lam_s=0.1,
    lam_e_local=10.0,
    rnode=0.01,
    taynode=0.01,
    steer_b=0.5,
    digits_train=1400,
    digits_batch=128,
    digits_hidden=16,
    digits_width=32,
    digits_steps=300,
    latent_train=256,
    latent_test=128,
    latent_points=30,
    latent_batch=32,
    latent_dim=4,
    latent_width=32,
    latent_steps=200,
    spiral_t1=1.5,
    spiral_width=32,
    spiral_steps=300,
    sde_batch=16,
    sde_steps=300,
    sde_lams=(0.1, 0.3, 1.0),
    latent_lam_scale=0.02,
    spiral_lam_scale=0.01,
    repeats=5,
    overhead_repeats=60,
    tradeoff_digits=(0.0, 0.03, 0.1, 0.3, 1.0),
    tradeoff_latent=(0.0, 0.005, 0.02, 0.08),
    tradeoff_spiral=(0.0, 0.003, 0.01, 0.03),
    equal_acc_points=0.5,
    equal_mse_rel=0.1,
    paper_steps=150,
    shared_repeats=15,
)
CONFIGS = {
    "default": _DEFAULT,
    "quick": {
        **_DEFAULT,
        **dict(
            digits_train=300,
            digits_batch=16,
            digits_hidden=4,
            digits_width=8,
            digits_steps=3,
            repeats=2,
            overhead_repeats=3,
            methods=("unregularized", "error (global)"),
            tradeoff_digits=(0.0, 0.1),
            tradeoff_tasks=("digits",),
            shared_repeats=2,
            tasks=("overhead", "tradeoff", "shared"),
        ),
    },
}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke size (< 60 s)")
    parser.add_argument("--out", default=None, help="output directory (default benchmarks/results)")
    parser.add_argument(
        "--tasks",
        default=None,
        help="comma-separated subset of digits,latent,spiral,sde,overhead,tradeoff,paper,shared",
    )
    args = parser.parse_args(argv)
    cfg = dict(CONFIGS["quick" if args.quick else "default"])
    all_tasks = ("digits", "latent", "spiral", "sde", "overhead", "tradeoff", "paper", "shared")
    tasks = args.tasks.split(",") if args.tasks else list(cfg.pop("tasks", all_tasks))
    cfg.pop("tasks", None)
    progress = (lambda s: None) if args.quick else (lambda s: print(s, flush=True))
    tables = {}
    t0 = time.perf_counter()
    load_start = _load()
    if "digits" in tasks:
        tables["(a) digits classifier (accuracy %)"] = digits_task(cfg, progress)
    if "latent" in tasks:
        tables["(b) latent ODE, irregular series (test MSE)"] = latent_task(cfg, progress)
    if "spiral" in tasks:
        tables["(c) spiral fit (MSE)"] = spiral_task(cfg, progress)
    if "sde" in tasks:
        tables["(d) neural SDE (endpoint MSE)"] = sde_task(cfg, progress)
    if "overhead" in tasks:
        tables["heuristic recording overhead (forward+backward)"] = overhead(cfg)
    models = {}
    if "tradeoff" in tasks or "shared" in tasks:
        tcfg = cfg if "tradeoff" in tasks else {**cfg, "tradeoff_tasks": ("digits",)}
        curves, summary = tradeoff(tcfg, progress, models=models)
        tables.update(curves)
        tables["NFE ratio at equal accuracy (best weight on each trade-off curve)"] = summary
    if "paper" in tasks:
        tables["(e) digits at the papers' settings (Tsit5, rtol=atol=1.4e-8, float64, lambda_E 100 -> 10)"] = (
            paper_settings(cfg, progress)
        )
    if "shared" in tasks:
        keep = {w: m for w, m in models.items() if w in (0.0, max(models))}
        tables["shared-step vs vmap prediction (digits test set, package defaults)"] = shared_vs_vmap(
            cfg, keep, progress
        )
    notes = (
        "Ratios are to the unregularized model of the same task (same seeds, data, optimiser, steps). pred_nfe: "
        "mean vector-field evaluations per example of the unregularized prediction solve (Tsit5 + PID, "
        f"rtol={cfg['rtol']}, atol={cfg['atol']} in tables (a)-(c); the trade-off on digits uses SolverConfig() "
        "defaults; the neural SDE uses Heun, rtol=atol=1e-2), including the two evaluations of the automatic "
        "initial step. Times exclude compilation; the CPU was shared with other jobs (load averages recorded per "
        "table), so compare ratios within one run, not absolute numbers. Shared-step vs vmap: timed in interleaved "
        "rounds, medians. Equal accuracy: accuracy within "
        f"{cfg['equal_acc_points']} points, MSE within {100 * cfg['equal_mse_rel']:.0f}% of the unregularized model. "
        f"Load average at start {load_start}, at end {_load()}. Total benchmark wall time: "
        f"{time.perf_counter() - t0:.0f} s."
    )
    return write_results(NAME, tables, args.out, notes=notes, config=cfg)


if __name__ == "__main__":
    main()
