"""Local (stochastic) regularization: heuristics of one solver step at randomly sampled time points.

Pal, Edelman, Rackauckas, "Locally Regularized Neural Differential Equations", ICML 2023 (arXiv 2303.02262). Instead of
summing the heuristics over every step (which needs the discrete adjoint through the solver state), evaluate them for
a single step taken from the solution at a random time ``t*``; the gradient flows through ``y(t*)`` by whatever adjoint
the solve uses (``BacksolveAdjoint`` included) and through the one local step directly. Two sampling strategies:

- ``"unbiased"``: ``t* ~ U(t0, t1)``; ``y(t*)`` is added to the save points of the solve (interpolated by diffrax,
  no extra steps);
- ``"biased"``: ``t*`` drawn uniformly from the points already saved (``t0`` and the ``SaveAt(ts=...)`` before
  ``t1``): no change to the solve at all, but the time points are not uniformly distributed.

**What is estimated.** The global heuristic is a sum over the accepted steps ``[t_k, t_k + h_k]``,
``R_E = sum_k ||e_k||_w |h_k|``. While solving, the solver records the accepted step ``k*`` that contains each
``t*`` (its start ``t_k*`` and size ``h_k*``; constants in the backward pass, as diffrax treats step sizes). From
``y(t*)`` one solver step of size ``t_k* - t*`` goes back to the step's start (``y~ = y(t_k*)`` up to that sub-step's
local error, ``O(tol)``), and the step ``(t_k*, y~, h_k*)`` is re-taken: its error norm is ``||e_k*||_w`` up to
``O(tol)``. The estimate is ``|t1 - t0| ||e_k*||_w``. For ``t* ~ U(t0, t1)`` the step ``k`` is hit with probability
``|h_k| / |t1 - t0|``, so

    ``E[|t1 - t0| ||e_k*||_w] = sum_k ||e_k||_w |h_k| = R_E``

(and likewise ``R_S`` with ``lambda_k*``): an unbiased estimate up to the ``O(tol)`` difference between ``y~`` and
``y_k``. (Stepping from ``y(t*)`` with the *mean* step size instead, the estimate's mean was 2x ``R_E`` on
Lotka--Volterra, since the error norm scales like ``h^5`` for Tsit5; stepping from ``y(t*)`` with ``h_k*`` it was
1.14x, from the error's variation within a step.) With ``S`` samples the mean of the ``S`` estimates is returned.
The ``"biased"`` strategy draws ``t*`` from the save points instead: its mean is a quadrature of the same sum on the
``ts`` grid, biased towards the steps that contain save points. ``local_dt`` replaces all this by one step of fixed
size from ``(t*, y(t*))``: the estimate then measures the error rate at that step size, not ``R_E``.

Each sample costs two solver steps (back to the step start, and the step itself; one with ``local_dt``), each one
step's evaluations plus the first stage for FSAL tableaux; these are added to ``SolveStats.num_fevals``.

Backward time (``t1 < t0``): samples, save points and the local step follow the direction of integration, so the
estimates are non-negative and equal those of the mirrored problem ``z'(s) = -f(-s, z)`` with the same key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, cast

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PRNGKeyArray, PyTree, Scalar, ScalarLike

from ._heuristics import HeuristicSolver, stiffness_stage_pair
from ._solve import Heuristics, SolveStats, _solve, _with_controller_tols, as_terms, check_ts, fevals_per_step

__all__ = ["local_step_heuristics", "solve_with_local_heuristics"]


def local_step_heuristics(
    terms: PyTree[dfx.AbstractTerm],
    solver: dfx.AbstractSolver,
    t: Scalar,
    y: PyTree[Array],
    args: Any,
    dt: Scalar,
    *,
    rtol: ScalarLike,
    atol: ScalarLike,
    norm: Callable[[PyTree], Scalar],
    heuristics: Sequence[str] = ("error", "stiffness"),
) -> tuple[Scalar, Scalar]:
    """Error norm ``||e||_w`` and stiffness ``lambda`` (a rate per unit time) of one step of size ``dt`` from
    ``(t, y)``; ``dt < 0`` steps backward in time.

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
    stiff = wrapped.local_stiffness(info) / jnp.abs(h) if record_stiffness else zero
    return err, stiff


def _step_to(terms, solver, t, y, args, t_target):
    """One step of ``solver`` from ``(t, y)`` to ``t_target`` (a zero-size step returns ``y``)."""
    state = solver.init(terms, t, t_target, y, args)
    y1, _, _, _, _ = solver.step(terms, t, t_target, y, args, state, False)
    return y1


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
    ``strategy`` (``"unbiased"`` or ``"biased"``), ``num_samples`` and ``local_dt`` (a fixed size for the local step
    instead of the size of the accepted step containing ``t*``); see the module docstring for exactly what is
    estimated. ``saveat`` must be a single ``SaveAt(t0=..., t1=..., ts=...)`` saving ``y`` (``ts`` ordered in the
    direction of integration). Returns ``(sol, Heuristics, SolveStats)`` with ``sol.ts``/``sol.ys`` exactly as
    requested by ``saveat``; ``num_fevals`` includes the local steps.
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
    solver = _with_controller_tols(solver, stepsize_controller)  # implicit solvers: root finder at the tolerances
    if saveat is None:
        saveat = dfx.SaveAt(t1=True)
    sub = saveat.subs
    if not isinstance(sub, dfx.SubSaveAt) or sub.steps or saveat.dense or sub.fn is not dfx.SubSaveAt(t1=True).fn:
        raise ValueError("saveat must be a single SaveAt(t0=..., t1=..., ts=...) saving y for local regularization")
    user_ts = jnp.zeros((0,), jnp.result_type(float)) if sub.ts is None else check_ts(sub.ts, t0, t1, "saveat.ts")
    n_user = user_ts.shape[0]
    dtype = jnp.result_type(t0, t1, float)
    t0a, t1a = jnp.asarray(t0, dtype), jnp.asarray(t1, dtype)
    direction = jnp.where(t1a < t0a, -1.0, 1.0).astype(dtype)

    if strategy == "unbiased":
        t_star = t0a + (t1a - t0a) * jax.random.uniform(key, (num_samples,), dtype=dtype)
        all_ts = jnp.concatenate([user_ts.astype(dtype), t_star])
        order = jnp.argsort(direction * all_ts)  # ordered in the direction of integration
        inverse = jnp.argsort(order)
        solve_saveat = dfx.SaveAt(t0=sub.t0, t1=sub.t1, ts=all_ts[order])
    else:
        if n_user == 0:
            raise ValueError(
                "strategy='biased' samples t* among the save times, and saveat has no ts: pass "
                "saveat=SaveAt(ts=...) or use strategy='unbiased' (t* ~ U(t0, t1))"
            )
        solve_saveat = saveat
        cand_t = jnp.concatenate([t0a[None], user_ts.astype(dtype)])
        valid = direction * (cand_t - t1a) < 0  # t0 and the saved ts strictly before t1
        logits = jnp.where(valid, 0.0, -jnp.inf)
        idx = jax.random.categorical(key, logits, shape=(num_samples,))
        t_star = cand_t[idx]
    sol, _, stats, (probe_t, probe_h) = _solve(
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
        probe_ts=jax.lax.stop_gradient(direction * t_star),  # the solver's time runs as direction * t
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
        y_ts = jtu.tree_map(lambda y: y[off : off + n_user], sol.ys)
        cand_y = jtu.tree_map(lambda a, b: jnp.concatenate([jnp.asarray(a)[None], b]), y0, y_ts)
        y_star = jtu.tree_map(lambda c: c[idx], cand_y)

    ctrl = stepsize_controller
    if local_dt is None:
        found = probe_h > 0
        mean_h = jnp.abs(t1a - t0a) / jnp.maximum(stats.num_accepted, 1).astype(dtype)
        h = jax.lax.stop_gradient(jnp.where(found, probe_h.astype(dtype), mean_h))
        t_start = jax.lax.stop_gradient(jnp.where(found, direction * probe_t.astype(dtype), t_star))
        y_star = jax.vmap(lambda t, y, ts_: _step_to(terms, solver, t, y, args, ts_))(t_star, y_star, t_start)
        t_star = t_start
        steps_per_sample = 2
    else:
        h = jnp.full((num_samples,), local_dt, dtype)
        steps_per_sample = 1
    err, stiff = jax.vmap(
        lambda t, y, hh: local_step_heuristics(
            terms,
            solver,
            t,
            y,
            args,
            direction * hh,
            rtol=ctrl.rtol,
            atol=ctrl.atol,
            norm=cast(Callable[[PyTree], Scalar], ctrl.norm),
            heuristics=heuristics,
        )
    )(t_star, y_star, h)
    per_step, init_evals = fevals_per_step(solver, terms)
    if per_step >= 0 and heuristics:
        extra = num_samples * steps_per_sample * (per_step + init_evals)
        stats = eqx.tree_at(lambda s: s.num_fevals, stats, stats.num_fevals + extra)
    scale = jnp.abs(t1a - t0a)
    return sol, Heuristics(error=scale * jnp.mean(err), stiffness=scale * jnp.mean(stiff)), stats
