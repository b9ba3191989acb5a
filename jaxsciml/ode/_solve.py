"""``solve_with_heuristics``: ``diffrax.diffeqsolve`` plus accumulated solver heuristics and solve statistics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, cast

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, Bool, Int, PyTree, Scalar

from ._heuristics import HeuristicSolver, HeuristicState, stiffness_stage_pair

__all__ = [
    "Heuristics",
    "SolveStats",
    "initial_step_size",
    "solve_with_heuristics",
    "as_terms",
    "check_tolerances",
    "check_weight",
    "check_dt0",
    "check_imex_terms",
    "check_order",
    "check_ts",
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
    - ``num_fevals``: vector-field evaluations, counted from the solver's tableau: ``num_steps * fevals_per_step``
      (rejected steps included), ``+ 1`` for the first stage of FSAL tableaux, ``+ 2`` for the automatic initial step
      (:func:`initial_step_size`, when ``dt0=None``), plus the local steps of local regularization. ``-1`` where the
      solver's cost per step is unknown (implicit and IMEX solvers, whose cost depends on the Newton iterations);
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


def check_dt0(dt0: Any, t0: Any = None, t1: Any = None) -> None:
    """Raise ``ValueError`` naming ``dt0`` if a concrete first step is zero, not finite, or points away from ``t1``
    (diffrax would otherwise run to ``max_steps`` on a zero step)."""
    if dt0 is None or not _is_concrete(dt0):
        return
    v = np.asarray(dt0)
    if v.shape != () or not np.isfinite(v) or v == 0:
        raise ValueError(
            f"dt0 must be a non-zero finite scalar (the first step, signed like t1 - t0), or None for an automatic "
            f"first step; got dt0={dt0!r}"
        )
    if t0 is not None and t1 is not None and _is_concrete(t0) and _is_concrete(t1):
        span = float(np.asarray(t1)) - float(np.asarray(t0))
        if span * float(v) < 0:
            raise ValueError(f"dt0 must have the sign of t1 - t0 = {span}; got dt0={dt0!r}")


def check_ts(ts: Any, t0: Any, t1: Any, name: str = "ts") -> Any:
    """``ts`` (save times) must be a 1-d array ordered in the direction of integration (non-decreasing for ``t1 > t0``,
    non-increasing for ``t1 < t0``) inside ``[t0, t1]``: ``ValueError`` naming it when concrete, else ``eqx.error_if``
    at run time. Returns ``ts`` (carrying the run-time check when traced)."""
    if ts is None:
        return ts
    if jnp.ndim(ts) != 1:
        raise ValueError(f"{name} must be a 1-d array of save times, got shape {jnp.shape(ts)}")
    if _is_concrete(ts) and _is_concrete(t0) and _is_concrete(t1):
        v = np.asarray(ts, dtype=float)
        a, b = float(np.asarray(t0)), float(np.asarray(t1))
        sign = 1.0 if b >= a else -1.0
        if np.any(sign * np.diff(v) < 0):
            order = "non-decreasing" if sign > 0 else "non-increasing (t1 < t0: backward time)"
            raise ValueError(f"{name} must be {order} in the direction of integration, got {name}={v.tolist()}")
        lo, hi = min(a, b), max(a, b)
        if v.size and (v.min() < lo or v.max() > hi):
            raise ValueError(f"{name} must lie in [t0, t1] = [{a}, {b}], got values from {v.min()} to {v.max()}")
        return ts
    ts = jnp.asarray(ts)
    direction = jnp.where(jnp.asarray(t1) >= jnp.asarray(t0), 1.0, -1.0)
    bad = jnp.any(direction * jnp.diff(ts) < 0) if ts.shape[0] > 1 else jnp.array(False)
    return eqx.error_if(ts, bad, f"{name} must be ordered in the direction of integration (sorted, t0 -> t1)")


def check_order(order: Any) -> int:
    """``order`` of a solver (local error ``O(h^(order + 1))``) must be a positive int."""
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 1:
        raise ValueError(
            f"order must be a positive int, the solver's order p (local error O(h^(p+1)), e.g. 5 for Tsit5), "
            f"got order={order!r}"
        )
    return int(order)


def is_imex(solver: Any) -> bool:
    """Whether ``solver`` (or the solver a :class:`HeuristicSolver` wraps) takes a pair of terms (IMEX: ``KenCarp``,
    ``Sil3``), i.e. ``MultiTerm(ODETerm(explicit), ODETerm(implicit))``."""
    inner = solver.solver if isinstance(solver, HeuristicSolver) else solver
    return isinstance(getattr(inner, "tableau", None), dfx.MultiButcherTableau)


def check_imex_terms(solver: Any, terms: Any) -> None:
    """An IMEX solver needs ``MultiTerm(ODETerm(explicit), ODETerm(implicit))``: ``TypeError`` saying so otherwise."""
    if not is_imex(solver):
        return
    if isinstance(terms, dfx.MultiTerm) and len(terms.terms) == 2:
        return
    inner = solver.solver if isinstance(solver, HeuristicSolver) else solver
    raise TypeError(
        f"solver={type(inner).__name__} is an IMEX solver: it needs terms=diffrax.MultiTerm(diffrax.ODETerm("
        f"explicit_part), diffrax.ODETerm(implicit_part)) (the field split as f = explicit_part + implicit_part), "
        f"got {type(terms).__name__}. For a single field (e.g. a neural ODE model) use a fully implicit solver such "
        "as diffrax.Kvaerno5."
    )


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
    if s_out != s_y:  # type: ignore[operator]  # jaxlib has no stub for PyTreeDef
        raise ValueError(
            "y0 and the vector field do not match: f(t0, y0, args) must return a PyTree with y0's structure; "
            f"y0 has leaves {_paths_and_shapes(y0)}, f returns {_paths_and_shapes(out)}"
        )
    if shapes_out != shapes_y:
        raise ValueError(
            f"y0 and the vector field do not match: y0 has shapes {_paths_and_shapes(y0)}, f(t0, y0, args) returns "
            f"{_paths_and_shapes(out)}"
        )


def _paths_and_shapes(tree: Any) -> str:
    """``{path: shape}`` of every leaf (``y`` itself for a single array), e.g. ``{['a']: (2,), ['b']: (2,)}``."""
    leaves = jtu.tree_flatten_with_path(tree)[0]
    if len(leaves) == 1 and not leaves[0][0]:
        return str(tuple(jnp.shape(leaves[0][1])))
    items = ", ".join(f"{jtu.keystr(p)}: {tuple(jnp.shape(x))}" for p, x in leaves)
    return f"{type(tree).__name__} {{{items}}}"


def _shapes(tree: Any) -> list:
    return [tuple(jnp.shape(x)) for x in jtu.tree_leaves(tree)]


def fevals_per_step(solver: dfx.AbstractSolver, terms: Any) -> tuple[int, int]:
    """``(evaluations per attempted step, evaluations in solver.init)`` from a Runge--Kutta tableau, or ``(-1, 0)``.

    FSAL tableaux (Tsit5, Dopri5, Dopri8, Bosh3) reuse the last stage, so a step costs ``s - 1`` evaluations plus one
    in ``init``; this holds for ODE terms (diffrax disables FSAL for control terms).
    """
    inner = solver.solver if isinstance(solver, HeuristicSolver) else solver
    tableau = getattr(inner, "tableau", None)
    if isinstance(inner, dfx.AbstractImplicitSolver) or (
        isinstance(tableau, dfx.ButcherTableau) and tableau.a_diagonal is not None
    ):
        return -1, 0  # implicit stages: the cost depends on the Newton iterations
    if isinstance(inner, dfx.AbstractRungeKutta) and isinstance(tableau, dfx.ButcherTableau):
        fsal = tableau.fsal and isinstance(terms, dfx.ODETerm)
        return tableau.num_stages - int(fsal), int(fsal)
    if isinstance(inner, dfx.Euler):
        return 1, 0
    if isinstance(inner, dfx.Heun):  # pragma: no cover - Heun is an AbstractRungeKutta
        return 2, 0
    return -1, 0


def _solver_name(solver: Any) -> str:
    return type(solver).__name__


def _ode_rhs(terms: Any) -> Callable | None:
    """``f(t, y, args)`` of an ODE given as an ``ODETerm`` or a ``MultiTerm`` of ``ODETerm``s (IMEX), else ``None``."""
    if isinstance(terms, dfx.ODETerm):
        return terms.vf
    if isinstance(terms, dfx.MultiTerm) and all(isinstance(t, dfx.ODETerm) for t in terms.terms):

        def rhs(t, y, args):
            outs = [term.vf(t, y, args) for term in terms.terms]
            return jtu.tree_map(lambda *xs: sum(xs[1:], xs[0]), *outs)

        return rhs
    return None


def initial_step_size(
    vector_field: Callable[[Scalar, PyTree[Array], Any], PyTree[Array]],
    t0: Any,
    t1: Any,
    y0: PyTree[Array],
    args: Any,
    *,
    order: int,
    rtol: Any,
    atol: Any,
    norm: Callable[[PyTree], Scalar] | None = None,
) -> Scalar:
    """Hairer's automatic initial step size (Hairer, Norsett, Wanner, *Solving ODEs I*, 2nd ed., Sec. II.4), signed
    like ``t1 - t0``. Costs two evaluations of ``vector_field``; the result carries no gradient.

    With ``sc = atol + rtol |y0|`` and ``||.||`` the controller's norm of ``./sc`` (RMS by default):
    ``d0 = ||y0||``, ``d1 = ||f(t0, y0)||``; ``h0 = 0.01 d0 / d1`` (``1e-6`` if ``d0`` or ``d1 < 1e-5``);
    one explicit Euler step ``y1 = y0 + h0 f(t0, y0)``; ``d2 = ||f(t0 + h0, y1) - f(t0, y0)|| / h0``;
    ``h1 = (0.01 / max(d1, d2))^(1 / (order + 1))`` (``max(1e-6, 1e-3 h0)`` if ``max(d1, d2) <= 1e-15``);
    ``h = min(100 h0, h1, |t1 - t0|)``. ``order`` is the order ``p`` of the solver (local error ``O(h^(p+1))``).
    In backward time (``t1 < t0``) this is the step of the mirrored problem ``z'(s) = -f(-s, z)``, negated.
    """
    order = check_order(order)
    check_tolerances(rtol, atol)
    if norm is None:
        norm = _default_norm()
    y0 = jax.lax.stop_gradient(y0)
    dtype = jnp.result_type(*[jnp.asarray(x) for x in jtu.tree_leaves(y0)], jnp.asarray(t0), float)
    t0 = jnp.asarray(t0, dtype)
    span = jnp.asarray(t1, dtype) - t0
    direction = jnp.where(span < 0, -1.0, 1.0).astype(dtype)

    def f(t, y):
        return jax.lax.stop_gradient(vector_field(t, y, args))

    with jax.numpy_dtype_promotion("standard"):
        scale = jtu.tree_map(lambda y: atol + rtol * jnp.abs(y), y0)

        def wnorm(tree):
            return norm(jtu.tree_map(lambda x, s: x / s, tree, scale))

        f0 = f(t0, y0)
        d0, d1 = wnorm(y0), wnorm(f0)
        small = (d0 < 1e-5) | (d1 < 1e-5)
        h0 = jnp.where(small, 1e-6, 0.01 * d0 / jnp.where(small, 1.0, d1)).astype(dtype)
        y1 = jtu.tree_map(lambda y, k: y + direction * h0 * k, y0, f0)
        f1 = f(t0 + direction * h0, y1)
        d2 = wnorm(jtu.tree_map(lambda a, b: a - b, f1, f0)) / h0
        dmax = jnp.maximum(d1, d2)
        h1 = jnp.where(
            dmax <= 1e-15,
            jnp.maximum(1e-6, 1e-3 * h0),
            (0.01 / jnp.where(dmax <= 1e-15, 1.0, dmax)) ** (1.0 / (order + 1)),
        )
        h = jnp.minimum(jnp.minimum(100 * h0, h1), jnp.abs(span))
    return (direction * h).astype(dtype)


def _solver_order(solver: dfx.AbstractSolver, terms: Any) -> int:
    inner = solver.solver if isinstance(solver, HeuristicSolver) else solver
    try:
        order = inner.order(terms)
    except Exception:  # pragma: no cover - solvers without an ODE order
        order = None
    return 1 if order is None else int(order)


def _check_finite_y0(y0: PyTree[Array]) -> PyTree[Array]:
    """``eqx.error_if`` on every leaf: NaN or inf in ``y0`` raises at run time instead of running to ``max_steps``."""
    return jtu.tree_map(
        lambda x: eqx.error_if(x, ~jnp.all(jnp.isfinite(x)), "y0 contains NaN or inf (non-finite initial state)"), y0
    )


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
    controller's decisions and the dense output are exactly those of the plain solve with the same ``dt0``. They are
    differentiable with the discrete adjoints ``RecursiveCheckpointAdjoint`` (default) and ``DirectAdjoint``; for
    ``BacksolveAdjoint`` or other continuous adjoints use :func:`jaxsciml.ode.solve_with_local_heuristics`.

    **Arguments:** as ``diffrax.diffeqsolve`` (``y0`` any PyTree of floating arrays, ``t1 < t0`` allowed), plus

    - ``terms``: a vector field ``f(t, y, args)`` (wrapped in ``ODETerm``) or diffrax terms (e.g. an SDE
      ``MultiTerm``, or ``MultiTerm(ODETerm(explicit), ODETerm(implicit))`` for IMEX solvers such as ``KenCarp4``);
    - ``solver``: any diffrax solver. Recording ``"error"`` needs an embedded error estimate (every
      ``diffrax.AbstractAdaptiveSolver``: explicit, implicit such as ``Kvaerno5``, IMEX such as ``KenCarp4``, SDE);
      ``"stiffness"`` needs an explicit Runge--Kutta tableau with two stages at the same time (``Tsit5``, ``Dopri5``,
      ``Dopri8``). With ``heuristics=()`` any solver/controller pair diffrax accepts works (e.g. ``Euler`` +
      ``StepTo``);
    - ``dt0``: ``None`` (default) picks the first step by :func:`initial_step_size` (Hairer's estimate from the
      solver's order and the controller's ``rtol``/``atol``/``norm``; two evaluations, counted in
      ``SolveStats.num_fevals``) for ODE terms under an adaptive controller. For SDE terms diffrax's fallback is kept
      (``0.01``; it has no initial-step estimate for SDEs). diffrax 0.7.2 itself always takes ``0.01``;
    - ``stepsize_controller``: default ``PIDController(rtol=1e-3, atol=1e-6)``; its ``rtol``/``atol``/``norm`` define
      the weighted norm of ``R_E`` unless ``rtol``/``atol``/``norm`` are given (required for non-PID controllers,
      e.g. ``StepTo`` when replaying a step sequence);
    - ``on_max_steps``: ``"raise"`` (diffrax's ``throw=True``: any failed solve raises) or ``"flag"`` (no raise;
      ``SolveStats.hit_max_steps`` tells; the solution is then truncated);
    - ``heuristics``: a subset of ``("error", "stiffness")`` to record (``()`` records nothing and only adds stats).

    NaN or inf in ``y0`` raises at run time (``eqx.error_if``).

    **Returns:** ``(sol, Heuristics(error, stiffness), SolveStats(...))``; with heuristics recorded
    ``sol.solver_state`` is the final :class:`HeuristicState`.
    """
    sol, heur, stats, _ = _solve(
        terms,
        solver,
        t0,
        t1,
        y0,
        args,
        dt0=dt0,
        stepsize_controller=stepsize_controller,
        saveat=saveat,
        max_steps=max_steps,
        adjoint=adjoint,
        on_max_steps=on_max_steps,
        heuristics=heuristics,
        rtol=rtol,
        atol=atol,
        norm=norm,
    )
    return sol, heur, stats


def _with_controller_tols(solver: dfx.AbstractSolver, controller: Any) -> dfx.AbstractSolver:
    """Give an implicit solver's root finder the controller's tolerances where it defers to them (diffrax does this
    itself, but only when the solver it sees is implicit, not our wrapper)."""
    if not isinstance(solver, dfx.AbstractImplicitSolver) or not isinstance(
        controller, dfx.AbstractAdaptiveStepSizeController
    ):
        return solver
    from diffrax._root_finder import use_stepsize_tol

    attrs = [a for a in ("rtol", "atol", "norm") if getattr(solver.root_finder, a) is use_stepsize_tol]
    if not attrs:
        return solver
    return eqx.tree_at(
        lambda s: tuple(getattr(s.root_finder, a) for a in attrs),
        solver,
        tuple(getattr(controller, a) for a in attrs),
    )


def _solve(
    terms,
    solver,
    t0,
    t1,
    y0,
    args=None,
    *,
    dt0=None,
    stepsize_controller=None,
    saveat=None,
    max_steps=4096,
    adjoint=None,
    on_max_steps="raise",
    heuristics=("error", "stiffness"),
    rtol=None,
    atol=None,
    norm=None,
    probe_ts=None,
):
    """:func:`solve_with_heuristics` plus ``probe_ts``: times at which the start and size of the accepted step
    containing them are recorded (returned fourth as ``(probe_t, probe_h)`` in solver time, ``probe_h = 0`` where
    none was found; ``None`` if not wrapped)."""
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
    adaptive_ctrl = isinstance(stepsize_controller, dfx.AbstractAdaptiveStepSizeController)
    if isinstance(stepsize_controller, dfx.PIDController):
        rtol = stepsize_controller.rtol if rtol is None else rtol
        atol = stepsize_controller.atol if atol is None else atol
        norm = cast(Callable[[PyTree], Scalar], stepsize_controller.norm) if norm is None else norm
    elif heuristics and (rtol is None or atol is None):
        raise ValueError(
            f"stepsize_controller={type(stepsize_controller).__name__} has no tolerances: pass rtol= and atol= "
            "(the weighted norm of the error heuristic) or use diffrax.PIDController"
        )
    if heuristics or isinstance(stepsize_controller, dfx.PIDController):
        check_tolerances(rtol, atol)
    if not isinstance(solver, dfx.AbstractAdaptiveSolver) and (heuristics or adaptive_ctrl):
        raise TypeError(
            f"unsupported solver={_solver_name(solver)}: it has no embedded error estimate. Use an adaptive solver "
            "such as diffrax.Tsit5, Dopri5, Dopri8, Bosh3, Heun, Kvaerno5 or KenCarp4 (or diffrax.HalfSolver(...)); "
            "fixed-step solvers work with heuristics=() and a fixed controller (e.g. diffrax.StepTo)."
        )
    if "stiffness" in heuristics:
        stiffness_stage_pair(solver)
    check_imex_terms(solver, terms)
    check_dt0(dt0, t0, t1)
    if saveat is not None and isinstance(saveat.subs, dfx.SubSaveAt) and saveat.subs.ts is not None:
        saveat = eqx.tree_at(lambda s: s.subs.ts, saveat, check_ts(saveat.subs.ts, t0, t1, "saveat.ts"))
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
    y0 = _check_finite_y0(y0)

    solver = _with_controller_tols(solver, stepsize_controller)
    wrap = bool(heuristics) or probe_ts is not None
    if wrap:
        run_solver = HeuristicSolver(
            solver,
            rtol=1.0 if rtol is None else rtol,
            atol=1.0 if atol is None else atol,
            norm=norm if norm is not None else _default_norm(),
            record_error="error" in heuristics,
            record_stiffness="stiffness" in heuristics,
            probe_ts=probe_ts,
        )
    else:
        run_solver = solver
    extra_evals = 0
    rhs = _ode_rhs(terms)
    if dt0 is None and adaptive_ctrl and rhs is not None and rtol is not None and atol is not None:
        dt0 = initial_step_size(
            rhs, t0, t1, y0, args, order=_solver_order(solver, terms), rtol=rtol, atol=atol, norm=norm
        )
        extra_evals = 2
    if saveat is None:
        saveat = dfx.SaveAt(t1=True)
    if wrap:
        saveat = dfx.SaveAt(
            subs=saveat.subs,
            dense=saveat.dense,
            solver_state=True,
            controller_state=saveat.controller_state,
            made_jump=saveat.made_jump,
        )
    sol = dfx.diffeqsolve(
        terms,
        run_solver,
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
    per_step, init_evals = fevals_per_step(solver, terms)
    num_steps = jnp.asarray(sol.stats["num_steps"])
    if per_step < 0:
        nfe = jnp.full_like(num_steps, -1)
    else:
        nfe = num_steps * per_step + init_evals + extra_evals
    stats = SolveStats(
        num_steps=num_steps,
        num_accepted=jnp.asarray(sol.stats["num_accepted_steps"]),
        num_rejected=jnp.asarray(sol.stats["num_rejected_steps"]),
        num_fevals=nfe,
        hit_max_steps=sol.result == dfx.RESULTS.max_steps_reached,
    )
    if wrap:
        state = cast(HeuristicState, sol.solver_state)
        heur = Heuristics(error=state.error, stiffness=state.stiffness)
        probe = (state.probe_t, state.probe_h)
    else:
        dtype = jnp.result_type(*[jnp.asarray(x) for x in jtu.tree_leaves(y0)], float)
        zero = jnp.zeros((), dtype)
        heur = Heuristics(error=zero, stiffness=zero)
        probe = None
    return sol, heur, stats, probe


def _default_norm():
    import optimistix as optx

    return optx.rms_norm
