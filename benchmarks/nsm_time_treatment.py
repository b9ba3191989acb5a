"""The treatment of time in NSM training at equal wall time (issue 18, section 1): the whole interval at once (the
package default), causal weighting of the residual (Wang, Sankaran & Perdikaris 2022/2024, adapted to the spectral
loss: ``jaxsciml/pde/_causal.py``), and time-marching in two windows.

Problems: reaction--diffusion nu = 0.01 (the NSM paper's distribution and ``nsm_ablation.py``'s setting: Fourier(31) x
Chebyshev(12), T = 1, rho = 5; 16 held-out initial conditions; ETDRK4 reference on 64 x 21 points) and viscous Burgers
nu = 0.02, T = 0.5 through the README's minimal ``pde.Problem`` path (``nsm_transport.py``'s setting: Fourier(25) x
Chebyshev(10), zero-mean GRF initial conditions of amplitude 0.5; 16 held-out initial conditions; its SciPy DOP853
pseudo-spectral reference on 64 x 11 points).

Rows (one change at a time against the default: Adam 3e-3 decayed x0.1 (``pde.default_optimizer``), width 32,
depth 4, GELU, batch 16, float32):

- ``default``: the exact spectral loss over the whole interval, ``--steps`` steps; its training time (compile
  excluded) is the budget.
- ``causal eps=e``: the causally weighted loss with ``eps = e`` (Gauss--Legendre nodes in time, ``K = n_t``). The
  step costs the same as the default's to within noise (the per-time norms are a ``K x n_t`` matrix product), so
  these rows take the same number of steps; their measured time ratio is reported.
- ``march 2 windows``: two models on ``[0, T/2]`` each (the PDEs are autonomous, so the second window is the same
  problem on a shifted time axis; same basis sizes per window, i.e. twice the time resolution over ``[0, T]``).
  Window 1: ``steps / 2`` steps on the sampled initial conditions. Window 2: trained on window 1's predicted state at
  ``T/2`` (window 1's model frozen, evaluated on fresh samples at every step), for the rest of the budget:
  a 12-step timing probe, then ``(budget - window 1 time) / step time`` steps, stopped at 1.1x that time.
  ``warm``: window 2's model starts from window 1's; ``cold``: from a fresh initialisation.

    python benchmarks/nsm_time_treatment.py --problems rd,burgers --steps 300
    python benchmarks/nsm_time_treatment.py --quick         # smoke size
"""

from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._common import write_results
from benchmarks.nsm_transport import make_problem as transport_problem
from benchmarks.nsm_transport import reference as burgers_reference
from jaxsciml import pde
from jaxsciml.pde._causal import causal_loss, time_residuals


def _burgers(nu: float, t_end: float, nx: int, nt: int) -> pde.Problem:
    """``u_t + u u_x = nu u_xx`` on ``[0, 1) x [0, t_end]`` through ``pde.Problem`` (as ``nsm_transport.py``)."""
    basis = pde.TensorBasis(pde.Fourier(nx), pde.Chebyshev(nt, (0.0, t_end)))
    space = basis.bases[0]

    def sample(key, b):
        u0 = 0.5 * pde.gaussian_random_field(key, space, 0.6, shape=(b,), kernel="periodic")
        return u0.at[..., 0].set(0.0)

    def residual(u, u0):
        ux = pde.derivative(u, basis, 0)
        adv = pde.pointwise(lambda w, wx: w * wx, basis, u, ux)
        return pde.derivative(u, basis, 1) + adv - nu * pde.derivative(u, basis, 0, 2)

    return pde.Problem(basis, residual, sample=sample, constraints=[pde.InitialValue(axis=1)], time_axis=1)


def _setting(name: str, quick: bool) -> dict:
    """Problem on the whole interval, the same problem on a half window, held-out set, reference values (B, t, x)."""
    if name == "rd":
        kw = {"nu": 0.01, "rho": 5.0, "nx": 15 if quick else 31, "nt": 8 if quick else 12, "ref_steps": 200}
        prob = pde.ReactionDiffusion(t_final=1.0, **kw)
        half = pde.ReactionDiffusion(t_final=0.5, **kw)
        test = prob.sample(jax.random.key(123), 4 if quick else 16)
        ref = jax.vmap(lambda p: prob.reference(p, (64, 21)))(test)  # (B, x, t)
        xs, ts = np.arange(64) / 64, np.linspace(0.0, 1.0, 21)
        return {"label": "reaction_diffusion_nu0.01", "prob": prob, "half": half, "test": test, "T": 1.0,
                "ref": np.swapaxes(np.asarray(ref), 1, 2), "xs": xs, "ts": ts}  # fmt: skip
    if name == "burgers":
        nx, nt, t_end = (15 if quick else 25), (6 if quick else 10), 0.5
        prob, half = _burgers(0.02, t_end, nx, nt), _burgers(0.02, t_end / 2, nx, nt)
        test = prob.sample(jax.random.key(10_000), 4 if quick else 16)
        xs, ts = np.arange(64) / 64, np.linspace(0.0, t_end, 11)
        space = prob.basis.bases[0]
        ref = np.stack([burgers_reference("burgers", 0.02, space, np.asarray(u0), xs, ts) for u0 in test])
        return {"label": "burgers_nu0.02", "prob": prob, "half": half, "test": test, "T": t_end, "ref": ref,
                "xs": xs, "ts": ts}  # fmt: skip
    kind = name.rstrip("0123456789.")
    if kind in ("kdvb", "acadv", "advection"):  # nsm_transport's held-out problems (T = 0.5); no half window
        param = float(name[len(kind) :])
        prob, basis = transport_problem(kind, param, 15 if quick else 25, 6 if quick else 10)
        test = prob.sample(jax.random.key(10_000), 4 if quick else 16)
        xs, ts = np.arange(64) / 64, np.linspace(0.0, 0.5, 11)
        ref = np.stack([burgers_reference(kind, param, basis.bases[0], np.asarray(u0), xs, ts) for u0 in test])
        return {"label": name, "prob": prob, "half": None, "test": test, "T": 0.5, "ref": ref, "xs": xs, "ts": ts}
    raise ValueError(f"unknown problem {name!r} (expected rd, burgers, kdvb<nu>, acadv<nu>, advection<c>)")


def _values(basis: pde.TensorBasis, coeffs, xs, ts) -> np.ndarray:
    """(B, len(ts), len(xs)) values of space-time coefficients (B, n_x, n_t)."""
    space, time_b = basis.bases
    vx = space.evaluate(coeffs, jnp.asarray(xs, coeffs.dtype), axis=1)
    return np.asarray(jnp.swapaxes(time_b.evaluate(vx, jnp.asarray(ts, coeffs.dtype), axis=2), 1, 2))


def _rel(pred: np.ndarray, ref: np.ndarray) -> float:
    return float(np.mean(np.sqrt(np.sum((pred - ref) ** 2, (1, 2)) / np.sum(ref**2, (1, 2)))))


def _model(prob, cfg, seed):
    return pde.NSM(
        prob.basis, prob.in_channels, 1, width=cfg["width"], depth=cfg["depth"], activation=jax.nn.gelu,
        key=jax.random.key(seed),
    )  # fmt: skip


METHOD = {"method": "adam"}


def _train(model, prob, loss_fn, sample_fn, steps, seed, max_time_s=None):
    opt = pde.default_optimizer(steps, method=METHOD["method"])
    return pde.train_operator(
        model, loss_fn, sample_fn, steps, jax.random.key(seed + 1), optimizer=opt, max_time_s=max_time_s
    )


def _end_state(model, prob, params, t):
    """Fourier coefficients (B, n_x) of the predicted solution at time ``t``."""
    u = pde.nsm_predict(model, prob, params)
    return prob.basis.bases[1].evaluate(u, jnp.asarray([t], u.dtype), axis=-1)[..., 0]


def _whole(s, cfg, steps, seed, eps):
    prob, batch = s["prob"], cfg["batch"]
    if eps is None:
        loss_fn = lambda m, p: pde.nsm_loss(m, prob, p)  # noqa: E731
    else:

        def loss_fn(m, p):
            u = pde.nsm_predict(m, prob, p)
            return causal_loss(jax.vmap(prob.residual)(u, p), prob.basis, 1, eps)

    model, rec = _train(_model(prob, cfg, seed), prob, loss_fn, lambda k: prob.sample(k, batch), steps, seed)
    u = jax.jit(lambda p: pde.nsm_predict(model, prob, p))(s["test"])
    # diagnostics on the held-out set: the plain spectral loss, and the causal weight at the last node for eps = 100
    per_time, _, q = time_residuals(jax.vmap(prob.residual)(u, s["test"]), prob.basis, 1)
    w_end = float(jnp.mean(jnp.exp(-100.0 * (per_time[:, :-1] @ q[:-1]))))
    extra = {"test_loss": float(jnp.mean(per_time @ q)), "w_last_eps100": w_end}
    return _rel(_values(prob.basis, u, s["xs"], s["ts"]), s["ref"]), rec, extra


def _march(s, cfg, steps, seed, budget, warm):
    prob, half, batch, t_half = s["prob"], s["half"], cfg["batch"], s["T"] / 2
    loss_fn = lambda m, p: pde.nsm_loss(m, half, p)  # noqa: E731
    n1 = max(steps // 2, 1)
    m1, rec1 = _train(_model(half, cfg, seed), half, loss_fn, lambda k: half.sample(k, batch), n1, seed)

    def sample2(k):
        return jax.lax.stop_gradient(_end_state(m1, half, prob.sample(k, batch), t_half))

    init2 = m1 if warm else _model(half, cfg, seed + 7)
    left = max(budget - rec1["train_s"], 0.0)
    _, probe = _train(init2, half, loss_fn, sample2, 12, seed + 2)
    n2 = int(max(round(left / probe["step_s"]), 5))
    m2, rec2 = _train(init2, half, loss_fn, sample2, n2, seed + 2, 1.1 * left if left > 0 else None)
    # chain the two windows on the evaluation times
    test, ts = s["test"], s["ts"]
    u1 = jax.jit(lambda p: pde.nsm_predict(m1, half, p))(test)
    u2 = jax.jit(lambda p: pde.nsm_predict(m2, half, _end_state(m1, half, p, t_half)))(test)
    first = ts <= t_half + 1e-12
    v1 = _values(half.basis, u1, s["xs"], ts[first])
    v2 = _values(half.basis, u2, s["xs"], ts[~first] - t_half)
    err = _rel(np.concatenate([v1, v2], axis=1), s["ref"])
    rec = {
        "steps": f"{rec1['steps']}+{rec2['steps']}",
        "train_s": rec1["train_s"] + rec2["train_s"],
        "step_s": (rec1["train_s"] + rec2["train_s"]) / (rec1["steps"] + rec2["steps"]),
        "compile_s": rec1["compile_s"] + rec2["compile_s"] + probe["compile_s"],
        "loss": [rec2["loss"][-1]],
    }
    return err, rec, {"window1_loss": float(rec1["loss"][-1]), "window1_train_s": rec1["train_s"]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke size")
    parser.add_argument(
        "--problems", default="rd,burgers", help="comma-separated: rd, burgers, and nsm_transport's kdvb0.02, acadv0.01"
    )
    parser.add_argument("--steps", type=int, default=300, help="steps of the default recipe (sets the time budget)")
    parser.add_argument("--eps", default="1,10,100,1000", help="comma-separated causal eps values")
    parser.add_argument("--no-march", action="store_true", help="skip the time-marching rows")
    parser.add_argument("--seed", type=int, default=0, help="model / training seed (held-out sets are fixed)")
    parser.add_argument("--method", default="adam", help="pde.default_optimizer method for every row (adam, soap)")
    parser.add_argument("--name", default=None, help="results file stem (default nsm_time_treatment)")
    parser.add_argument("--out", default=None, help="output directory (default benchmarks/results)")
    args = parser.parse_args(argv)
    METHOD["method"] = args.method
    cfg = {"width": 8, "depth": 2, "batch": 4} if args.quick else {"width": 32, "depth": 4, "batch": 16}
    steps = 6 if args.quick else args.steps
    eps_values = [float(e) for e in args.eps.split(",") if e.strip()]
    name = args.name or ("nsm_time_treatment_quick" if args.quick else "nsm_time_treatment")
    rows: list[dict] = []
    config = dict(
        cfg, steps=steps, eps=eps_values, seed=args.seed, method=args.method, activation="gelu", dtype="float32"
    )
    config["load_average"] = {}

    def write():
        return write_results(name, {"time_treatment": rows}, args.out, notes=NOTES, config=config)

    for pname in [p.strip() for p in args.problems.split(",") if p.strip()]:
        s = _setting(pname, args.quick)
        load = [round(os.getloadavg()[0], 2)]
        budget = base = None
        plan = [("default (whole interval)", "whole", None)] + [(f"causal eps={e:g}", "whole", e) for e in eps_values]
        if not args.no_march and s["half"] is not None:
            plan += [("march 2 windows, warm", "march", True), ("march 2 windows, cold", "march", False)]
        for vname, kind, arg in plan:
            if kind == "whole":
                err, rec, extra = _whole(s, cfg, steps, args.seed, arg)
            else:
                err, rec, extra = _march(s, cfg, steps, args.seed, budget, arg)
            if budget is None:
                budget, base = rec["train_s"], err
            row = {
                "problem": s["label"],
                "variant": vname,
                "rel_l2": err,
                "vs_default": err / base,
                "time_vs_default": rec["train_s"] / budget,
                "steps": rec["steps"],
                "train_s": rec["train_s"],
                "step_ms": 1e3 * rec["step_s"],
                "compile_s": rec["compile_s"],
                "final_loss": float(rec["loss"][-1]),
                **{k: extra.get(k, "") for k in ("test_loss", "w_last_eps100", "window1_loss")},
                "load": round(os.getloadavg()[0], 2),
            }
            rows.append(row)
            print({k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
            config["load_average"][s["label"]] = load + [round(os.getloadavg()[0], 2)]
            write()
    return write()


NOTES = (
    "Equal training wall time (compile excluded) against the package default (first row per problem): `causal` rows "
    "take the default's step count (their step cost is the default's to within noise; `time_vs_default` is the "
    "measured ratio); `march` rows split the budget over two windows [0, T/2] (window 1: steps/2 steps; window 2, "
    "trained on window 1's predicted state at T/2: the rest of the budget, by a 12-step timing probe; steps given as "
    "window1+window2). Causal loss: Wang, Sankaran & Perdikaris (2022/2024) on the spectral residual: per-time "
    "spatial norms L(t_k) exact in space (Parseval) at the n_t Gauss-Legendre nodes of the time axis, weights "
    "w_k = exp(-eps sum_{j<k} L(t_j) q_j) without gradient, loss = mean_b sum_k w_k L(t_k) q_k (eps = 0: the exact "
    "spectral loss). `test_loss`: the plain spectral loss on the held-out set; `w_last_eps100`: the causal weight of "
    "the last time node at eps = 100 on the held-out set (near 1: the residual accumulated before T is < 0.01). "
    "Relative L2 over space-time on uniform points against the reference solvers (RD: ETDRK4, 64 x 21; Burgers: "
    "SciPy DOP853 pseudo-spectral, 64 x 11), 16 held-out initial conditions. One seed per row. The machine is a "
    "2-core CPU shared with other jobs (`load` per row: 1-min load average at its end); step times are noisy and "
    "differences under ~1.3x are within seed noise (nsm_ablation.md)."
)


if __name__ == "__main__":
    main()
