"""Regularizers for neural ODE solves, all behind one call: :func:`regularized_solve`.

- :class:`NoRegularization`: the plain solve (solve statistics only);
- :class:`HeuristicRegularization`: solver heuristics ``lam_E R_E + lam_S R_S`` (Pal et al. 2021), globally over the
  accepted steps (``local=None``) or locally at sampled time points (``local="unbiased"|"biased"``, Pal et al. 2023);
- :class:`RNODE`: kinetic energy ``int ||f||^2 dt`` and Jacobian Frobenius norm ``int ||df/dy||_F^2 dt`` (Hutchinson
  estimate ``||eps^T df/dy||^2``, ``eps ~ N(0, I)``), integrated along the trajectory in an augmented state (Finlay et
  al., ICML 2020);
- :class:`TayNODE`: ``int ||d^K y / dt^K||^2 / dim dt`` with the ``K``-th total time derivative computed by
  Taylor-mode AD (``jax.experimental.jet``), integrated in an augmented state (Kelly et al., NeurIPS 2020);
- :class:`STEER`: the end time is drawn from ``U(t1 - b, t1 + b)`` during training (Ghosh et al., NeurIPS 2020).

Every solve returns an :class:`ODEOutput`: ``ys``, the weighted ``penalty`` to add to the task loss, the raw
regularizer values, and :class:`SolveStats`. Augmented states (RNODE, TayNODE) are part of the state the step-size
controller sees, as in the reference implementations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
from jax.experimental import jet
from jaxtyping import Array, Float, PRNGKeyArray, PyTree, Scalar

from ._local import solve_with_local_heuristics
from ._solve import SolveStats, check_tolerances, check_weight, solve_with_heuristics

__all__ = [
    "AbstractRegularizer",
    "HeuristicRegularization",
    "NoRegularization",
    "ODEOutput",
    "RNODE",
    "STEER",
    "TayNODE",
    "SolverConfig",
    "regularized_solve",
    "taylor_derivative",
]


class ODEOutput(eqx.Module):
    """What a regularized solve returns.

    - ``ys``: the solution at the requested times (``(len(ts), *y.shape)``) or at ``t1`` (``y.shape``); for models the
      prediction (logits, reconstructions);
    - ``penalty``: the weighted regularization term (scalar) to add to the task loss;
    - ``error``, ``stiffness``: ``R_E``, ``R_S`` (global, local estimates, or ``0`` when not recorded);
    - ``extra``: the raw values of other regularizers (``{"kinetic", "jacobian"}`` for RNODE, ``{"taylor"}`` for
      TayNODE, ``{"t1"}`` for STEER), else empty;
    - ``stats``: :class:`SolveStats`.
    """

    ys: PyTree[Array]
    penalty: Scalar
    error: Scalar
    stiffness: Scalar
    stats: SolveStats
    extra: dict[str, Array] = eqx.field(default_factory=dict)


class SolverConfig(eqx.Module):
    """Solver settings of a neural DE: solver, tolerances, ``dt0``, ``max_steps``, adjoint, ``on_max_steps``."""

    solver: dfx.AbstractSolver = dfx.Tsit5()
    rtol: float = eqx.field(static=True, default=1e-3)
    atol: float = eqx.field(static=True, default=1e-6)
    dt0: float | None = eqx.field(static=True, default=None)
    max_steps: int = eqx.field(static=True, default=4096)
    adjoint: dfx.AbstractAdjoint = dfx.RecursiveCheckpointAdjoint()
    on_max_steps: str = eqx.field(static=True, default="raise")

    def __check_init__(self):
        check_tolerances(self.rtol, self.atol)
        if not isinstance(self.solver, dfx.AbstractAdaptiveSolver):
            raise TypeError(
                f"unsupported solver={type(self.solver).__name__}: it has no embedded error estimate; use e.g. "
                "diffrax.Tsit5, Dopri5, Dopri8, Bosh3 or Heun"
            )
        if self.on_max_steps not in ("raise", "flag"):
            raise ValueError(f"on_max_steps must be 'raise' or 'flag', got {self.on_max_steps!r}")
        if not isinstance(self.max_steps, int) or self.max_steps <= 0:
            raise ValueError(f"max_steps must be a positive int, got {self.max_steps!r}")

    @property
    def controller(self) -> dfx.PIDController:
        return dfx.PIDController(rtol=self.rtol, atol=self.atol)


class AbstractRegularizer(eqx.Module):
    """How a solve is regularized; ``needs_key`` says whether :func:`regularized_solve` needs a PRNG key."""

    needs_key = False


class NoRegularization(AbstractRegularizer):
    """The unregularized baseline: a plain solve; ``penalty = 0``."""


class HeuristicRegularization(AbstractRegularizer):
    """``penalty = error_weight * R_E + stiffness_weight * R_S`` (Pal et al. 2021; local variant Pal et al. 2023).

    - ``error_weight``, ``stiffness_weight``: non-negative weights (a zero weight skips recording that heuristic);
    - ``local``: ``None`` (global sums over the accepted steps; discrete adjoints only), ``"unbiased"`` or
      ``"biased"`` (local estimates at ``num_samples`` sampled time points; any adjoint; needs a key).
    """

    error_weight: float = 0.0
    stiffness_weight: float = 0.0
    local: Literal["unbiased", "biased"] | None = eqx.field(static=True, default=None)
    num_samples: int = eqx.field(static=True, default=1)

    def __check_init__(self):
        check_weight("error_weight", self.error_weight)
        check_weight("stiffness_weight", self.stiffness_weight)
        if self.local not in (None, "unbiased", "biased"):
            raise ValueError(f"local must be None, 'unbiased' or 'biased', got {self.local!r}")

    @property
    def needs_key(self):  # pyright: ignore
        return self.local is not None

    @property
    def heuristics(self) -> tuple[str, ...]:
        out = []
        if not _is_zero(self.error_weight):
            out.append("error")
        if not _is_zero(self.stiffness_weight):
            out.append("stiffness")
        return tuple(out)


class RNODE(AbstractRegularizer):
    """``penalty = kinetic_weight * int ||f||^2 dt + jacobian_weight * int ||eps^T df/dy||^2 dt`` (Finlay et al.)."""

    kinetic_weight: float = 0.01
    jacobian_weight: float = 0.01
    needs_key = True

    def __check_init__(self):
        check_weight("kinetic_weight", self.kinetic_weight)
        check_weight("jacobian_weight", self.jacobian_weight)


class TayNODE(AbstractRegularizer):
    """``penalty = weight * int ||d^K y/dt^K||^2 / dim dt``, ``K = order >= 2`` by Taylor-mode AD (Kelly et al.)."""

    weight: float = 0.01
    order: int = eqx.field(static=True, default=2)

    def __check_init__(self):
        check_weight("weight", self.weight)
        if not isinstance(self.order, int) or self.order < 1:
            raise ValueError(f"order must be an int >= 1, got {self.order!r}")


class STEER(AbstractRegularizer):
    """Random end time ``t1' ~ U(t1 - b, t1 + b)`` during training (Ghosh et al.); endpoint solves only."""

    b: float = 0.25
    needs_key = True

    def __check_init__(self):
        check_weight("b", self.b)


def _is_zero(x: Any) -> bool:
    try:
        return float(x) == 0.0
    except (TypeError, jax.errors.ConcretizationTypeError):
        return False


def taylor_derivative(
    vector_field: Callable[[Scalar, Float[Array, " n"], Any], Float[Array, " n"]],
    t: Scalar,
    y: Float[Array, " n"],
    args: Any,
    order: int,
) -> Float[Array, " n"]:
    """``d^order y / dt^order`` along ``y' = f(t, y)`` at ``(t, y)`` by Taylor-mode AD.

    With ``z = (y, t)`` and ``z' = g(z) = (f(t, y), 1)``, the derivatives satisfy ``z^{(k+1)} = (g(z))^{(k)}``; each
    ``jet`` call propagates the known ``z', ..., z^{(k)}`` through ``g`` and yields ``z^{(k+1)}``.
    """
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    t = jnp.asarray(t, y.dtype)
    z0 = jnp.concatenate([y, t[None]])

    def g(z):
        return jnp.concatenate([vector_field(z[-1], z[:-1], args), jnp.ones((1,), z.dtype)])

    series = [g(z0)]
    for _ in range(order - 1):
        _, out = jet.jet(g, (z0,), (list(series),))
        series.append(out[-1])
    return series[order - 1][:-1]


def _zero_like_time(t: Any) -> Scalar:
    return jnp.zeros((), jnp.result_type(t, float))


def regularized_solve(
    vector_field: Callable[[Scalar, Array, Any], Array],
    y0: Float[Array, " n"],
    t0: float,
    t1: float,
    *,
    ts: Float[Array, " m"] | None = None,
    args: Any = None,
    config: SolverConfig = SolverConfig(),
    regularizer: AbstractRegularizer | None = None,
    key: PRNGKeyArray | None = None,
) -> ODEOutput:
    """Solve ``y' = f(t, y, args)`` from ``t0`` to ``t1`` (saving at ``ts`` if given, else at ``t1``) under
    ``regularizer`` and return an :class:`ODEOutput` (``y0`` a 1-D array; ``vmap`` for batches).

    ``vector_field`` should be an ``eqx.Module`` (or take its parameters through ``args``) for continuous adjoints
    such as ``BacksolveAdjoint``.
    """
    regularizer = NoRegularization() if regularizer is None else regularizer
    if not isinstance(regularizer, AbstractRegularizer):
        raise TypeError(f"regularizer must be an AbstractRegularizer, got {type(regularizer).__name__}")
    if not isinstance(config, SolverConfig):
        raise TypeError(f"config must be a SolverConfig, got {type(config).__name__}")
    if regularizer.needs_key and key is None:
        raise ValueError(f"regularizer={type(regularizer).__name__} is random: pass key=")
    y0 = jnp.asarray(y0)
    if y0.ndim != 1:
        raise ValueError(f"y0 must be a 1-D array (vmap over batches), got shape {y0.shape}")
    saveat = dfx.SaveAt(ts=ts) if ts is not None else dfx.SaveAt(t1=True)
    common = dict(
        dt0=config.dt0,
        stepsize_controller=config.controller,
        max_steps=config.max_steps,
        adjoint=config.adjoint,
        on_max_steps=config.on_max_steps,
    )
    zero = _zero_like_time(t0).astype(y0.dtype)

    def _final(ys):
        return ys if ts is not None else ys[-1]

    if isinstance(regularizer, NoRegularization):
        sol, _, stats = solve_with_heuristics(
            vector_field, config.solver, t0, t1, y0, args, saveat=saveat, heuristics=(), **common
        )
        return ODEOutput(_final(sol.ys), zero, zero, zero, stats)

    if isinstance(regularizer, HeuristicRegularization):
        heur = regularizer.heuristics
        if regularizer.local is None:
            sol, h, stats = solve_with_heuristics(
                vector_field, config.solver, t0, t1, y0, args, saveat=saveat, heuristics=heur, **common
            )
        else:
            sol, h, stats = solve_with_local_heuristics(
                vector_field,
                config.solver,
                t0,
                t1,
                y0,
                args,
                key=key,
                strategy=regularizer.local,
                num_samples=regularizer.num_samples,
                saveat=saveat,
                heuristics=heur,
                **common,
            )
        penalty = regularizer.error_weight * h.error + regularizer.stiffness_weight * h.stiffness
        return ODEOutput(_final(sol.ys), penalty, h.error, h.stiffness, stats)

    if isinstance(regularizer, STEER):
        if ts is not None:
            raise ValueError("STEER samples the end time: it applies to endpoint solves (ts=None) only")
        if not _is_zero(regularizer.b) and float(regularizer.b) >= abs(float(t1) - float(t0)):
            raise ValueError(f"b must be smaller than |t1 - t0| = {abs(float(t1) - float(t0))}, got {regularizer.b}")
        u = jax.random.uniform(key, (), minval=-1.0, maxval=1.0, dtype=jnp.result_type(float))
        t_end = t1 + regularizer.b * u
        sol, _, stats = solve_with_heuristics(
            vector_field, config.solver, t0, t_end, y0, args, saveat=saveat, heuristics=(), **common
        )
        return ODEOutput(_final(sol.ys), zero, zero, zero, stats, {"t1": t_end})

    if isinstance(regularizer, RNODE):
        eps = jax.random.normal(key, y0.shape, y0.dtype)
        return _augmented(_RNODEField(vector_field, eps), y0, 2, t0, t1, ts, args, common, config, _final, regularizer)

    if isinstance(regularizer, TayNODE):
        field = _TayNODEField(vector_field, regularizer.order)
        return _augmented(field, y0, 1, t0, t1, ts, args, common, config, _final, regularizer)

    raise TypeError(f"unsupported regularizer {type(regularizer).__name__}")


class _RNODEField(eqx.Module):
    """``(y, E_kin, E_jac)' = (f, ||f||^2, ||eps^T df/dy||^2)``."""

    field: Callable
    eps: Array

    def __call__(self, t, state, args):
        y = state[:-2]
        fy, vjp = jax.vjp(lambda yy: self.field(t, yy, args), y)
        (ej,) = vjp(self.eps)
        return jnp.concatenate([fy, jnp.stack([jnp.sum(fy**2), jnp.sum(ej**2)])])


class _TayNODEField(eqx.Module):
    """``(y, R)' = (f, ||d^K y/dt^K||^2 / dim)``."""

    field: Callable
    order: int = eqx.field(static=True)

    def __call__(self, t, state, args):
        y = state[:-1]
        dk = taylor_derivative(self.field, t, y, args, self.order)
        return jnp.concatenate([self.field(t, y, args), jnp.sum(dk**2)[None] / y.shape[0]])


def _augmented(aug_field, y0, n_extra, t0, t1, ts, args, common, config, _final, regularizer) -> ODEOutput:
    """Solve the augmented state; the integrals are read at the last save time (``t1``, or ``ts[-1]``)."""
    state0 = jnp.concatenate([y0, jnp.zeros((n_extra,), y0.dtype)])
    saveat = dfx.SaveAt(ts=ts) if ts is not None else dfx.SaveAt(t1=True)
    sol, _, stats = solve_with_heuristics(
        aug_field, config.solver, t0, t1, state0, args, saveat=saveat, heuristics=(), **common
    )
    ys = sol.ys[..., : y0.shape[0]]
    final_extra = sol.ys[-1, y0.shape[0] :]
    zero = jnp.zeros((), y0.dtype)
    if isinstance(regularizer, RNODE):
        extra = {"kinetic": final_extra[0], "jacobian": final_extra[1]}
        penalty = regularizer.kinetic_weight * extra["kinetic"] + regularizer.jacobian_weight * extra["jacobian"]
    else:
        extra = {"taylor": final_extra[0]}
        penalty = regularizer.weight * extra["taylor"]
    return ODEOutput(_final(ys), penalty, zero, zero, stats, extra)
