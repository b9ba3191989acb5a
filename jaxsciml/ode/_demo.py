"""Demo for ``jaxsciml demo``: fit a neural ODE to a 2-D spiral, unregularized vs error-estimate regularized.

Both models start from the same initialisation and train with the same optimiser and steps; the rows report the
final trajectory MSE, the prediction NFE of an unregularized solve and the training wall time.
"""

from __future__ import annotations

import os
import time

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from ._models import MLPVectorField, NeuralODE
from ._regularizers import HeuristicRegularization, NoRegularization, SolverConfig

_SIZES = {"small": dict(steps=800, width=32, n_t=30), "medium": dict(steps=3000, width=64, n_t=60)}


def spiral_data(n_t: int = 40, t1: float = 1.5):
    """The cubic spiral ``y' = y**3 A`` of the neural-ODE literature, solved to rtol 1e-7: ``(ts, y0, ys)``."""
    a = jnp.array([[-0.1, 2.0], [-2.0, -0.1]])
    y0 = jnp.array([2.0, 0.0])
    ts = jnp.linspace(0.0, t1, n_t)
    sol = dfx.diffeqsolve(
        dfx.ODETerm(lambda t, y, args: (y**3) @ a),
        dfx.Tsit5(),
        0.0,
        t1,
        0.01,
        y0,
        saveat=dfx.SaveAt(ts=ts),
        stepsize_controller=dfx.PIDController(rtol=1e-7, atol=1e-9),
    )
    return ts, y0, sol.ys


def run_demo(size: str = "small", progress: bool = True, out_dir: str | None = None) -> list[dict]:
    """Train the spiral fit twice (``error_weight`` 0 and 0.01) and return one row per method."""
    if size not in _SIZES:
        raise ValueError(f"size must be one of {sorted(_SIZES)}, got {size!r}")
    from tqdm.auto import tqdm

    cfg = _SIZES[size]
    ts, y0, ys_true = spiral_data(cfg["n_t"])
    config = SolverConfig(rtol=1e-4, atol=1e-6)
    rows, curves = [], {}
    for method, reg in (("unregularized", NoRegularization()), ("error-regularized", HeuristicRegularization(0.01))):
        model = NeuralODE(
            MLPVectorField(2, cfg["width"], 2, key=jax.random.key(0), time_dependent=False), 0.0, 1.5, config
        )
        opt = optax.adam(5e-3)
        state = opt.init(eqx.filter(model, eqx.is_array))

        @eqx.filter_jit
        def step(model, state, reg=reg, opt=opt):
            def loss_fn(m):
                out = m(y0, ts, regularizer=reg)
                return jnp.mean((out.ys - ys_true) ** 2) + out.penalty

            loss, g = eqx.filter_value_and_grad(loss_fn)(model)
            updates, state = opt.update(g, state, eqx.filter(model, eqx.is_array))
            return eqx.apply_updates(model, updates), state, loss

        t0 = time.perf_counter()
        model, state, loss = step(model, state)
        jax.block_until_ready(loss)
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        history = []
        for _ in tqdm(range(cfg["steps"] - 1), desc=f"ode {method}", disable=not progress, leave=False):
            model, state, loss = step(model, state)
            history.append(float(loss))
        wall_s = time.perf_counter() - t0
        out = eqx.filter_jit(lambda m: m(y0, ts))(model)
        mse = float(jnp.mean((out.ys - ys_true) ** 2))
        curves[method] = (history, out.ys)
        rows.append(
            dict(
                pillar="ode",
                task="spiral fit",
                method=method,
                metric="trajectory MSE",
                value=mse,
                steps_or_nfe=int(out.stats.num_fevals),
                wall_s=wall_s,
                compile_s=compile_s,
            )
        )
    if out_dir is not None:
        _plot(out_dir, ys_true, curves)
    return rows


def _plot(out_dir, ys_true, curves):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 4))
    ax1.plot(ys_true[:, 0], ys_true[:, 1], "k.", label="data")
    for method, (history, ys) in curves.items():
        ax1.plot(ys[:, 0], ys[:, 1], label=method)
        ax2.semilogy(history, label=method)
    ax1.set_title("spiral fit")
    ax1.legend()
    ax2.set_title("training loss")
    ax2.set_xlabel("step")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "ode_spiral.png"), dpi=100)
    plt.close(fig)
