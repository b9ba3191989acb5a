"""``solve_with_heuristics``: ``diffrax.diffeqsolve`` plus accumulated solver heuristics and solve statistics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, Bool, Int, PyTree, Scalar

from ._heuristics import HeuristicSolver, HeuristicState

__all__ = [
    "Heuristics",
    "SolveStats",
    "solve_with_heuristics",
    "as_terms",
    "check_tolerances",
    "check_weight",
    "fevals_per_step",
]

_HEURISTIC_NAMES = ("error", "stiffness")
_DISCRETE_ADJOINTS = (dfx.RecursiveCheckpointAdjoint, dfx.DirectAdjoint)


class Heuristics(eqx.Module):
    """Accumulated solver heuristics over the accepted steps (scalars; ``0`` where not recorded).

    - ``error``: ``R_E = sum_k ||e_k||_w |h_k|``;
    - ``stiffness``: ``R_S = sum_k lambda_k |h_k|``.
    """

    error: Scalar
    stiffness: Scalar


class SolveStats(eqx.Module):
    """Statistics of one solve (integer scalars, or arrays under ``vmap``).

    - ``num_steps``: steps attempted; ``num_accepted``, ``num_rejected``;
    - ``num_fevals``: vector-field evaluations of the steps, ``num_steps * fevals_per_step + 1`` for FSAL tableaux
      (counted from the solver's tableau, rejected steps included; ``-1`` where the solver's cost per step is
      unknown). The (at most two) evaluations of diffrax's initial step-size selection when ``dt0=None`` are not
      included;
    - ``hit_max_steps``: whether the solve stopped at ``max_steps`` before reaching ``t1`` (its ``ys`` are then not a
      solution up to ``t1``).
    """

    num_steps: Int[Array, ""]
    num_accepted: Int[Array, ""]
    num_rejected: Int[Array, ""]
    num_fevals: Int[Array, ""]
    hit_max_steps: Bool[Array, ""]


def _is_concrete(x: Any) -> bool:
    try:
        np.asarray(x)
        return True
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError, TypeError):
        return False


def check_tolerances(rtol: Any, atol: Any) -> None:
    """Raise ``ValueError`` naming ``rtol``/``atol`` if a concrete tolerance is not a positive finite number."""
    for name, val in (("rtol", rtol), ("atol", atol)):
        if val is None:
            raise ValueError(f"{name} must be a positive float, got None")
        if _is_concrete(val):
            v = np.asarray(val)
            if v.shape != () or not np.isfinite(v) or not v > 0:
                raise ValueError(f"{name} must be a positive finite scalar, got {val!r}")


def check_weight(name: str, value: Any) -> None:
    """Raise ``ValueError`` naming ``name`` if a concrete regularization weight is negative or not finite."""
    if _is_concrete(value):
        v = np.asarray(value)
        if v.shape != () or not np.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be a non-negative finite scalar, got {value!r}")


def as_terms(vector_field_or_terms: Any) -> PyTree[dfx.AbstractTerm]:
    """A callable ``f(t, y, args)`` becomes ``diffrax.ODETerm(f)``; terms pass through."""
    if isinstance(vector_field_or_terms, dfx.AbstractTerm):
        return vector_field_or_terms
    if callable(vector_field_or_terms):
        return dfx.ODETerm(vector_field_or_terms)
    leaves = jtu.tree_leaves(vector_field_or_terms, is_leaf=lambda x: isinstance(x, dfx.AbstractTerm))
    if leaves and all(isinstance(x, dfx.AbstractTerm) for x in leaves):
        return vector_field_or_terms
    raise TypeError(
        "terms must be a callable vector field f(t, y, args) or a PyTree of diffrax terms, got "
        f"{type(vector_field_or_terms).__name__}"
    )


def _check_shapes(terms: Any, t0: Any, y0: Any, args: Any) -> None:
    """For an ODE term: ``f(t0, y0, args)`` must have ``y0``'s structure and shapes (checked at trace time)."""
    if not isinstance(terms, dfx.ODETerm):
        return
    try:
        out = jax.eval_shape(terms.vector_field, t0, y0, args)
    except Exception as e:  # a shape error inside the field itself
        raise ValueError(f"the vector field cannot be evaluated at y0 (shapes {_shapes(y0)}): {e}") from e
    s_out, s_y = jtu.tree_structure(out), jtu.tree_structure(y0)
    shapes_out = [tuple(x.shape) for x in jtu.tree_leaves(out)]
    shapes_y = [tuple(jnp.shape(x)) for x in jtu.tree_leaves(y0)]
    if s_out != s_y or shapes_out != shapes_y:
        raise ValueError(
            f"y0 and the vector field do not match: y0 has shapes {shapes_y}, f(t0, y0, args) returns {shapes_out}"
        )


def _shapes(tree: Any) -> list:
    return [tuple(jnp.shape(x)) for x in jtu.tree_leaves(tree)]


def fevals_per_step(solver: dfx.AbstractSolver, terms: Any) -> tuple[int, int]:
    """``(evaluations per attempted step, evaluations in solver.init)`` from a Runge--Kutta tableau, or ``(-1, 0)``.

    FSAL tableaux (Tsit5, Dopri5, Dopri8, Bosh3) reuse the last stage, so a step costs ``s - 1`` evaluations plus one
    in ``init``; this holds for ODE terms (diffrax disables FSAL for control terms).
    """
    inner = solver.solver if isinstance(solver, HeuristicSolver) else solver
    tableau = getattr(inner, "tableau", None)
    if isinstance(inner, dfx.AbstractRungeKutta) and isinstance(tableau, dfx.ButcherTableau):
        fsal = tableau.fsal and isinstance(terms, dfx.ODETerm)
        return tableau.num_stages - int(fsal), int(fsal)
    if isinstance(inner, dfx.Heun):  # pragma: no cover - Heun is an AbstractRungeKutta
        return 2, 0
    return -1, 0


def _solver_name(solver: Any) -> str:
    return type(solver).__name__


def solve_with_heuristics(
    terms: Callable[..., PyTree[Array]] | PyTree[dfx.AbstractTerm],
    solver: dfx.AbstractSolver,
    t0: Any,
    t1: Any,
    y0: PyTree[Array],
    args: Any = None,
    *,
    dt0: Any = None,
    stepsize_controller: dfx.AbstractStepSizeController | None = None,
    saveat: dfx.SaveAt | None = None,
    max_steps: int = 4096,
    adjoint: dfx.AbstractAdjoint | None = None,
    on_max_steps: Literal["raise", "flag"] = "raise",
    heuristics: Sequence[str] = ("error", "stiffness"),
    rtol: float | None = None,
    atol: float | None = None,
    norm: Callable[[PyTree], Scalar] | None = None,
) -> tuple[dfx.Solution, Heuristics, SolveStats]:
    """Solve with ``diffrax.diffeqsolve`` and return ``(solution, Heuristics, SolveStats)``.

    The heuristics ``R_E = sum_k ||e_k||_w |h_k|`` and ``R_S = sum_k lambda_k |h_k|`` are accumulated over the
    **accepted** steps by wrapping ``solver`` in :class:`HeuristicSolver` (Pal et al., ICML 2021); ``y``, the
    controller's decisions and the dense output are exactly those of the plain solve. They are differentiable with
    the discrete adjoints ``RecursiveCheckpointAdjoint`` (default) and ``DirectAdjoint``; for ``BacksolveAdjoint`` or
    other continuous adjoints use :func:`jaxsciml.ode.solve_with_local_heuristics`.

    **Arguments:** as ``diffrax.diffeqsolve``, plus

    - ``terms``: a vector field ``f(t, y, args)`` (wrapped in ``ODETerm``) or diffrax terms (e.g. an SDE
      ``MultiTerm``);
    - ``stepsize_controller``: default ``PIDController(rtol=1e-3, atol=1e-6)``; its ``rtol``/``atol``/``norm`` define
      the weighted norm of ``R_E`` unless ``rtol``/``atol``/``norm`` are given (required for non-PID controllers,
      e.g. ``StepTo`` when replaying a step sequence);
    - ``on_max_steps``: ``"raise"`` (diffrax's ``throw=True``: any failed solve raises) or ``"flag"`` (no raise;
      ``SolveStats.hit_max_steps`` tells; the solution is then truncated);
    - ``heuristics``: a subset of ``("error", "stiffness")`` to record (``()`` records nothing and only adds stats).

    **Returns:** ``(sol, Heuristics(error, stiffness), SolveStats(...))``; ``sol.solver_state`` is the final
    :class:`HeuristicState`.
    """
    terms = as_terms(terms)
    heuristics = tuple(heuristics)
    for h in heuristics:
        if h not in _HEURISTIC_NAMES:
            raise ValueError(f"heuristics must be a subset of {_HEURISTIC_NAMES}, got {heuristics!r}")
    if isinstance(solver, HeuristicSolver):
        solver = solver.solver
    if not isinstance(solver, dfx.AbstractSolver):
        raise TypeError(f"solver must be a diffrax solver, got {type(solver).__name__}")
    if stepsize_controller is None:
        stepsize_controller = dfx.PIDController(rtol=1e-3, atol=1e-6)
    if isinstance(stepsize_controller, dfx.PIDController):
        rtol = stepsize_controller.rtol if rtol is None else rtol
        atol = stepsize_controller.atol if atol is None else atol
        norm = stepsize_controller.norm if norm is None else norm
    elif heuristics and (rtol is None or atol is None):
        raise ValueError(
            f"stepsize_controller={type(stepsize_controller).__name__} has no tolerances: pass rtol= and atol= "
            "(the weighted norm of the error heuristic) or use diffrax.PIDController"
        )
    if heuristics or isinstance(stepsize_controller, dfx.PIDController):
        check_tolerances(rtol, atol)
    if not isinstance(solver, dfx.AbstractAdaptiveSolver) and (
        heuristics or isinstance(stepsize_controller, dfx.AbstractAdaptiveStepSizeController)
    ):
        raise TypeError(
            f"unsupported solver={_solver_name(solver)}: it has no embedded error estimate. Use an adaptive solver "
            "such as diffrax.Tsit5, Dopri5, Dopri8, Bosh3 or Heun (or diffrax.HalfSolver(...))."
        )
    if on_max_steps not in ("raise", "flag"):
        raise ValueError(f"on_max_steps must be 'raise' or 'flag', got {on_max_steps!r}")
    if not isinstance(max_steps, int) or max_steps <= 0:
        raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
    if _is_concrete(t0) and _is_concrete(t1) and np.asarray(t0) == np.asarray(t1):
        raise ValueError(f"t1 must differ from t0, got t0 = t1 = {float(np.asarray(t0))}")
    if adjoint is None:
        adjoint = dfx.RecursiveCheckpointAdjoint()
    if heuristics and not isinstance(adjoint, _DISCRETE_ADJOINTS):
        raise ValueError(
            f"adjoint={type(adjoint).__name__} does not differentiate the solver state that carries the heuristics; "
            "use adjoint=diffrax.RecursiveCheckpointAdjoint()/DirectAdjoint(), or the local regularization "
            "jaxsciml.ode.solve_with_local_heuristics, which works with any adjoint"
        )
    for leaf in jtu.tree_leaves(y0):
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            raise TypeError(f"y0 must have floating leaves, got dtype {jnp.result_type(leaf)}")
    _check_shapes(terms, t0, y0, args)

    wrapped = HeuristicSolver(
        solver,
        rtol=1.0 if rtol is None else rtol,
        atol=1.0 if atol is None else atol,
        norm=norm if norm is not None else _default_norm(),
        record_error="error" in heuristics,
        record_stiffness="stiffness" in heuristics,
    )
    if saveat is None:
        saveat = dfx.SaveAt(t1=True)
    saveat = dfx.SaveAt(
        subs=saveat.subs,
        dense=saveat.dense,
        solver_state=True,
        controller_state=saveat.controller_state,
        made_jump=saveat.made_jump,
    )
    sol = dfx.diffeqsolve(
        terms,
        wrapped,
        t0,
        t1,
        dt0,
        y0,
        args,
        saveat=saveat,
        stepsize_controller=stepsize_controller,
        adjoint=adjoint,
        max_steps=max_steps,
        throw=on_max_steps == "raise",
    )
    state: HeuristicState = sol.solver_state
    per_step, init_evals = fevals_per_step(solver, terms)
    num_steps = jnp.asarray(sol.stats["num_steps"])
    if per_step < 0:
        nfe = jnp.full_like(num_steps, -1)
    else:
        nfe = num_steps * per_step + init_evals
    stats = SolveStats(
        num_steps=num_steps,
        num_accepted=jnp.asarray(sol.stats["num_accepted_steps"]),
        num_rejected=jnp.asarray(sol.stats["num_rejected_steps"]),
        num_fevals=nfe,
        hit_max_steps=sol.result == dfx.RESULTS.max_steps_reached,
    )
    return sol, Heuristics(error=state.error, stiffness=state.stiffness), stats


def _default_norm():
    import optimistix as optx

    return optx.rms_norm
