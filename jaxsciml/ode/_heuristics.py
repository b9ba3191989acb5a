"""A diffrax solver wrapper that accumulates solver heuristics over the accepted steps.

For an adaptive explicit Runge--Kutta step from ``t_k`` with size ``h_k`` the inner solver returns ``y_{k+1}``, an
embedded local error estimate ``e_k`` and its stages ``k_i = h_k f(t_k + c_i h_k, Y_i)`` (in ``dense_info["k"]``).
:class:`HeuristicSolver` delegates every ``step`` to the inner solver, leaves ``y``, the error estimate and the dense
output untouched, and adds

- the error-estimate heuristic ``||e_k||_w |h_k|`` with the step-size controller's weighted norm
  ``||e||_w = norm(e / (atol + rtol * max(|y_k|, |y_{k+1}|)))`` (``norm`` defaults to the RMS norm, as in
  :class:`diffrax.PIDController`), and
- the stiffness heuristic ``lambda_k |h_k|`` with the Shampine--Hairer estimate
  ``lambda_k = ||f(t, Y_a) - f(t, Y_b)||_2 / ||Y_a - Y_b||_2`` from two stages ``a, b`` evaluated at the same time
  ``t = t_k + c_a h_k = t_k + c_b h_k``. In k-space: ``lambda_k h_k = ||k_a - k_b|| / ||sum_j (A_aj - A_bj) k_j||``
  (with ``A`` the full Butcher matrix, whose last row is ``b`` for FSAL/SSAL tableaux),

to two scalars carried in its ``solver_state``. ``diffrax.diffeqsolve`` keeps the solver state of accepted steps only,
so the accumulators sum exactly over the accepted steps (Pal et al., ICML 2021, arXiv 2105.03918).

Stage pairs (0-based stage indices, both at ``c = 1``):

- ``Tsit5``: stages 5 and 6 (6 is the FSAL stage ``f(t_{k+1}, y_{k+1})``);
- ``Dopri5``: stages 5 and 6 (6 is the FSAL stage);
- ``Dopri8``: stages 12 and 13 (13 is the FSAL stage);
- ``Bosh3`` (``c = 0, 1/2, 3/4, 1``) and ``Heun`` (``c = 0, 1``): no two stages share a time point, the stiffness
  estimate is undefined and requesting it raises a ``ValueError``; so does any implicit or IMEX solver (the estimate
  is defined for explicit stages only). The error heuristic works for any solver with an embedded error estimate
  (all :class:`diffrax.AbstractAdaptiveSolver`: explicit, implicit such as ``Kvaerno5``, IMEX such as ``KenCarp4``,
  and SDE solvers such as ``Heun`` or ``SPaRK`` on an SDE).

Backward time (``t1 < t0``): diffrax integrates the mirrored problem ``z'(s) = -f(-s, z)`` forward in ``s = -t``,
and the wrapper sees its steps, so both heuristics are non-negative and equal those of the mirrored problem.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optimistix as optx
from jaxtyping import Array, PyTree, Scalar, ScalarLike

__all__ = ["HeuristicSolver", "HeuristicState", "stiffness_stage_pair"]


def _full_butcher_matrix(tableau: dfx.ButcherTableau) -> np.ndarray:
    """The ``(s, s)`` lower-triangular Butcher matrix ``A`` (first row zero)."""
    s = tableau.num_stages
    a = np.zeros((s, s))
    for i, row in enumerate(tableau.a_lower):
        a[i + 1, : len(row)] = np.asarray(row)
    return a


def stiffness_stage_pair(solver: dfx.AbstractSolver) -> tuple[int, int]:
    """The last two stage indices ``(a, b)``, ``a < b``, of an explicit RK solver evaluated at the same time.

    Raises ``ValueError`` when ``solver`` is not an explicit Runge--Kutta method or has no such pair (``Bosh3``,
    ``Heun``, ``Ralston``, ``Midpoint``): the Shampine--Hairer stiffness estimate is then undefined.
    """
    inner = solver.solver if isinstance(solver, HeuristicSolver) else solver
    tableau = getattr(inner, "tableau", None)
    if not isinstance(inner, dfx.AbstractERK) or not isinstance(tableau, dfx.ButcherTableau):
        raise ValueError(
            f"the stiffness heuristic needs an explicit Runge--Kutta solver with a Butcher tableau, got "
            f"solver={type(inner).__name__}; use heuristics=('error',) for this solver."
        )
    c = np.concatenate([[0.0], np.asarray(tableau.c, dtype=float)])
    for b in range(len(c) - 1, 0, -1):
        same = [a for a in range(b) if c[a] == c[b]]
        if same:
            return same[-1], b
    raise ValueError(
        f"the stiffness heuristic is undefined for solver={type(inner).__name__}: no two of its stages are evaluated "
        f"at the same time point (c = {c.tolist()}). Use a solver such as diffrax.Tsit5/Dopri5/Dopri8 or "
        "heuristics=('error',)."
    )


def _all_finite(tree: PyTree[Array]) -> Array:
    leaves = jtu.tree_leaves(tree)
    if not leaves:
        return jnp.array(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _tree_two_norm(x: PyTree[Array]) -> Scalar:
    return optx.two_norm(x)


def _stiffness_times_h(solver: dfx.AbstractSolver, pair: tuple[int, int], ks: PyTree[Array]) -> Scalar:
    """``lambda h = ||k_a - k_b|| / ||Y_a - Y_b||`` from the stages ``ks`` (leading stage axis)."""
    a, b = pair
    tableau: dfx.ButcherTableau = cast(Any, solver).tableau  # an explicit RK's (stiffness_stage_pair checks)
    amat = _full_butcher_matrix(tableau)
    if tableau.ssal and b == tableau.num_stages - 1:
        amat[b, :] = np.asarray(tableau.b_sol)  # the FSAL stage is evaluated at y_{k+1}
    coeff = amat[a] - amat[b]
    num = _tree_two_norm(jtu.tree_map(lambda k: k[a] - k[b], ks))
    dy = jtu.tree_map(lambda k: jnp.tensordot(jnp.asarray(coeff, k.dtype), k, axes=1), ks)
    den = _tree_two_norm(dy)
    safe = jnp.where(den > 0, den, 1.0)
    return jnp.where(den > 0, num / safe, 0.0)


class HeuristicState(eqx.Module):
    """Solver state of :class:`HeuristicSolver`: the inner solver's state, the two accumulators (scalars) and, for
    each probe time, the start (solver time) and size of the accepted step containing it (``(num_probes,)``;
    ``probe_h = 0`` until found)."""

    inner: Any
    error: Scalar
    stiffness: Scalar
    probe_t: Array | None = None
    probe_h: Array | None = None


class HeuristicSolver(dfx.AbstractAdaptiveSolver, dfx.AbstractWrappedSolver):
    """Wraps an adaptive diffrax solver and accumulates ``R_E = sum_k ||e_k||_w |h_k|`` and
    ``R_S = sum_k lambda_k |h_k|`` over the accepted steps (see the module docstring for the maths and stage pairs).

    **Arguments:**

    - ``solver``: the inner adaptive solver (it does every step; ``y``, error estimate and dense output are its own).
    - ``rtol``, ``atol``: the tolerances of the step-size controller (so ``||.||_w`` is the norm the controller uses).
    - ``norm``: the controller's norm (default ``optimistix.rms_norm``, diffrax's default).
    - ``record_error``, ``record_stiffness``: which heuristics to accumulate (the other stays ``0``).
    - ``probe_ts``: optional times (``(num_probes,)``, in the solver's time: ``-t`` in a backward solve) whose
      containing accepted step's size ``|h_k|`` is recorded in ``HeuristicState.probe_h`` (used by local
      regularization to take its local step with the step size the solver used there).

    Read the accumulators from ``diffeqsolve(..., saveat=SaveAt(..., solver_state=True)).solver_state``, a
    :class:`HeuristicState`. Gradients flow through them with diffrax's discrete adjoints
    (``RecursiveCheckpointAdjoint``, ``DirectAdjoint``); diffrax treats step sizes as constants (``stop_gradient`` in
    its controllers), so the gradient is that of the sum along the fixed accepted step sequence.
    """

    solver: dfx.AbstractSolver  # type: ignore[misc]  # mypy reads diffrax's AbstractVar `solver` as a ClassVar
    rtol: ScalarLike
    atol: ScalarLike
    norm: Callable[[PyTree], Scalar] = optx.rms_norm
    record_error: bool = eqx.field(static=True, default=True)
    record_stiffness: bool = eqx.field(static=True, default=False)
    probe_ts: Array | None = None

    def __check_init__(self):
        if self.record_error and not isinstance(self.solver, dfx.AbstractAdaptiveSolver):
            raise TypeError(
                f"solver={type(self.solver).__name__} has no embedded error estimate (not a "
                "diffrax.AbstractAdaptiveSolver); use e.g. diffrax.Tsit5, Dopri5, Dopri8, Bosh3, Heun, Kvaerno5."
            )
        if self.record_stiffness:
            stiffness_stage_pair(self.solver)

    @property
    def term_structure(self):
        return self.solver.term_structure

    @property
    def root_finder(self):
        """The inner implicit solver's root finder (diffrax reads it; ``solve_with_heuristics`` has already given it
        the controller's tolerances)."""
        return getattr(self.solver, "root_finder", None)

    @property
    def interpolation_cls(self):  # pyright: ignore
        return self.solver.interpolation_cls

    @property
    def term_compatible_contr_kwargs(self):
        return self.solver.term_compatible_contr_kwargs

    def order(self, terms):
        return self.solver.order(terms)

    def strong_order(self, terms):
        return self.solver.strong_order(terms)

    def error_order(self, terms):
        return self.solver.error_order(terms)

    def init(self, terms, t0, t1, y0, args) -> HeuristicState:
        inner = self.solver.init(terms, t0, t1, y0, args)
        dtype = jnp.result_type(*[jnp.asarray(x) for x in jtu.tree_leaves(y0)], jnp.asarray(t0))
        if not jnp.issubdtype(dtype, jnp.floating):
            dtype = jnp.result_type(float)
        zero = jnp.zeros((), dtype)
        probe_h = None if self.probe_ts is None else jnp.zeros(jnp.shape(self.probe_ts), jnp.result_type(t0, float))
        return HeuristicState(inner=inner, error=zero, stiffness=zero, probe_t=probe_h, probe_h=probe_h)

    def step(self, terms, t0, t1, y0, args, solver_state: HeuristicState, made_jump):
        y1, y_error, dense_info, inner, result = self.solver.step(
            terms, t0, t1, y0, args, solver_state.inner, made_jump
        )
        h = jnp.abs(t1 - t0)
        error = solver_state.error
        stiffness = solver_state.stiffness
        # A failed step (an implicit solver's Newton iteration did not converge: diffrax sets its error estimate to
        # inf; or the field returned NaN/inf) is always rejected, and diffrax discards this state with a `where`.
        # Its increment is computed from finite stand-ins ("double where"): the discarded branch then has a zero
        # cotangent times a finite derivative in the backward pass, not 0 * inf = NaN, which would reach the
        # implicit stage solve's linear solve as a non-finite cotangent.
        ok = dfx.is_okay(result) & _all_finite(y1) & _all_finite(y_error)
        if self.record_error:
            safe_y1 = jtu.tree_map(lambda a, b: jnp.where(ok, b, a), y0, y1)
            safe_err = jtu.tree_map(lambda e: jnp.where(ok, e, jnp.zeros_like(e)), y_error)
            inc = jnp.where(ok, self.local_error(y0, safe_y1, safe_err) * h, jnp.inf)
            error = error + inc.astype(error.dtype)
        if self.record_stiffness:
            pair = stiffness_stage_pair(self.solver)
            ks = dense_info["k"]
            ok_k = ok & _all_finite(ks)
            safe_ks = jtu.tree_map(lambda k: jnp.where(ok_k, k, jnp.zeros_like(k)), ks)
            inc = jnp.where(ok_k, _stiffness_times_h(self.solver, pair, safe_ks), jnp.inf)
            stiffness = stiffness + inc.astype(stiffness.dtype)
        error = error.astype(solver_state.error.dtype)
        probe_t, probe_h = solver_state.probe_t, solver_state.probe_h
        if self.probe_ts is not None:
            lo, hi = jnp.minimum(t0, t1), jnp.maximum(t0, t1)
            inside = (self.probe_ts >= lo) & (self.probe_ts < hi)
            probe_t, probe_h = cast(Array, probe_t), cast(Array, probe_h)  # arrays: init() made them for probe_ts
            probe_h = jnp.where(inside, jax.lax.stop_gradient(h).astype(probe_h.dtype), probe_h)
            probe_t = jnp.where(inside, jax.lax.stop_gradient(cast(Array, t0)).astype(probe_t.dtype), probe_t)
        new_state = HeuristicState(inner=inner, error=error, stiffness=stiffness, probe_t=probe_t, probe_h=probe_h)
        return y1, y_error, dense_info, new_state, result

    def local_error(self, y0: PyTree[Array], y1: PyTree[Array], y_error: PyTree[Array]) -> Scalar:
        """``||e||_w``: the controller's scaled error norm of one step (without the ``|h|`` factor)."""
        if y_error is None:
            raise ValueError(f"solver={type(self.solver).__name__} returned no error estimate")

        def scale(a, b, e):
            with jax.numpy_dtype_promotion("standard"):
                return e / (self.atol + jnp.maximum(jnp.abs(a), jnp.abs(b)) * self.rtol)

        return self.norm(jtu.tree_map(scale, y0, y1, y_error))

    def local_stiffness(self, dense_info: dict) -> Scalar:
        """``lambda h`` of one step from its stages (see the module docstring)."""
        return _stiffness_times_h(self.solver, stiffness_stage_pair(self.solver), dense_info["k"])

    def func(self, terms, t0, y0, args):
        return self.solver.func(terms, t0, y0, args)
