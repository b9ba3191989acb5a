"""Side by side: jaxsciml's NSM against the authors' code (github ASK-Berkeley/Neural-Spectral-Methods).

The authors' code is not part of jaxsciml: it runs from a checkout given on the command line, in its own Python
environment (Python 3.11, jax 0.4.13, jaxlib 0.4.13, flax 0.7.0, optax 0.1.5, numpy 1.26, scipy < 1.12), through
``benchmarks/_nsm_authors_driver.py``::

    python benchmarks/nsm_authors.py --authors-path /path/to/Neural-Spectral-Methods \\
        --authors-python /path/to/venv-nsm/bin/python [--problem poisson reaction] [--steps 200]

What is identical on both sides:

- the data: the training pool (one batch of 16 per step) and the held-out set are drawn once with the *authors'*
  samplers (their Gaussian process with the periodic kernel ``exp(-sin^2(pi d) / (2 l^2))`` per axis, ``l = 0.2``;
  periodic Poisson sources on a 16x16 grid with the mean removed; reaction--diffusion initial conditions on 64 points,
  min--max normalised to ``[0, 1]``), saved to one ``.npz``, and read by both sides; jaxsciml gets the same
  band-limited functions through exact trigonometric interpolation onto its own grid (:func:`periodic_resample`);
- the problems: ``-Laplace(u) = f`` on the periodic unit square; ``u_t = nu u_xx + rho u (1 - u)`` with
  ``nu = 0.01``, ``rho = 5``, ``x`` periodic on ``[0, 1)``, ``t in [0, 1]``;
- the recipe: width 32, 4 spectral layers, per-mode weights on every retained mode (31x31 Fourier modes for Poisson;
  64 Fourier x 32 Chebyshev for the authors' reaction--diffusion, 65 x 32 here because jaxsciml's Fourier sizes are
  odd), ReLU, batch 16, Adam with ``lr = 1e-3 * (1e-3) ** (step / steps)``, the same number of steps, the same seed
  number (the initial weights differ: different libraries), float32;
- the evaluation: relative L2 error on the held-out set against an accurate reference (the exact Fourier solve for
  Poisson; ETDRK4 on 256 points with 2048 steps for reaction--diffusion), on the same uniform grid (64x64; 64 x 65 in
  ``(x, t)``), with the Poisson gauge removed (both predictions and the reference have their grid mean subtracted: the
  authors pin ``u(0) = 0``, jaxsciml pins the mean).

Timing: both trainings run at the same time as two processes that take turns (chunks of ``--chunk`` steps,
alternating which side goes first), so the load on the shared machine is the same for both; each step is timed to
``block_until_ready``; compilation is done ahead of time and reported separately. The step-time ratio is the median
over chunks of (jaxsciml median step) / (authors' median step) in the same chunk.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import equinox as eqx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DRIVER = Path(__file__).resolve().parent / "_nsm_authors_driver.py"
AUTHORS_SCALE = 1e-3  # the authors' mollifiers multiply the network output by this constant (src/pde/mollifier.py)
PROBLEMS = ("poisson", "reaction")


# ---------------------------------------------------------------------------------------------------------------- data


def periodic_resample(values: np.ndarray, m: int, axis: int = -1) -> np.ndarray:
    """Values on ``m`` equispaced points ``j / m`` of the trigonometric interpolant of ``n <= m`` equispaced samples
    along ``axis`` (period 1). For even ``n`` the Nyquist mode is read as ``cos(pi n x)`` (real), which is how the
    authors' Fourier basis interprets it, so the result is exactly their interpolated function."""
    v = np.asarray(values, dtype=np.float64)
    n = v.shape[axis]
    if m < n:
        raise ValueError(f"`m` must be >= the number of samples {n}, got {m}")
    c = np.fft.rfft(v, axis=axis, norm="forward")
    c = np.moveaxis(c, axis, -1)
    out = np.zeros(c.shape[:-1] + (m // 2 + 1,), dtype=complex)
    if n % 2 == 0:
        out[..., : n // 2] = c[..., : n // 2]
        out[..., n // 2] = c[..., n // 2].real / (1.0 if m == n else 2.0)  # cos(pi n x): half on each of +-n/2
    else:
        out[..., : n // 2 + 1] = c
    return np.moveaxis(np.fft.irfft(out, m, axis=-1, norm="forward"), -1, axis)


def _run_driver(args, *cmd: str) -> dict:
    res = subprocess.run(
        [args.authors_python, str(DRIVER), "--authors-path", args.authors_path, *cmd],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    replies = [json.loads(line[3:]) for line in res.stdout.splitlines() if line.startswith("@@ ")]
    if res.returncode != 0 or not replies:
        raise RuntimeError(f"authors' driver failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
    return replies[-1]


class _Authors:
    """The authors' training, served by the driver in their environment; one command at a time."""

    def __init__(self, args, problem: str, data: str, log):
        modes = ["31", "31"] if problem == "poisson" else ["32", "64"]
        cmd = [args.authors_python, str(DRIVER), "--authors-path", args.authors_path, "serve", "--problem", problem]
        cmd += ["--data", data, "--steps", str(args.steps), "--seed", str(args.seed), "--modes", *modes]
        cmd += ["--width", str(args.width), "--depth", str(args.depth), "--batch", str(args.batch)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
        self.ready = self._read()

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith("@@ "):
                return json.loads(line[3:])
        raise RuntimeError(f"authors' driver exited ({self.proc.wait()}); see the log")

    def __call__(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            self("quit")
        finally:
            self.proc.wait(timeout=60)


# ------------------------------------------------------------------------------------------------------------ jaxsciml


def _setup_jaxsciml(problem: str, data: dict, args):
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from jaxsciml import pde

    if problem == "poisson":
        prob = pde.PoissonPeriodic(n=31)
        to_params = lambda v: prob.basis.forward(periodic_resample(periodic_resample(v, 31, -1), 31, -2))  # noqa: E731
    else:
        prob = pde.ReactionDiffusion(nu=0.01, rho=5.0, t_final=1.0, nx=65, nt=32)
        to_params = lambda v: prob.space.forward(periodic_resample(v, 65, -1))  # noqa: E731
    key = jax.random.key(args.seed)
    kw: dict[str, Any] = dict(width=args.width, depth=args.depth, modes=prob.basis.shape, activation=jax.nn.relu)
    scale_how = "none"
    if args.output_scale is not None:
        if "output_scale" in inspect.signature(pde.NSM).parameters:
            kw["output_scale"] = args.output_scale
            scale_how = "pde.NSM(output_scale=...)"
        else:
            scale_how = "benchmark-side wrapper (this jaxsciml has no NSM output scale)"
    model = pde.NSM(prob.basis, prob.in_channels, 1, key=key, **kw)
    if args.output_scale is not None and "output_scale" not in kw:
        model = _Scaled(model, args.output_scale)
    pool = np.stack([np.asarray(to_params(b), np.float32) for b in data["train"]])
    test = jnp.asarray(to_params(data["test"]), jnp.float32)
    n_params = int(sum(x.size for x in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array))))
    return prob, model, pool, test, n_params, scale_how


class _Scaled(eqx.Module):
    """``scale * net(x)``: the authors' constant output scale (their mollifiers multiply by 1e-3)."""

    net: eqx.Module
    scale: float = eqx.field(static=True)

    def __call__(self, x):
        return self.scale * self.net(x)


def _compiled_step(prob, model, steps: int, lr: float, batch0):
    import equinox as eqx
    import jax
    import optax

    from jaxsciml import pde

    opt = optax.adam(optax.exponential_decay(lr, steps, 1e-3))  # lr * (1e-3) ** (step / steps), as the authors'
    params, static = eqx.partition(model, eqx.is_inexact_array)
    state = opt.init(params)

    def step(params, state, batch):
        loss, grads = jax.value_and_grad(lambda p: pde.nsm_loss(eqx.combine(p, static), prob, batch))(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    t0 = time.perf_counter()
    lowered = jax.jit(step).lower(params, state, batch0)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    flops = _flops(compiled)
    return compiled, params, static, state, compile_s, flops


def _flops(compiled) -> float | None:
    try:
        ca = compiled.cost_analysis()
        ca = ca[0] if isinstance(ca, list | tuple) else ca
        return float(ca["flops"])
    except Exception:  # pragma: no cover - cost analysis is best effort
        return None


# ------------------------------------------------------------------------------------------------- sampler agreement


def _band_fractions(values: np.ndarray, ndim: int) -> dict[str, float]:
    """Pointwise standard deviation and the share of the (mean-removed) variance at ``|k| >= 3`` and ``|k| >= 6``."""
    axes = tuple(range(-ndim, 0))
    v = values - values.mean(axis=axes, keepdims=True)
    power = np.abs(np.fft.fftn(v, axes=axes)) ** 2
    ks = np.meshgrid(*[np.abs(np.fft.fftfreq(n, 1.0 / n)) for n in values.shape[-ndim:]], indexing="ij")
    k = np.sqrt(sum(x**2 for x in ks))
    tot = power.sum(axis=axes)
    return {
        "std": float(values.std(axis=0).mean()),
        "var_frac_k>=3": float(np.mean(power[..., k >= 3].sum(-1) / tot)),
        "var_frac_k>=6": float(np.mean(power[..., k >= 6].sum(-1) / tot)),
    }


def sampler_agreement(problem: str, authors_values: np.ndarray, seed: int = 1) -> list[dict]:
    """Statistics of the authors' draws (``authors_values`` on their sampling grid) next to jaxsciml's default paper
    sampler for the same problem, evaluated on the same grid."""
    import jax

    from jaxsciml import pde

    a = np.asarray(authors_values, np.float64).reshape(-1, *authors_values.shape[-(2 if problem == "poisson" else 1) :])
    n = a.shape[0]
    key = jax.random.key(seed)
    if problem == "poisson":
        prob = pde.PoissonPeriodic(n=31)
        j = np.asarray(jax.vmap(lambda c: prob.basis.evaluate_uniform(c, a.shape[1:]))(prob.sample(key, n)))
        stats = [_band_fractions(a, 2), _band_fractions(j, 2)]
    else:
        prob = pde.ReactionDiffusion(nu=0.01, rho=5.0, nx=65, nt=32)
        x = np.arange(a.shape[-1]) / a.shape[-1]
        j = np.asarray(prob.space.evaluate(prob.sample(key, n), x))
        stats = [_band_fractions(a, 1), _band_fractions(j, 1)]
        for st, v in zip(stats, (a, j)):
            st["mean"] = float(v.mean())
            st["min"], st["max"] = float(v.min(axis=-1).mean()), float(v.max(axis=-1).mean())
    return [{"problem": problem, "sampler": who, "draws": n, **st} for who, st in zip(("authors", "jaxsciml"), stats)]


# ---------------------------------------------------------------------------------------------------------- reference


def references(problem: str, test_values: np.ndarray) -> np.ndarray:
    """Accurate reference solutions of the held-out set on the evaluation grid (float64)."""
    import jax
    import jax.numpy as jnp

    from jaxsciml import pde

    with jax.enable_x64(True):
        if problem == "poisson":
            prob = pde.PoissonPeriodic(n=31)
            v = periodic_resample(periodic_resample(test_values, 31, -1), 31, -2)
            f = prob.basis.forward(jnp.asarray(v, jnp.float64))
            return np.asarray(jax.vmap(lambda c: prob.basis.evaluate_uniform(prob.solve(c), (64, 64)))(f))
        u0 = jnp.asarray(periodic_resample(test_values, 256, -1), jnp.float64)
        sol = pde.solve_reaction_diffusion(u0, 0.01, 5.0, 1.0, 2048, 65)  # (B, 256, 65)
        return np.asarray(sol[:, ::4, :])


def relative_errors(problem: str, pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-sample relative L2 error on the grid; for periodic Poisson the (arbitrary) constant is removed first."""
    pred = np.asarray(pred, np.float64)
    ref = np.asarray(ref, np.float64)
    if problem == "poisson":
        pred = pred - pred.mean(axis=(-2, -1), keepdims=True)
        ref = ref - ref.mean(axis=(-2, -1), keepdims=True)
    axes = tuple(range(1, pred.ndim))
    return np.sqrt(np.sum((pred - ref) ** 2, axes) / np.sum(ref**2, axes))


def trivial_rel_l2(problem: str, test_values: np.ndarray, ref: np.ndarray) -> float:
    """Mean relative error of the prediction that needs no training: ``u = 0`` (Poisson) or ``u(x, t) = u0(x)``
    (reaction--diffusion, what both mollifiers give at zero network output)."""
    if problem == "poisson":
        return 1.0
    u0 = periodic_resample(test_values, ref.shape[1], -1)
    return float(relative_errors(problem, np.broadcast_to(u0[..., None], ref.shape), ref).mean())


def error_verdict(js: float, au: float, trivial: float) -> str:
    """``met``/``missed`` for jaxsciml's error <= the authors'; ``inconclusive`` while neither side is clearly below the
    untrained prediction (both above 90% of its error)."""
    if min(js, au) > 0.9 * trivial:
        return "inconclusive (neither trained)"
    return "met" if js <= au else "missed"


# -------------------------------------------------------------------------------------------------------------- run


def run_problem(problem: str, args, workdir: Path, log) -> dict:
    import equinox as eqx
    import jax

    from jaxsciml import pde

    data_path = str(workdir / f"{problem}.npz")
    t0 = time.perf_counter()
    info = _run_driver(
        args, "sample", "--problem", problem, "--out", data_path, "--train-batches", str(args.steps),
        "--batch", str(args.batch), "--test", str(args.test), "--seed", str(args.data_seed),
    )  # fmt: skip
    data = dict(np.load(data_path))
    print(f"[{problem}] data {info} in {time.perf_counter() - t0:.1f}s", file=log, flush=True)
    ref = references(problem, data["test"])

    prob, model, pool, test, n_params, scale_how = _setup_jaxsciml(problem, data, args)
    compiled, params, static, state, js_compile, js_flops = _compiled_step(prob, model, args.steps, args.lr, pool[0])
    authors = _Authors(args, problem, data_path, log)
    print(f"[{problem}] authors ready {authors.ready}; jaxsciml compile {js_compile:.1f}s", file=log, flush=True)
    try:
        js_times, au_times, js_loss, au_loss, chunk_ratios, loads = [], [], [], [], [], []
        it = 0
        chunk = 0
        while it < args.steps:
            k = min(args.chunk, args.steps - it)
            load0 = os.getloadavg()[0]

            def run_js(k=k, start=it):
                nonlocal params, state
                ts, ls = [], []
                for i in range(start, start + k):
                    b = jax.device_put(pool[i])
                    jax.block_until_ready(b)
                    t = time.perf_counter()
                    params, state, loss = compiled(params, state, b)
                    jax.block_until_ready((params, state, loss))
                    ts.append(time.perf_counter() - t)
                    ls.append(float(loss))
                return ts, ls

            if chunk % 2 == 0:
                a = authors(f"train {k}")
                jt, jl = run_js()
            else:
                jt, jl = run_js()
                a = authors(f"train {k}")
            js_times += jt
            js_loss += jl
            au_times += a["times"]
            au_loss += a["loss"]
            chunk_ratios.append(statistics.median(jt) / statistics.median(a["times"]))
            loads.append((load0 + os.getloadavg()[0]) / 2)
            it += k
            chunk += 1
            print(
                f"[{problem}] step {it}: jaxsciml {statistics.median(jt):.3f}s loss {jl[-1]:.3e} | authors "
                f"{statistics.median(a['times']):.3f}s loss {a['loss'][-1]:.3e} | load {loads[-1]:.2f}",
                file=log,
                flush=True,
            )
        pred_path = str(workdir / f"{problem}_authors_pred.npz")
        authors(f"predict {pred_path}")
        au_pred = np.load(pred_path)["u"]
        native = authors(f"native {args.native_steps}") if args.native_steps else {}
    finally:
        authors.close()

    trained = eqx.combine(params, static)
    u = pde.nsm_predict(trained, prob, test)
    shape = (64, 64) if problem == "poisson" else (64, 65)
    js_pred = np.asarray(jax.vmap(lambda c: prob.solution_values(c, shape))(u))
    js_err = relative_errors(problem, js_pred, ref)
    au_err = relative_errors(problem, au_pred, ref)
    js_step, au_step = statistics.median(js_times), statistics.median(au_times)
    ratio = statistics.median(chunk_ratios)
    trivial = trivial_rel_l2(problem, data["test"], ref)
    row = {
        "problem": "periodic Poisson" if problem == "poisson" else "reaction-diffusion nu=0.01",
        "steps": args.steps,
        "jaxsciml_step_s": js_step,
        "authors_step_s": au_step,
        "step_time_ratio": ratio,
        "time_target_<=0.5": "met" if ratio <= 0.5 else "missed",
        "jaxsciml_rel_l2": float(js_err.mean()),
        "authors_rel_l2": float(au_err.mean()),
        "untrained_rel_l2": trivial,
        "error_ratio": float(js_err.mean() / au_err.mean()),
        "error_target_<=1": error_verdict(float(js_err.mean()), float(au_err.mean()), trivial),
    }
    detail = {
        "problem": problem,
        "jaxsciml_params": n_params,
        "authors_params": authors.ready.get("params"),
        "jaxsciml_flops_per_step": js_flops,
        "authors_flops_per_step": authors.ready.get("flops"),
        "jaxsciml_compile_s": js_compile,
        "authors_compile_s": authors.ready.get("compile_s"),
        "authors_native_step_s": statistics.median(native["native_times"]) if native.get("native_times") else None,
        "jaxsciml_final_loss": float(np.mean(js_loss[-args.chunk :])),
        "authors_final_loss": float(np.mean(au_loss[-args.chunk :])),
        "jaxsciml_rel_l2_median": float(np.median(js_err)),
        "authors_rel_l2_median": float(np.median(au_err)),
        "chunk_ratio_min": min(chunk_ratios),
        "chunk_ratio_max": max(chunk_ratios),
        "loadavg_1min_mean": float(np.mean(loads)),
        "output_scale": args.output_scale,
        "output_scale_via": scale_how,
    }
    curves = {"jaxsciml_loss": js_loss, "authors_loss": au_loss, "chunk_ratios": chunk_ratios, "loadavg": loads}
    return {"row": row, "detail": detail, "curves": curves}


def _git_head(path: Path) -> str | None:
    try:
        res = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30)
        return res.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):  # pragma: no cover
        return None


NOTES = """\
Identical on both sides: the training pool and held-out set (drawn once with the authors' own samplers: Gaussian
process with the periodic kernel `exp(-sin^2(pi d)/(2 l^2))` per axis, l = 0.2; Poisson sources on a 16x16 grid, mean
removed; reaction-diffusion initial conditions on 64 points, min-max normalised), width 32, 4 spectral layers, per-mode
weights on every retained mode, ReLU, batch 16, Adam lr = 1e-3 * 1e-3^(step/steps), equal steps, seed number, float32,
output scale 1e-3, and the evaluation (relative L2 on the held-out set, same uniform grid, Poisson gauge removed on
both). References: exact Fourier solve (Poisson), ETDRK4 on 256 points with 2048 steps (reaction-diffusion; 4e-9 from
4096 steps). Step time: median over interleaved chunks of the per-chunk ratio (the two trainings take turns on the same
machine), compile excluded; `authors_native_step_s` is their own `src.train.step`, which also samples the batch.

Remaining differences (not aligned, by design of each code base):
- Lift and projection: the authors lift with two pointwise layers (C_in -> 4*width -> width, each followed by a spectral
  ReLU) and project with two (width -> width -> 4*width, ReLU after each) before the output layer; jaxsciml lifts with
  one linear map (no activation) and projects width -> width (ReLU) -> 1. Per step: 8 spectral activations (two at 128
  channels) vs 5; parameters and FLOPs are in the details table (the per-mode kernels dominate both).
- Inputs: the authors append the coordinates (x, y) or (t, x) as input channels; jaxsciml feeds f (Poisson) or u0 and
  t (reaction-diffusion).
- Biases: flax `Dense` on the coefficient array adds its bias to every coefficient; jaxsciml adds it to the constant
  mode only.
- Initial weights: flax defaults (LeCun normal) vs jaxsciml's uniform +-1/sqrt(fan_in); per-mode kernels normal with
  standard deviation 1/width^2 on both; different PRNG streams.
- Loss: the authors sum the squared coefficients of their real layout (Fourier: non-constant modes weighted 2x per axis
  relative to the integral; Chebyshev: plain coefficient sum); jaxsciml uses the exact integral of R^2 (Parseval; the
  Legendre-weight Gram matrix on Chebyshev axes). Adam makes the overall scale irrelevant, not the relative weights.
- Constraints: Poisson gauge u(0) = 0 (authors) vs zero mean (jaxsciml); it does not enter the loss and is removed in
  the evaluation. Reaction-diffusion u = u0 + t v: the authors multiply by t on the collocation grid (the top mode
  aliases), jaxsciml multiplies exactly in coefficient space and drops v's top Chebyshev coefficient.
- Reaction-diffusion basis: 32 Chebyshev x 64 Fourier (authors; even, with a Nyquist cosine) vs 65 Fourier x 32
  Chebyshev (jaxsciml's Fourier sizes are odd); the reaction term is dealiased on the sum-padded grid (authors) vs the
  3/2-rule grid (jaxsciml).
- Software: jax/jaxlib 0.4.13 + flax 0.7.0 + optax 0.1.5 vs jax 0.10.2 + equinox + optax 0.2.8 (different XLA).
"""


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--authors-path", required=True, help="checkout of ASK-Berkeley/Neural-Spectral-Methods")
    p.add_argument("--authors-python", required=True, help="python of the authors' environment (jax 0.4.13, flax 0.7)")
    p.add_argument("--problem", nargs="+", default=list(PROBLEMS), choices=PROBLEMS)
    p.add_argument("--steps", type=int, default=200, help="training steps on each side (default 200)")
    p.add_argument("--chunk", type=int, default=20, help="steps per interleaved turn (default 20)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0, help="initialisation seed (both sides)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the authors' sampler for the shared data")
    p.add_argument("--test", type=int, default=128, help="held-out samples (default 128, as the authors')")
    p.add_argument("--native-steps", type=int, default=5, help="also time this many steps of the authors' own step")
    p.add_argument(
        "--output-scale",
        type=float,
        default=AUTHORS_SCALE,
        help="jaxsciml NSM output scale (default 1e-3, the authors' constant); negative = none",
    )
    p.add_argument("--out", default=None, help="output directory (default benchmarks/results)")
    p.add_argument("--workdir", default=None, help="where the shared .npz data go (default: a temporary directory)")
    p.add_argument("--log", default=None, help="progress log file (default stderr)")
    p.add_argument("--quick", action="store_true", help="tiny run (smoke test): 4 steps, 8 held-out samples")
    args = p.parse_args(argv)
    for name in ("authors_path", "authors_python"):
        if not os.path.exists(getattr(args, name)):
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)!r} does not exist")
    if args.quick:
        args.steps, args.chunk, args.test, args.native_steps = 4, 2, 8, 1
    if args.output_scale is not None and args.output_scale < 0:
        args.output_scale = None
    if args.steps < 1 or args.chunk < 1 or args.batch < 1:
        p.error("--steps, --chunk and --batch must be positive")

    from benchmarks._common import RESULTS_DIR, write_results

    out = Path(args.out) if args.out else RESULTS_DIR
    log = open(args.log, "a") if args.log else sys.stderr  # noqa: SIM115
    commits = (_git_head(ROOT), _git_head(Path(args.authors_path)))  # the code as loaded, before the long runs
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for problem in args.problem:
            r = run_problem(problem, args, work, log)
            r["settings"] = {k: v for k, v in vars(args).items() if k not in ("out", "log", "workdir", "problem")}
            r["settings"]["loadavg_end"] = os.getloadavg()
            r["settings"]["jaxsciml_commit"] = commits[0]
            r["settings"]["authors_commit"] = commits[1]
            results[problem] = {"problem": problem, **r}
        for problem in args.problem:  # the shared data are at hand: compare jaxsciml's own paper sampler with them
            results[problem]["sampler"] = sampler_agreement(problem, np.load(work / f"{problem}.npz")["train"])
    prev = {}  # keep the other problem's last run (read at the end, so that runs of different problems can overlap)
    if (out / "nsm_authors.json").exists() and not args.quick:
        prev = json.loads((out / "nsm_authors.json").read_text())
    results = {**{r["problem"]: r for r in prev.get("runs", [])}, **results}
    ordered = [results[k] for k in PROBLEMS if k in results]
    tables = {
        "jaxsciml NSM vs the authors' code (equal steps)": [r["row"] for r in ordered],
        "details": [r["detail"] for r in ordered],
        "parameter samplers: the authors' draws (the shared data) vs jaxsciml's default paper sampler": [
            s for r in ordered for s in r.get("sampler", [])
        ],
    }
    config = {r["problem"]: r["settings"] for r in ordered}
    payload = write_results("nsm_authors", tables, out, notes=NOTES, config=config)
    payload["runs"] = ordered  # with the loss curves and per-chunk ratios
    (out / "nsm_authors.json").write_text(json.dumps(payload, indent=2, default=str))
    return payload


if __name__ == "__main__":
    main()
