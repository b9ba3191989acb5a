"""NSM on transport: linear advection and viscous Burgers through the README's minimal path (issue 18).

Every model is trained exactly as a user would: ``pde.Problem`` + ``pde.InitialValue`` + ``pde.NSM`` (width 32,
depth 4, GELU) + ``train.fit`` with ``pde.default_optimizer``, batch 16; x periodic on [0, 1), t in [0, T], T = 0.5.
Initial conditions: ``0.5 * gaussian_random_field(l = 0.6, kernel="periodic")`` with the mean removed (zero-mean,
amplitude 0.5), as in the README example. Scored on held-out initial conditions (a key never used in training) by the
relative L2 error over space-time (64 x-points x 11 uniform times) against an independent reference: the exact
``u0(x - c t)`` for advection, a NumPy/SciPy pseudo-spectral method of lines (256 points, 2/3 dealiasing, DOP853,
rtol 1e-10) for Burgers. Baselines scored the same way: ``u = u0`` and the heat equation (advection term dropped).

The ablation rows replace the spectral layers' complex per-frequency weights (which can phase-shift each Fourier mode,
i.e. translate) by the previous real per-coefficient weights (``fourier_axes=()``), everything else equal.

Usage: ``python benchmarks/nsm_transport.py [--steps 3000] [--problems advection1,burgers0.05] [--variants ...]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from scipy.integrate import solve_ivp

from jaxsciml import pde
from jaxsciml.train import fit

T = 0.5
EXTRA_NSM: dict = {}
EXTRA_OPT: dict = {}
NX, NT = 64, 11
DELTA = 5e-4  # the KdV-Burgers dispersion coefficient (held-out problem)


def make_problem(kind: str, param: float, nx: int, nt: int) -> tuple[pde.Problem, pde.TensorBasis]:
    basis = pde.TensorBasis(pde.Fourier(nx), pde.Chebyshev(nt, (0.0, T)))
    space = basis.bases[0]

    def sample(key, b):
        u0 = 0.5 * pde.gaussian_random_field(key, space, 0.6, shape=(b,), kernel="periodic")
        return u0.at[..., 0].set(0.0)

    if kind == "advection":

        def residual(u, u0):
            return pde.derivative(u, basis, 1) + param * pde.derivative(u, basis, 0)

    elif kind == "burgers":

        def residual(u, u0):
            ux = pde.derivative(u, basis, 0)
            adv = pde.pointwise(lambda w, wx: w * wx, basis, u, ux)
            return pde.derivative(u, basis, 1) + adv - param * pde.derivative(u, basis, 0, 2)

    elif kind == "kdvb":  # held-out: KdV-Burgers, u_t + u u_x = nu u_xx - DELTA u_xxx (dispersion)

        def residual(u, u0):
            ux = pde.derivative(u, basis, 0)
            adv = pde.pointwise(lambda w, wx: w * wx, basis, u, ux)
            disp = DELTA * pde.derivative(u, basis, 0, 3)
            return pde.derivative(u, basis, 1) + adv - param * pde.derivative(u, basis, 0, 2) + disp

    elif kind == "acadv":  # held-out: advected Allen-Cahn, u_t + u_x = nu u_xx + u - u^3

        def residual(u, u0):
            react = pde.pointwise(lambda w: w - w**3, basis, u)
            return (
                pde.derivative(u, basis, 1)
                + pde.derivative(u, basis, 0)
                - param * pde.derivative(u, basis, 0, 2)
                - react
            )

    else:
        raise ValueError(kind)
    prob = pde.Problem(basis, residual, sample=sample, constraints=[pde.InitialValue(axis=1)], time_axis=1)
    return prob, basis


def reference(
    kind: str, param: float, space: pde.Fourier, u0: np.ndarray, xs: np.ndarray, ts: np.ndarray
) -> np.ndarray:
    """Values (len(ts), len(xs)) of the reference solution for one initial condition (real layout coefficients)."""
    if kind == "advection":
        return np.stack([np.asarray(space.evaluate(jnp.asarray(u0), jnp.asarray(xs - param * t))) for t in ts])
    if kind == "heat":
        k = np.asarray(space.wavenumbers())
        return np.stack(
            [np.asarray(space.evaluate(jnp.asarray(u0 * np.exp(-param * k**2 * t)), jnp.asarray(xs))) for t in ts]
        )
    n = 256
    grid = np.arange(n) / n
    v0 = np.asarray(space.evaluate(jnp.asarray(u0), jnp.asarray(grid)))
    k = 2 * np.pi * np.fft.rfftfreq(n, 1.0 / n)
    keep = np.abs(np.fft.rfftfreq(n, 1.0 / n)) < n / 3

    def rhs(_t, v):
        vh = np.fft.rfft(v)
        vx = np.fft.irfft(1j * k * vh * keep, n)
        if kind == "acadv":  # u_t = -u_x + nu u_xx + u - u^3
            react = np.fft.rfft(v - v**3) * keep
            return np.fft.irfft(-1j * k * vh - param * k**2 * vh + react, n)
        nonlin = np.fft.rfft(v * vx) * keep
        disp = (-1j * k) ** 3 * DELTA * vh if kind == "kdvb" else 0.0  # -DELTA u_xxx; (ik)^3 = -i k^3
        return np.fft.irfft(-nonlin - param * k**2 * vh + disp, n)

    if kind == "kdvb":
        # integrating factor for the dispersive part only, a pure phase exp(i DELTA k^3 t) (explicit DOP853 on the
        # plain form is unstable: DELTA k^3 ~ 1e5 at the highest modes); diffusion stays in the explicit right-hand
        # side, as for Burgers (a real integrating factor exp(nu k^2 t) would overflow)
        phase_rate = 1j * DELTA * k**3

        def rhs_if(t, w):
            vh = np.exp(phase_rate * t) * w
            v = np.fft.irfft(vh, n)
            vx = np.fft.irfft(1j * k * vh * keep, n)
            dvh = -np.fft.rfft(v * vx) * keep - param * k**2 * vh
            return np.exp(-phase_rate * t) * dvh

        sol = solve_ivp(
            rhs_if, (0.0, T), np.fft.rfft(v0).astype(complex), method="DOP853", t_eval=ts, rtol=1e-10, atol=1e-12
        )
        vals = np.stack([np.fft.irfft(np.exp(phase_rate * t) * w, n) for t, w in zip(sol.t, sol.y.T)])
    else:
        sol = solve_ivp(rhs, (0.0, T), v0, method="DOP853", t_eval=ts, rtol=1e-10, atol=1e-12)
        vals = sol.y.T  # (nt, n)
    # evaluate the periodic reference at xs by its Fourier series
    vh = np.fft.rfft(vals, axis=1) / n
    kk = np.arange(vh.shape[1])
    phase = np.exp(2j * np.pi * np.outer(xs, kk))
    w = np.where(kk == 0, 1.0, 2.0)
    return np.real((vh * w) @ phase.T)


def values(basis: pde.TensorBasis, coeffs: jax.Array, xs: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """(B, nt, nx) values of solution coefficients (B, nx_coef, nt_coef)."""
    space, time_b = basis.bases
    vx = space.evaluate(coeffs, jnp.asarray(xs), axis=1)  # (B, len(xs), nt_coef)
    vxt = time_b.evaluate(vx, jnp.asarray(ts), axis=2)  # (B, len(xs), len(ts))
    return np.asarray(jnp.swapaxes(vxt, 1, 2))


def rel_l2(pred: np.ndarray, ref: np.ndarray) -> float:
    axes = tuple(range(1, pred.ndim))
    return float(np.mean(np.sqrt(np.sum((pred - ref) ** 2, axes) / np.sum(ref**2, axes))))


def run(kind, param, variant, steps, seed, n_test, nx, nt, width, depth, batch, max_time_s, log_every):
    prob, basis = make_problem(kind, param, nx, nt)
    model = pde.NSM(
        basis,
        prob.in_channels,
        1,
        width=width,
        depth=depth,
        activation=jax.nn.gelu,
        key=jax.random.key(seed),
        **EXTRA_NSM,
    )
    if variant == "real":  # the previous layer: real weight per coefficient index, no phase shift
        layers = tuple(
            pde.SpectralLayer(width, width, basis.shape, k) for k in jax.random.split(jax.random.key(seed), depth)
        )
        model = eqx.tree_at(lambda m: m.layers, model, layers)
    test = prob.sample(jax.random.key(10_000 + seed), n_test)
    xs = np.arange(NX) / NX
    ts = np.linspace(0.0, T, NT)
    ref = np.stack([reference(kind, param, basis.bases[0], np.asarray(u0), xs, ts) for u0 in test])
    heat_param = 0.0 if kind == "advection" else param
    base_u0 = rel_l2(np.stack([reference("heat", 0.0, basis.bases[0], np.asarray(u0), xs, ts) for u0 in test]), ref)
    base_heat = rel_l2(
        np.stack([reference("heat", heat_param, basis.bases[0], np.asarray(u0), xs, ts) for u0 in test]), ref
    )
    # projection of the reference on the model's basis (the best the basis can do)
    history = []
    t0 = time.perf_counter()
    opt = pde.default_optimizer(steps, **EXTRA_OPT)
    loss_fn = lambda m, p: pde.nsm_loss(m, prob, p)  # noqa: E731
    train_s = compile_s = 0.0
    res = None
    done = 0
    while done < steps:
        done = min(done + log_every, steps)
        res = fit(
            model,
            loss_fn,
            opt,
            lambda k: prob.sample(k, batch),
            done,
            key=jax.random.key(seed + 1),
            progress=False,
            start=res,
        )
        compile_s += res.compile_s
        train_s += res.wall_s - res.compile_s
        err = rel_l2(values(basis, pde.nsm_predict(res.model, prob, test), xs, ts), ref)
        history.append(
            {"step": done, "train_s": round(train_s, 2), "loss": float(res.history["loss"][-1]), "rel_l2": err}
        )
        print(
            f"  {kind}{param} {variant}: step {done} train {train_s:.0f}s loss {history[-1]['loss']:.3e} "
            f"rel_l2 {err:.4f}",
            flush=True,
        )
        if max_time_s is not None and train_s > max_time_s:
            break
    return {
        "problem": f"{kind} {param}",
        "variant": variant,
        "final_rel_l2": history[-1]["rel_l2"],
        "baseline_u0": base_u0,
        "baseline_heat": base_heat,
        "compile_s": compile_s,
        "history": history,
        "wall_total_s": time.perf_counter() - t0,
    }


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--problems", default="advection0.25,advection1.0,burgers0.05,burgers0.02")
    ap.add_argument("--variants", default="complex,real")
    ap.add_argument("--nx", type=int, default=25)
    ap.add_argument("--nt", type=int, default=10)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--n-test", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-time-s", type=float, default=None)
    ap.add_argument("--log-every", type=int, default=250)
    ap.add_argument("--out", default=None)
    ap.add_argument("--nsm", default="{}", help="extra NSM keyword arguments as JSON (ablations)")
    ap.add_argument("--opt", default="{}", help="extra default_optimizer keyword arguments as JSON (ablations)")
    args = ap.parse_args(argv)
    EXTRA_NSM.update(json.loads(args.nsm))
    EXTRA_OPT.update(json.loads(args.opt))
    rows = []
    for spec in args.problems.split(","):
        kind = spec.rstrip("0123456789.")
        param = float(spec[len(kind) :])
        for variant in args.variants.split(","):
            rows.append(
                run(
                    kind,
                    param,
                    variant,
                    args.steps,
                    args.seed,
                    args.n_test,
                    args.nx,
                    args.nt,
                    args.width,
                    args.depth,
                    args.batch,
                    args.max_time_s,
                    args.log_every,
                )
            )
    meta = {
        "argv": sys.argv[1:],
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "jax": jax.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    print("\n| problem | layer | rel. L2 | u = u0 | heat / no advection | train s | steps |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        h = r["history"][-1]
        print(
            f"| {r['problem']} | {r['variant']} | {100 * r['final_rel_l2']:.2f}% | {100 * r['baseline_u0']:.1f}% | "
            f"{100 * r['baseline_heat']:.1f}% | {h['train_s']:.0f} | {h['step']} |"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
