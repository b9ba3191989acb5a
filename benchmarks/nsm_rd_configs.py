"""NSM width / depth / optimizer configurations on reaction--diffusion nu = 0.01 at equal training time, with the
held-out error recorded along the way (issue 18: which NSM reaches the lowest error in a given time).

Every configuration gets about the same training time: all are compiled first, their step times are measured side
by side (``--rounds`` interleaved rounds of a few steps each, medians, compilation excluded), the reference row
(first) takes ``--steps`` steps and every other row ``steps * (reference step time / its step time)`` steps, so that
its learning-rate schedule spans its run. The held-out relative L2 error is evaluated ``--evals`` times during
training; the time at each evaluation is the training time so far (compilation and evaluation excluded).

    python benchmarks/nsm_rd_configs.py --steps 700            # the run in results/nsm_rd_configs.md
    python benchmarks/nsm_rd_configs.py --quick                # smoke size
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import numpy as np
import optax

from benchmarks._common import write_results
from jaxsciml import optim, pde, train


def _soap(lr=3e-3, **kw):
    return lambda s: optim.soap(optax.exponential_decay(lr, max(int(s), 1), 0.1), **kw)


def _adam(lr=3e-3):
    return lambda s: pde.default_optimizer(s, lr)


# name -> (width, depth, optimizer factory(steps))
CONFIGS = {
    "SOAP 3e-3, width 32, depth 4": (32, 4, lambda s: pde.default_optimizer(s, method="soap")),
    "SOAP 3e-3, width 16, depth 4": (16, 4, lambda s: pde.default_optimizer(s, method="soap")),
    "SOAP 3e-3, width 16, depth 2": (16, 2, lambda s: pde.default_optimizer(s, method="soap")),
    "SOAP 3e-3, width 32, depth 2": (32, 2, lambda s: pde.default_optimizer(s, method="soap")),
    "Adam 3e-3, width 16, depth 4": (16, 4, _adam()),
    "SOAP 3e-3 precondition_every 20, width 16, depth 4": (16, 4, _soap(precondition_every=20)),
    "SOAP 1e-2, width 16, depth 4": (16, 4, _soap(1e-2)),
    "SOAP 1e-2, width 16, depth 2": (16, 2, _soap(1e-2)),
    "SOAP 3e-3 precondition_every 20, width 16, depth 2": (16, 2, _soap(precondition_every=20)),
}


def _fit(model, loss, opt, sample, steps, key, eval_fn=None, eval_every=0, start=None, steps_per_call=None):
    return train.fit(
        model,
        loss,
        opt,
        sample,
        steps,
        key=key,
        data_arg="key",
        nonfinite="raise",
        progress=False,
        eval_fn=eval_fn,
        eval_every=eval_every,
        start=start,
        steps_per_call=steps_per_call,
    )


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke size")
    parser.add_argument("--steps", type=int, default=600, help="steps of the reference (first) configuration")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--evals", type=int, default=6, help="error evaluations per run")
    parser.add_argument("--variants", default=None, help="';'-separated name prefixes (the reference always runs)")
    parser.add_argument("--reference", default=None, help="name prefix of the reference row (default: the first)")
    parser.add_argument("--name", default=None, help="results file stem (default nsm_rd_configs)")
    parser.add_argument("--out", default=None, help="output directory (default benchmarks/results)")
    args = parser.parse_args(argv)
    quick = args.quick
    prob = pde.ReactionDiffusion(nu=0.01, rho=5.0, nx=15 if quick else 31, nt=8 if quick else 12, ref_steps=200)
    batch, ntest, eval_shape = (4, 4, (32, 9)) if quick else (16, 16, (64, 21))
    steps_ref = 8 if quick else args.steps
    test = prob.sample(jax.random.key(123), ntest)
    ref = jax.vmap(lambda p: prob.reference(p, eval_shape))(test)
    names = list(CONFIGS)
    if args.reference:
        first = next(n for n in names if n.startswith(args.reference))
        names = [first] + [n for n in names if n != first]
    if args.variants:
        keys = [v.strip() for v in args.variants.split(";") if v.strip()]
        names = [names[0]] + [n for n in names[1:] if any(n.startswith(k) for k in keys)]
    if quick:
        names = names[:2]
    loss = lambda m, p: pde.nsm_loss(m, prob, p)  # noqa: E731
    sample = lambda k: prob.sample(k, batch)  # noqa: E731
    models = {}
    for n in names:
        w, d, _ = CONFIGS[n]
        models[n] = pde.NSM(
            prob.basis, prob.in_channels, 1, width=w, depth=d, activation=jax.nn.gelu, key=jax.random.key(0)
        )

    # step times side by side: compile each once, then interleaved rounds of `chunk` steps
    chunk = 2 if quick else 8
    probes = {n: [] for n in names}
    state = {}
    for n in names:
        opt = CONFIGS[n][2](steps_ref)
        state[n] = (opt, _fit(models[n], loss, opt, sample, chunk, jax.random.key(1), steps_per_call=chunk))
    for _ in range(2 if quick else args.rounds):
        for n in names:
            opt, res = state[n]
            res = _fit(models[n], loss, opt, sample, res.step + chunk, None, start=res, steps_per_call=chunk)
            probes[n].append((res.wall_s - res.compile_s) / chunk)
            state[n] = (opt, res)
    step_s = {n: statistics.median(v) for n, v in probes.items()}
    print({n: round(1e3 * v, 1) for n, v in step_s.items()}, flush=True)

    rows, curves = [], []
    load = [round(os.getloadavg()[0], 2)]
    config = {"steps_ref": steps_ref, "batch": batch, "test": ntest, "nx": prob.basis.shape, "rounds": args.rounds}

    def write():
        config["load_average_per_row"] = load
        return write_results(
            args.name or ("nsm_rd_configs_quick" if quick else "nsm_rd_configs"),
            {"configs": rows, "error_vs_time": curves},
            args.out,
            notes=NOTES,
            config=config,
        )

    pred_fn = {}
    for n in names:
        w, d, make_opt = CONFIGS[n]
        steps = max(int(round(steps_ref * step_s[names[0]] / step_s[n])), 4)
        jpred = jax.jit(lambda m, p: prob.solution_values(pde.nsm_predict(m, prob, p), eval_shape))
        pred_fn[n] = jpred
        eval_fn = lambda m, jpred=jpred: float(pde.relative_error(jpred(m, test), ref))  # noqa: E731
        every = max(steps // args.evals, 1)
        c0 = time.process_time()
        res = _fit(models[n], loss, make_opt(steps), sample, steps, jax.random.key(1), eval_fn, every)
        cpu_s = time.process_time() - c0
        cum = np.cumsum(res.history["time"])
        for st, e in zip(res.history["eval_step"], res.history["eval"], strict=True):
            curves.append({"config": n, "step": st, "train_s": float(cum[st - 1]), "rel_l2": e})
        load.append(round(os.getloadavg()[0], 2))
        row = {
            "config": n,
            "width": w,
            "depth": d,
            "rel_l2": res.history["eval"][-1],
            "best_rel_l2": min(res.history["eval"]),
            "steps": res.step,
            "train_s": res.wall_s - res.compile_s,
            "cpu_s_incl_compile": cpu_s,
            "compile_s": res.compile_s,
            "probe_step_ms": 1e3 * step_s[n],
            "train_step_ms": 1e3 * res.step_s,
            "final_loss": float(res.history["loss"][-1]),
            "load_end": load[-1],
        }
        rows.append(row)
        print({k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
        write()
    return write()


NOTES = (
    "Reaction-diffusion nu = 0.01 (the NSM paper's distribution: rho = 5, T = 1, u0 from the periodic kernel l = 0.2 "
    "on 64 points, min-max normalised), NSM with the spectral loss, Fourier(31) x Chebyshev(12), GELU, batch 16, "
    "float32, seed 0, 16 held-out initial conditions, relative L2 against the ETDRK4 reference on a 64 x 21 grid. "
    "Equal training time: step times measured side by side (all configurations compiled first, then interleaved "
    "rounds of 8 steps through `train.fit`, medians, compilation excluded: `probe_step_ms`); the first row takes "
    "`steps_ref` steps and each other row steps_ref x (first row's probe step time / its own), its learning-rate "
    "schedule (exponential decay x0.1) spanning its run. `train_s`: the measured training time (compilation and "
    "evaluation excluded); `cpu_s_incl_compile`: process CPU seconds of the whole fit call. Table `error_vs_time`: "
    "the held-out error during training against the training time so far. SOAP: `optim.soap` (betas 0.95, "
    "eigenbasis refresh every 10 steps unless the row says otherwise, blocks of 128); `pde.default_optimizer(steps, "
    "method='soap')` for the 3e-3 rows. The machine: 2 CPU cores shared with other sessions (load average after each "
    "row in `config.load_average_per_row`, first entry at the start): absolute times are upper bounds. One seed."
)


if __name__ == "__main__":
    main()
