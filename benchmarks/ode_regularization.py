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

Run: ``python benchmarks/ode_regularization.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
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


def _train(model, loss_fn, batches, steps, lr, key):
    """Adam training; returns (model, wall time excluding the first (compiling) step, compile time)."""
    opt = optax.adam(lr)
    state = opt.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, state, batch, key):
        (loss, aux), g = eqx.filter_value_and_grad(loss_fn, has_aux=True)(model, batch, key)
        updates, state = opt.update(g, state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), state, loss

    keys = jax.random.split(key, steps)
    t0 = time.perf_counter()
    model, state, loss = step(model, state, batches(0), keys[0])
    jax.block_until_ready(loss)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(1, steps):
        model, state, loss = step(model, state, batches(i), keys[i])
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
def digits_task(cfg, progress=print):
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int32)
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = x[perm], y[perm]
    n_train = cfg["digits_train"]
    xtr, ytr, xte, yte = x[:n_train], y[:n_train], x[n_train:], y[n_train:]
    bs, d = cfg["digits_batch"], cfg["digits_hidden"]
    solver_cfg = SolverConfig(rtol=cfg["rtol"], atol=cfg["atol"])

    def make(key):
        k1, k2, k3 = jax.random.split(key, 3)
        enc = eqx.nn.Sequential([eqx.nn.Linear(64, d, key=k1), eqx.nn.Lambda(jnp.tanh)])
        ode = NeuralODE(MLPVectorField(d, cfg["digits_width"], 1, key=k2), 0.0, 1.0, solver_cfg)
        return ODEClassifier(enc, ode, eqx.nn.Linear(d, 10, key=k3))

    def batches(i):
        idx = np.random.default_rng(i).choice(n_train, bs, replace=False)
        return jnp.asarray(xtr[idx]), jnp.asarray(ytr[idx])

    xte_j, yte_j = jnp.asarray(xte), jnp.asarray(yte)

    @eqx.filter_jit
    def predict(model, xs):
        out = jax.vmap(lambda x: model(x))(xs)
        return out.ys, out.stats.num_fevals

    results = {}
    for name, reg in _methods(cfg, trajectory=False).items():

        def loss_fn(model, batch, key, reg=reg):
            xb, yb = batch
            keys = jax.random.split(key, xb.shape[0])
            out = jax.vmap(lambda x, k: model(x, regularizer=reg, key=k))(xb, keys)
            ce = optax.softmax_cross_entropy_with_integer_labels(out.ys, yb).mean()
            return ce + jnp.mean(out.penalty), None

        model, train_s, _ = _train(
            make(jax.random.key(0)), loss_fn, batches, cfg["digits_steps"], 1e-2, jax.random.key(1)
        )
        logits, nfe = predict(model, xte_j)
        acc = float(jnp.mean(jnp.argmax(logits, -1) == yte_j))
        pred = time_call(lambda model=model: predict(model, xte_j), repeats=cfg["repeats"])
        results[name] = dict(metric=100 * acc, train_s=train_s, nfe=float(jnp.mean(nfe)), pred_s=pred["median_s"])
        progress(f"digits {name}: acc {100 * acc:.1f}% nfe {float(jnp.mean(nfe)):.1f} train {train_s:.1f}s")
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


def latent_task(cfg, progress=print):
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
    for name, reg in _methods(cfg, trajectory=True, scale=cfg["latent_lam_scale"]).items():

        def loss_fn(model, batch, key, reg=reg):
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
    return _rows("latent_ode", results, "mse", False)


# ------------------------------------------------------------------------------------------------------------ spiral
def spiral_task(cfg, progress=print):
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
    for name, reg in _methods(cfg, trajectory=True, scale=cfg["spiral_lam_scale"]).items():
        if isinstance(reg, HeuristicRegularization) and reg.local == "biased":
            reg = HeuristicRegularization(error_weight=reg.error_weight, local="unbiased", num_samples=2)

        def loss_fn(model, batch, key, reg=reg):
            out = model(y0, ts, regularizer=reg, key=key)
            return jnp.mean((out.ys - ys_true) ** 2) + out.penalty, None

        model, train_s, _ = _train(make(), loss_fn, lambda i: None, cfg["spiral_steps"], 5e-3, jax.random.key(1))
        ys, nfe = predict(model)
        err = float(jnp.mean((ys - ys_true) ** 2))
        pred = time_call(lambda model=model: predict(model), repeats=cfg["repeats"])
        results[name] = dict(metric=err, train_s=train_s, nfe=float(nfe), pred_s=pred["median_s"])
        progress(f"spiral {name}: mse {err:.5f} nfe {float(nfe):.1f} train {train_s:.1f}s")
    return _rows("spiral", results, "mse", False)


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

        def loss_fn(model, batch, key, reg=reg):
            out = jax.vmap(lambda y, k: model(y, key=k, regularizer=reg))(y0s, keys)
            return jnp.mean((out.ys - target) ** 2) + jnp.mean(out.penalty), None

        model, train_s, _ = _train(make(), loss_fn, lambda i: None, cfg["sde_steps"], 3e-3, jax.random.key(1))
        ys, nfe = predict(model)
        err = float(jnp.mean((ys - target) ** 2))
        pred = time_call(lambda model=model: predict(model), repeats=cfg["repeats"])
        results[name] = dict(metric=err, train_s=train_s, nfe=float(jnp.mean(nfe)), pred_s=pred["median_s"])
        progress(f"sde {name}: mse {err:.4f} nfe {float(jnp.mean(nfe)):.1f} train {train_s:.1f}s")
    return _rows("neural_sde", results, "mse", False)


# ---------------------------------------------------------------------------------------------------------- overhead
def overhead(cfg):
    """Forward+backward of a batched solve: plain ``diffeqsolve`` vs ``solve_with_heuristics`` recording R_E, and
    R_E + R_S. The variants are timed interleaved (round-robin) so that load from other processes hits all alike;
    the ratios use the minimum over rounds (the least-disturbed run) and the median."""
    d = cfg["digits_hidden"]
    field = MLPVectorField(d, cfg["digits_width"], 1, key=jax.random.key(0))
    y0s = jax.random.normal(jax.random.key(1), (cfg["digits_batch"], d))
    ctrl = dfx.PIDController(rtol=cfg["rtol"], atol=cfg["atol"])

    def plain(f, y0):
        sol = dfx.diffeqsolve(dfx.ODETerm(f), dfx.Tsit5(), 0.0, 1.0, None, y0, stepsize_controller=ctrl)
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
            tasks=("digits", "overhead"),
        ),
    },
}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke size (< 60 s)")
    parser.add_argument("--out", default=None, help="output directory (default benchmarks/results)")
    parser.add_argument("--tasks", default=None, help="comma-separated subset of digits,latent,spiral,sde,overhead")
    args = parser.parse_args(argv)
    cfg = dict(CONFIGS["quick" if args.quick else "default"])
    tasks = (
        args.tasks.split(",")
        if args.tasks
        else list(cfg.pop("tasks", ("digits", "latent", "spiral", "sde", "overhead")))
    )
    cfg.pop("tasks", None)
    progress = (lambda s: None) if args.quick else (lambda s: print(s, flush=True))
    tables = {}
    t0 = time.perf_counter()
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
    notes = (
        "Ratios are to the unregularized model of the same task (same seeds, data, optimiser, steps). pred_nfe: "
        "mean vector-field evaluations per example of the unregularized prediction solve (Tsit5 + PID, "
        f"rtol={cfg['rtol']}, atol={cfg['atol']}; the neural SDE uses Heun, rtol=atol=1e-2). Times exclude "
        "compilation; wall times on a small CPU are noisy (compare ratios within one run, "
        "not absolute numbers). Total benchmark wall time: "
        f"{time.perf_counter() - t0:.0f} s."
    )
    return write_results(NAME, tables, args.out, notes=notes, config=cfg)


if __name__ == "__main__":
    main()
