"""Demo for ``jaxsciml demo``: Neural Spectral Method vs FNO + PINN loss on periodic Poisson (and, at ``"medium"``,
reaction--diffusion), with relative L2 errors against the spectral reference solvers."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._models import FNO, NSM
from ._poisson import PoissonPeriodic
from ._reaction_diffusion import ReactionDiffusion
from ._training import default_optimizer, fno_loss, fno_predict, nsm_loss, nsm_predict, relative_error, train_operator

__all__ = ["run_demo"]

_SIZES = {
    # problem size, widths and steps; "small" finishes in well under a minute on 2 CPU cores
    "small": {"n": 11, "width": 16, "depth": 2, "steps": 300, "fno_grid": 32, "rd": False},
    "medium": {"n": 15, "width": 32, "depth": 4, "steps": 1500, "fno_grid": 64, "rd": True},
}


def _row(task, method, value, steps, rec, metric="rel_l2"):
    return {
        "pillar": "pde",
        "task": task,
        "method": method,
        "metric": metric,
        "value": float(value),
        "steps_or_nfe": int(steps),
        "wall_s": float(rec["train_s"]),  # compile excluded, as in the ode and optim demos
        "compile_s": float(rec["compile_s"]),
    }


def run_demo(size: str = "small", progress: bool = True, out_dir: str | None = None) -> list[dict]:
    """Train an NSM (spectral loss) and an FNO (finite-difference PINN loss) on periodic Poisson ``-Laplace u = f``
    with Gaussian-random-field sources; report relative L2 errors on held-out sources against the exact spectral
    solution. ``size="medium"`` trains longer and adds reaction--diffusion. PNGs are written to ``out_dir`` if given."""
    if size not in _SIZES:
        raise ValueError(f"`size` must be one of {sorted(_SIZES)}, got {size!r}")
    cfg = _SIZES[size]
    steps = cfg["steps"]
    key = jax.random.key(0)
    rows = []

    prob = PoissonPeriodic(n=cfg["n"], length_scale=0.2, kernel="squared_exponential")  # smooth sources (short demo)
    test = prob.sample(jax.random.key(123), 32)
    g = cfg["fno_grid"]
    ref = jax.vmap(lambda p: prob.reference(p, (g, g)))(test)

    nsm = NSM(prob.basis, 1, 1, width=cfg["width"], depth=cfg["depth"], activation=jax.nn.gelu, key=key)
    nsm, rec = train_operator(
        nsm,
        lambda m, p: nsm_loss(m, prob, p),
        lambda k: prob.sample(k, 16),
        steps,
        jax.random.key(1),
        optimizer=default_optimizer(steps, 3e-3),
        progress=progress,
        desc="NSM poisson",
    )
    u_nsm = prob.solution_values(nsm_predict(nsm, prob, test), (g, g))
    err_nsm = float(relative_error(u_nsm, ref))
    rows.append(_row("poisson_periodic", "NSM (spectral loss)", err_nsm, steps, rec))

    fno = FNO(2, 1, 1, width=cfg["width"], depth=cfg["depth"], modes=min(8, g // 4), key=key)
    fno, rec_f = train_operator(
        fno,
        lambda m, p: fno_loss(m, prob, p, (g, g)),
        lambda k: prob.sample(k, 16),
        steps,
        jax.random.key(1),
        optimizer=default_optimizer(steps, 3e-3),
        progress=progress,
        desc=f"FNO+PINN {g}^2",
    )
    u_fno = fno_predict(fno, prob, test, (g, g))
    rows.append(_row("poisson_periodic", f"FNO+PINN (grid {g})", relative_error(u_fno, ref), steps, rec_f))

    if cfg["rd"]:
        rd = ReactionDiffusion(nu=0.05, rho=5.0, nx=31, nt=12, ref_steps=200)
        rd_test = rd.sample(jax.random.key(7), 16)
        rd_ref = jax.vmap(lambda p: rd.reference(p, (64, 21)))(rd_test)
        m = NSM(rd.basis, rd.in_channels, 1, width=cfg["width"], depth=cfg["depth"], activation=jax.nn.gelu, key=key)
        m, rec_r = train_operator(
            m,
            lambda mm, p: nsm_loss(mm, rd, p),
            lambda k: rd.sample(k, 16),
            steps,
            jax.random.key(2),
            optimizer=default_optimizer(steps, 3e-3),
            progress=progress,
            desc="NSM reaction-diffusion",
        )
        pred = rd.solution_values(nsm_predict(m, rd, rd_test), (64, 21))
        rows.append(_row("reaction_diffusion", "NSM (spectral loss)", relative_error(pred, rd_ref), steps, rec_r))

    if out_dir is not None:
        _plot(out_dir, test[0], ref[0], u_nsm[0], u_fno[0], err_nsm)
    for r in rows:
        if not jnp.isfinite(r["value"]):
            raise FloatingPointError(f"non-finite demo result: {r}")
    return rows


def _plot(out_dir, f, ref, u_nsm, u_fno, err):
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
    for ax, img, title in zip(
        axes, (ref, u_nsm, u_fno, u_nsm - ref), ("reference u", f"NSM (rel L2 {err:.2%})", "FNO+PINN", "NSM error")
    ):
        im = ax.imshow(jnp.asarray(img).T, origin="lower", extent=(0, 1, 0, 1))
        ax.set_title(title)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "pde_poisson_nsm.png"), dpi=100)
    plt.close(fig)
    del f
