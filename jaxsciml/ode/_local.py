"""Local (stochastic) regularization: heuristics of one solver step at randomly sampled time points.

Pal, Edelman, Rackauckas, "Locally Regularized Neural Differential Equations", ICML 2023 (arXiv 2303.02262). Instead of
summing the heuristics over every step (which needs the discrete adjoint through the solver state), evaluate them for
a single step taken from the solution at a random time ``t*``; the gradient flows through ``y(t*)`` by whatever adjoint
the solve uses (``BacksolveAdjoint`` included) and through the one local step directly. Two sampling strategies:

- ``"unbiased"``: ``t* ~ U(t0, t1)``; ``y(t*)`` is added to the save points of the solve (interpolated by diffrax,
  no extra steps);
- ``"biased"``: ``t*`` drawn uniformly from the points already saved (``t0`` and the ``SaveAt(ts=...)`` before
  ``t1``): no change to the solve at all, but the time points are not uniformly distributed.

At ``t*`` one step of the inner solver of size ``h`` is taken, with ``h`` the mean accepted step size of the solve,
``(t1 - t0) / num_accepted`` (a constant in the backward pass, as diffrax treats step sizes), or a user-given
``local_dt``. With ``S`` samples the returned heuristics are Monte-Carlo
estimates of the global ones, ``R_E ~ (t1 - t0) mean_s ||e(t*_s)||_w`` and ``R_S ~ (t1 - t0) mean_s lambda(t*_s)``,
since ``R_E = sum_k ||e_k||_w h_k`` is a Riemann sum of the step's error norm over time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PRNGKeyArray, PyTree, Scalar

from ._heuristics import HeuristicSolver, stiffness_stage_pair
from ._solve import Heuristics, SolveStats, as_terms, solve_with_heuristics

__all__ = ["local_step_heuristics", "solve_with_local_heuristics"]


def local_step_heuristics(
    terms: PyTree[dfx.AbstractTerm],
    solver: dfx.AbstractSolver,
    t: Scalar,
    y: PyTree[Array],
    args: Any,
    dt: Scalar,
    *,
    rtol: float,
    atol: float,
    norm: Callable[[PyTree], Scalar],
    heuristics: Sequence[str] = ("error", "stiffness"),
) -> tuple[Scalar, Scalar]:
    """Error norm ``||e||_w`` and stiffness ``lambda`` (rates per unit time) of one step of size ``dt`` from ``(t, y)``.

    ``0`` for heuristics not requested. ``dt`` is used as given (pass a constant for diffrax-like semantics).
    """
    record_stiffness = "stiffness" in heuristics
    wrapped = HeuristicSolver(solver, rtol=rtol, atol=atol, norm=norm, record_stiffness=record_stiffness)
    h = jnp.asarray(dt, dtype=jnp.result_type(t))
    t_next = t + h
    state = solver.init(terms, t, t_next, y, args)
    y1, y_err, info, _, _ = solver.step(terms, t, t_next, y, args, state, False)
    zero = jnp.zeros((), jnp.result_type(h))
    err = wrapped.local_error(y, y1, y_err) if "error" in heuristics else zero
    stiff = wrapped.local_stiffness(info) / h if record_stiffness else zero
    return err, stiff


def solve_with_local_heuristics(
    terms: Callable[..., PyTree[Array]] | PyTree[dfx.AbstractTerm],
    solver: dfx.AbstractSolver,
    t0: Any,
    t1: Any,
    y0: PyTree[Array],
    args: Any = None,
    *,
    key: PRNGKeyArray,
    strategy: Literal["unbiased", "biased"] = "unbiased",
    num_samples: int = 1,
    dt0: Any = None,
    stepsize_controller: dfx.AbstractStepSizeController | None = None,
    saveat: dfx.SaveAt | None = None,
    max_steps: int = 4096,
    adjoint: dfx.AbstractAdjoint | None = None,
    on_max_steps: Literal["raise", "flag"] = "raise",
    heuristics: Sequence[str] = ("error", "stiffness"),
    local_dt: float | None = None,
) -> tuple[dfx.Solution, Heuristics, SolveStats]:
    """Solve and estimate the heuristics locally at ``num_samples`` random time points (any adjoint).

    Arguments as :func:`solve_with_heuristics`, plus ``key`` (PRNG key; one per trajectory under ``vmap``),
    ``strategy`` (``"unbiased"`` or ``"biased"``, see the module docstring), ``num_samples`` and ``local_dt`` (a fixed
    size for the local step instead of the controller's initial-step choice). ``saveat`` must be a
    single ``SaveAt(t0=..., t1=..., ts=...)`` saving ``y``. Returns ``(sol, Heuristics, SolveStats)`` with
    ``sol.ts``/``sol.ys`` exactly as requested by ``saveat`` and the heuristics as Monte-Carlo estimates of the
    global ``R_E``, ``R_S``.
    """
    terms = as_terms(terms)
    heuristics = tuple(heuristics)
    if strategy not in ("unbiased", "biased"):
        raise ValueError(f"strategy must be 'unbiased' or 'biased', got {strategy!r}")
    if local_dt is not None and not local_dt > 0:
        raise ValueError(f"local_dt must be positive, got {local_dt!r}")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    if "stiffness" in heuristics:
        stiffness_stage_pair(solver)
    if stepsize_controller is None:
        stepsize_controller = dfx.PIDController(rtol=1e-3, atol=1e-6)
    if not isinstance(stepsize_controller, dfx.PIDController):
        raise ValueError(
            f"stepsize_controller must be a diffrax.PIDController for local regularization, got "
            f"{type(stepsize_controller).__name__}"
        )
    if saveat is None:
        saveat = dfx.SaveAt(t1=True)
    sub = saveat.subs
    if not isinstance(sub, dfx.SubSaveAt) or sub.steps or saveat.dense or sub.fn is not dfx.SubSaveAt(t1=True).fn:
        raise ValueError("saveat must be a single SaveAt(t0=..., t1=..., ts=...) saving y for local regularization")
    user_ts = jnp.zeros((0,), jnp.result_type(float)) if sub.ts is None else jnp.asarray(sub.ts)
    n_user = user_ts.shape[0]
    dtype = jnp.result_type(t0, t1, float)
    t0a, t1a = jnp.asarray(t0, dtype), jnp.asarray(t1, dtype)

    if strategy == "unbiased":
        t_star = t0a + (t1a - t0a) * jax.random.uniform(key, (num_samples,), dtype=dtype)
        all_ts = jnp.concatenate([user_ts.astype(dtype), t_star])
        order = jnp.argsort(all_ts)
        inverse = jnp.argsort(order)
        solve_saveat = dfx.SaveAt(t0=sub.t0, t1=sub.t1, ts=all_ts[order])
    else:
        if n_user == 0:
            raise ValueError("strategy='biased' samples among the saved time points: pass saveat=SaveAt(ts=...)")
        solve_saveat = saveat
    sol, _, stats = solve_with_heuristics(
        terms,
        solver,
        t0,
        t1,
        y0,
        args,
        dt0=dt0,
        stepsize_controller=stepsize_controller,
        saveat=solve_saveat,
        max_steps=max_steps,
        adjoint=adjoint,
        on_max_steps=on_max_steps,
        heuristics=(),
    )
    off = 1 if sub.t0 else 0
    if strategy == "unbiased":
        n_all = n_user + num_samples
        ys_ts = jtu.tree_map(lambda y: y[off : off + n_all][inverse], sol.ys)
        y_star = jtu.tree_map(lambda y: y[n_user:], ys_ts)
        ys_user = jtu.tree_map(lambda y, yt: jnp.concatenate([y[:off], yt[:n_user], y[off + n_all :]]), sol.ys, ys_ts)
        ts_user = jnp.concatenate([sol.ts[:off], user_ts.astype(sol.ts.dtype), sol.ts[off + n_all :]])
        sol = eqx.tree_at(lambda s: (s.ts, s.ys), sol, (ts_user, ys_user))
    else:
        # candidates: t0 and the saved ts strictly before t1
        cand_t = jnp.concatenate([t0a[None], user_ts.astype(dtype)])
        y_ts = jtu.tree_map(lambda y: y[off : off + n_user], sol.ys)
        cand_y = jtu.tree_map(lambda a, b: jnp.concatenate([jnp.asarray(a)[None], b]), y0, y_ts)
        valid = cand_t < t1a
        logits = jnp.where(valid, 0.0, -jnp.inf)
        idx = jax.random.categorical(key, logits, shape=(num_samples,))
        t_star = cand_t[idx]
        y_star = jtu.tree_map(lambda c: c[idx], cand_y)

    ctrl = stepsize_controller
    if local_dt is None:
        h = jax.lax.stop_gradient((t1a - t0a) / jnp.maximum(stats.num_accepted, 1).astype(dtype))
    else:
        h = jnp.asarray(local_dt, dtype)
    err, stiff = jax.vmap(
        lambda t, y: local_step_heuristics(
            terms, solver, t, y, args, h, rtol=ctrl.rtol, atol=ctrl.atol, norm=ctrl.norm, heuristics=heuristics
        )
    )(t_star, y_star)
    scale = t1a - t0a
    return sol, Heuristics(error=scale * jnp.mean(err), stiffness=scale * jnp.mean(stiff)), stats
