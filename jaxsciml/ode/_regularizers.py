"""Regularizers for neural ODE solves, all behind one call: :func:`regularized_solve`.

Each regularizer is an :class:`AbstractRegularizer` that implements :meth:`AbstractRegularizer.solve` (solve and
penalty together, since most penalties change the solve: augmented states, recorded heuristics, sampled end times).
A new regularizer subclasses it and implements ``solve``; :func:`regularized_solve` only validates and dispatches.
Built-ins:

- :class:`NoRegularization`: the plain solve (solve statistics only);
- :class:`HeuristicRegularization`: solver heuristics ``lam_E R_E + lam_S R_S`` (Pal et al. 2021), globally over the
  accepted steps (``local=None``) or locally at sampled time points (``local="unbiased"|"biased"``, Pal et al. 2023);
  the weights may be optax schedules of the training step;
- :class:`RNODE`: kinetic energy ``int ||f||^2 dt`` and Jacobian Frobenius norm ``int ||df/dy||_F^2 dt`` (Hutchinson
  estimate ``||eps^T df/dy||^2``, ``eps ~ N(0, I)``), integrated along the trajectory in an augmented state (Finlay et
  al., ICML 2020);
- :class:`TayNODE`: ``int ||d^K y / dt^K||^2 / dim dt`` with the ``K``-th total time derivative computed by
  Taylor-mode AD (``jax.experimental.jet``), integrated in an augmented state (Kelly et al., NeurIPS 2020);
- :class:`STEER`: the end time is drawn from ``U(t1 - b, t1 + b)`` during training (Ghosh et al., NeurIPS 2020).

States are any PyTree of floating arrays. Integrals run over ``|dt|``, so in backward time (``t1 < t0``) every
penalty is non-negative and equals the forward-time value of the mirrored problem ``z'(s) = -f(-s, z)``.

Every solve returns an :class:`ODEOutput`: ``ys``, the weighted ``penalty`` to add to the task loss, the raw
regularizer values, and :class:`SolveStats`. Augmented states (RNODE, TayNODE) are part of the state the step-size
controller sees, as in the reference implementations.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, Generic, Literal, TypeVar, cast

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jax.experimental import jet
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Int, PRNGKeyArray, PyTree, Scalar

from ._local import solve_with_local_heuristics
from ._solve import (
    Heuristics,
    SolveStats,
    check_dt0,
    check_tolerances,
    check_weight,
    is_imex,
    solve_with_heuristics,
)

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


YT = TypeVar("YT")  # the type of ``ys`` (e.g. ``Array`` for an array ``y0``)


class ODEOutput(eqx.Module, Generic[YT]):
    """What a regularized solve returns.

    - ``ys``: the solution at the requested times (each leaf ``(len(ts), *leaf.shape)``) or at ``t1`` (``y0``'s
      structure and shapes); for models the prediction (logits, reconstructions);
    - ``penalty``: the weighted regularization term (scalar) to add to the task loss;
    - ``error``, ``stiffness``: ``R_E``, ``R_S`` (global, local estimates, or ``0`` when not recorded);
    - ``extra``: the raw values of other regularizers (``{"kinetic", "jacobian"}`` for RNODE, ``{"taylor"}`` for
      TayNODE, ``{"t1"}`` for STEER), else empty;
    - ``stats``: :class:`SolveStats`.
    """

    ys: YT
    penalty: Scalar
    error: Scalar
    stiffness: Scalar
    stats: SolveStats
    extra: dict[str, Array] = eqx.field(default_factory=dict)


class SolverConfig(eqx.Module):
    """Solver settings of a neural DE: solver, tolerances, ``dt0``, ``max_steps``, adjoint, ``on_max_steps``.

    ``dt0=None`` (default) picks the first step with Hairer's estimate (:func:`jaxsciml.ode.initial_step_size`).
    Implicit/IMEX adaptive solvers (``Kvaerno5``, ``KenCarp4`` with IMEX terms) work with unregularized solves and
    the error heuristic; the stiffness heuristic needs an explicit Runge--Kutta solver.
    """

    solver: dfx.AbstractSolver = dfx.Tsit5()
    rtol: float = eqx.field(static=True, default=1e-3)
    atol: float = eqx.field(static=True, default=1e-6)
    dt0: float | None = eqx.field(static=True, default=None)
    max_steps: int = eqx.field(static=True, default=4096)
    adjoint: dfx.AbstractAdjoint = dfx.RecursiveCheckpointAdjoint()
    on_max_steps: Literal["raise", "flag"] = eqx.field(static=True, default="raise")

    def __check_init__(self):
        check_tolerances(self.rtol, self.atol)
        if not isinstance(self.solver, dfx.AbstractAdaptiveSolver):
            raise TypeError(
                f"unsupported solver={type(self.solver).__name__}: it has no embedded error estimate; use e.g. "
                "diffrax.Tsit5, Dopri5, Dopri8, Bosh3, Heun, Kvaerno5 (or solve_with_heuristics with a fixed "
                "controller for fixed-step solvers)"
            )
        if is_imex(self.solver):
            raise TypeError(
                f"solver={type(self.solver).__name__} is an IMEX solver: it needs the field split in two terms, "
                "diffrax.MultiTerm(ODETerm(explicit_part), ODETerm(implicit_part)), while SolverConfig (and the "
                "models) solve one vector field. Use a fully implicit solver such as diffrax.Kvaerno5 here, or "
                "jaxsciml.ode.solve_with_heuristics with the MultiTerm."
            )
        if self.on_max_steps not in ("raise", "flag"):
            raise ValueError(f"on_max_steps must be 'raise' or 'flag', got {self.on_max_steps!r}")
        if not isinstance(self.max_steps, int) or self.max_steps <= 0:
            raise ValueError(f"max_steps must be a positive int, got {self.max_steps!r}")
        check_dt0(self.dt0)

    @property
    def controller(self) -> dfx.PIDController:
        return dfx.PIDController(rtol=self.rtol, atol=self.atol)

    def solve_kwargs(self) -> dict:
        """Keyword arguments of :func:`solve_with_heuristics` for these settings (``dt0``, controller, ...)."""
        return dict(
            dt0=self.dt0,
            stepsize_controller=self.controller,
            max_steps=self.max_steps,
            adjoint=self.adjoint,
            on_max_steps=self.on_max_steps,
        )

    def solve(
        self,
        vector_field: Callable,
        y0: PyTree[Array],
        t0: Any,
        t1: Any,
        *,
        ts: Array | None = None,
        args: Any = None,
        heuristics: tuple[str, ...] = (),
    ) -> tuple[PyTree[Array], Heuristics, SolveStats]:
        """Solve with these settings and return ``(ys, Heuristics, SolveStats)``, ``ys`` at ``ts`` (leading axis
        ``len(ts)``) or at ``t1`` (``y0``'s shapes). A building block for new regularizers."""
        sol, h, stats = solve_with_heuristics(
            vector_field,
            self.solver,
            t0,
            t1,
            y0,
            args,
            saveat=_saveat(ts),
            heuristics=heuristics,
            **self.solve_kwargs(),
        )
        return _final(sol.ys, ts), h, stats


def _saveat(ts) -> dfx.SaveAt:
    return dfx.SaveAt(ts=ts) if ts is not None else dfx.SaveAt(t1=True)


def _final(ys: PyTree[Array], ts) -> PyTree[Array]:
    return ys if ts is not None else jtu.tree_map(lambda y: y[-1], ys)


def _zero(y0: PyTree[Array]) -> Scalar:
    return jnp.zeros((), jnp.result_type(*jtu.tree_leaves(y0), float))


def resolve_weight(name: str, weight: Any, step: Any) -> Any:
    """A weight as a number: a float as is, a schedule (``optax.Schedule``, any callable of the step) at ``step``."""
    if callable(weight):
        if step is None:
            raise ValueError(f"{name} is a schedule: pass step= (the training step) to the solve or model call")
        return weight(step)
    return weight


class AbstractRegularizer(eqx.Module):
    """How a solve is regularized. Subclasses implement :meth:`solve`; ``needs_key`` (a class attribute or property)
    says whether it needs a PRNG key.

    A new regularizer, e.g. an endpoint penalty::

        class EndpointL2(AbstractRegularizer):
            weight: float = 1.0

            def solve(self, vector_field, y0, t0, t1, *, ts, args, config, key, step):
                ys, _, stats = config.solve(vector_field, y0, t0, t1, ts=ts, args=args)
                pen = self.weight * sum(jnp.sum(y**2) for y in jax.tree_util.tree_leaves(ys))
                zero = jnp.zeros(())
                return ODEOutput(ys, pen, zero, zero, stats)
    """

    needs_key = False

    @abc.abstractmethod
    def solve(
        self,
        vector_field: Callable,
        y0: PyTree[Array],
        t0: Any,
        t1: Any,
        *,
        ts: Array | None,
        args: Any,
        config: SolverConfig,
        key: PRNGKeyArray | None,
        step: Int[Array, ""] | int | None,
    ) -> ODEOutput:
        """Solve ``y' = f(t, y, args)`` from ``t0`` to ``t1`` (saving at ``ts`` if given, else at ``t1``) with the
        settings in ``config`` and return the :class:`ODEOutput` with this regularizer's penalty. ``key`` is given
        when ``needs_key``; ``step`` is the training step (for weight schedules) or ``None``."""


class NoRegularization(AbstractRegularizer):
    """The unregularized baseline: a plain solve; ``penalty = 0``."""

    def solve(self, vector_field, y0, t0, t1, *, ts, args, config, key, step):
        ys, h, stats = config.solve(vector_field, y0, t0, t1, ts=ts, args=args)
        return ODEOutput(ys, h.error, h.error, h.stiffness, stats)


class HeuristicRegularization(AbstractRegularizer):
    """``penalty = error_weight * R_E + stiffness_weight * R_S`` (Pal et al. 2021; local variant Pal et al. 2023).

    - ``error_weight``, ``stiffness_weight``: non-negative weights, or schedules ``step -> weight`` (e.g.
      ``optax.linear_schedule(100.0, 10.0, 1000)`` as in the papers' annealing; pass ``step=`` to the call). A zero
      float weight skips recording that heuristic; a schedule always records it;
    - ``local``: ``None`` (global sums over the accepted steps; discrete adjoints only), ``"unbiased"`` or
      ``"biased"`` (local estimates at ``num_samples`` sampled time points; any adjoint; needs a key; see
      :func:`jaxsciml.ode.solve_with_local_heuristics` for what they estimate).
    """

    error_weight: float | Array | Callable = 0.0
    stiffness_weight: float | Array | Callable = 0.0
    local: Literal["unbiased", "biased"] | None = eqx.field(static=True, default=None)
    num_samples: int = eqx.field(static=True, default=1)

    def __check_init__(self):
        for name in ("error_weight", "stiffness_weight"):
            if not callable(getattr(self, name)):
                check_weight(name, getattr(self, name))
        if self.local not in (None, "unbiased", "biased"):
            raise ValueError(f"local must be None, 'unbiased' or 'biased', got {self.local!r}")

    @property
    def needs_key(self):  # pyright: ignore
        return self.local is not None

    @property
    def heuristics(self) -> tuple[str, ...]:
        out = []
        if callable(self.error_weight) or not _is_zero(self.error_weight):
            out.append("error")
        if callable(self.stiffness_weight) or not _is_zero(self.stiffness_weight):
            out.append("stiffness")
        return tuple(out)

    def weights(self, step: Any = None) -> tuple[Any, Any]:
        """``(error_weight, stiffness_weight)`` at ``step`` (schedules evaluated)."""
        return (
            resolve_weight("error_weight", self.error_weight, step),
            resolve_weight("stiffness_weight", self.stiffness_weight, step),
        )

    def solve(self, vector_field, y0, t0, t1, *, ts, args, config, key, step):
        if self.local == "biased" and ts is None:
            raise ValueError(
                "HeuristicRegularization(local='biased') samples t* among the save times ts, but this solve saves "
                "only y(t1) (ts=None, e.g. ODEClassifier or a NeuralODE called without ts): use local='unbiased' "
                "(t* ~ U(t0, t1)) or local=None, or pass ts= to the solve"
            )
        lam_e, lam_s = self.weights(step)
        heur = self.heuristics
        if self.local is None:
            ys, h, stats = config.solve(vector_field, y0, t0, t1, ts=ts, args=args, heuristics=heur)
        else:
            sol, h, stats = solve_with_local_heuristics(
                vector_field,
                config.solver,
                t0,
                t1,
                y0,
                args,
                key=cast(Array, key),  # needs_key: regularized_solve checked it
                strategy=self.local,
                num_samples=self.num_samples,
                saveat=_saveat(ts),
                heuristics=heur,
                **config.solve_kwargs(),
            )
            ys = _final(sol.ys, ts)
        penalty = lam_e * h.error + lam_s * h.stiffness
        return ODEOutput(ys, penalty, h.error, h.stiffness, stats)


class RNODE(AbstractRegularizer):
    """``penalty = kinetic_weight * int ||f||^2 |dt| + jacobian_weight * int ||eps^T df/dy||^2 |dt|`` (Finlay et
    al.); ``extra = {"kinetic", "jacobian"}``. For PyTree states the norms run over all leaves."""

    kinetic_weight: float = 0.01
    jacobian_weight: float = 0.01
    needs_key = True

    def __check_init__(self):
        check_weight("kinetic_weight", self.kinetic_weight)
        check_weight("jacobian_weight", self.jacobian_weight)

    def solve(self, vector_field, y0, t0, t1, *, ts, args, config, key, step):
        key = cast(Array, key)  # needs_key: regularized_solve checked it
        leaves, treedef = jtu.tree_flatten(y0)
        keys = [key] if len(leaves) == 1 else jax.random.split(key, len(leaves))  # one array: eps from key itself
        eps = jtu.tree_unflatten(
            treedef, [jax.random.normal(k, jnp.shape(x), jnp.result_type(x)) for k, x in zip(keys, leaves)]
        )
        field = _RNODEField(vector_field, eps, _direction(t0, t1))
        ys, extra, stats = _augmented(field, y0, 2, t0, t1, ts, args, config)
        out = {"kinetic": extra[0], "jacobian": extra[1]}
        penalty = self.kinetic_weight * out["kinetic"] + self.jacobian_weight * out["jacobian"]
        zero = _zero(y0)
        return ODEOutput(ys, penalty, zero, zero, stats, out)


class TayNODE(AbstractRegularizer):
    """``penalty = weight * int ||d^K y/dt^K||^2 / dim |dt|``, ``K = order >= 2`` by Taylor-mode AD (Kelly et al.);
    ``extra = {"taylor"}``; ``dim`` is the total size of the state."""

    weight: float = 0.01
    order: int = eqx.field(static=True, default=2)

    def __check_init__(self):
        check_weight("weight", self.weight)
        if not isinstance(self.order, int) or self.order < 1:
            raise ValueError(f"order must be an int >= 1, got {self.order!r}")

    def solve(self, vector_field, y0, t0, t1, *, ts, args, config, key, step):
        field = _TayNODEField(vector_field, self.order, _direction(t0, t1))
        ys, extra, stats = _augmented(field, y0, 1, t0, t1, ts, args, config)
        zero = _zero(y0)
        return ODEOutput(ys, self.weight * extra[0], zero, zero, stats, {"taylor": extra[0]})


class STEER(AbstractRegularizer):
    """Random end time ``t1' ~ U(t1 - b, t1 + b)`` during training (Ghosh et al.); endpoint solves only;
    ``extra = {"t1"}``."""

    b: float = 0.25
    needs_key = True

    def __check_init__(self):
        check_weight("b", self.b)

    def solve(self, vector_field, y0, t0, t1, *, ts, args, config, key, step):
        if ts is not None:
            raise ValueError("STEER samples the end time: it applies to endpoint solves (ts=None) only")
        if not _is_zero(self.b) and float(self.b) >= abs(float(t1) - float(t0)):
            raise ValueError(f"b must be smaller than |t1 - t0| = {abs(float(t1) - float(t0))}, got {self.b}")
        u = jax.random.uniform(cast(Array, key), (), minval=-1.0, maxval=1.0, dtype=jnp.result_type(float))
        t_end = t1 + self.b * u
        ys, h, stats = config.solve(vector_field, y0, t0, t_end, ts=None, args=args)
        return ODEOutput(ys, h.error, h.error, h.stiffness, stats, {"t1": t_end})


def _is_zero(x: Any) -> bool:
    try:
        return float(x) == 0.0
    except (TypeError, jax.errors.ConcretizationTypeError):
        return False


def _direction(t0: Any, t1: Any) -> Scalar:
    """``sign(t1 - t0)``: integrands times it integrate over ``|dt|``."""
    return jnp.where(jnp.asarray(t1) < jnp.asarray(t0), -1.0, 1.0)


def taylor_derivative(
    vector_field: Callable[[Scalar, PyTree[Array], Any], PyTree[Array]],
    t: Scalar,
    y: PyTree[Array],
    args: Any,
    order: int,
) -> PyTree[Array]:
    """``d^order y / dt^order`` along ``y' = f(t, y)`` at ``(t, y)`` by Taylor-mode AD (``y`` any PyTree; the result
    has its structure).

    With ``z = (y, t)`` (flattened) and ``z' = g(z) = (f(t, y), 1)``, the derivatives satisfy
    ``z^{(k+1)} = (g(z))^{(k)}``; each ``jet`` call propagates the known ``z', ..., z^{(k)}`` through ``g`` and
    yields ``z^{(k+1)}``.
    """
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    flat, unravel = ravel_pytree(y)
    t = jnp.asarray(t, flat.dtype)
    z0 = jnp.concatenate([flat, t[None]])

    def g(z):
        fz, _ = ravel_pytree(vector_field(z[-1], unravel(z[:-1]), args))
        return jnp.concatenate([fz.astype(z.dtype), jnp.ones((1,), z.dtype)])

    series = [g(z0)]
    for _ in range(order - 1):
        _, out = jet.jet(g, (z0,), (list(series),))
        series.append(out[-1])
    return unravel(series[order - 1][:-1])


def regularized_solve(
    vector_field: Callable[[Scalar, PyTree[Array], Any], PyTree[Array]],
    y0: YT,
    t0: float,
    t1: float,
    *,
    ts: Array | None = None,
    args: Any = None,
    config: SolverConfig = SolverConfig(),
    regularizer: AbstractRegularizer | None = None,
    key: PRNGKeyArray | None = None,
    step: Int[Array, ""] | int | None = None,
) -> ODEOutput[YT]:
    """Solve ``y' = f(t, y, args)`` from ``t0`` to ``t1`` (saving at ``ts`` if given, else at ``t1``) under
    ``regularizer`` and return an :class:`ODEOutput`.

    ``y0`` is any PyTree of floating arrays (``vmap`` for independent per-sample solves, or solve a batch as one
    system for a shared step sequence, see :meth:`jaxsciml.ode.NeuralODE.batched`); ``t1 < t0`` integrates backward.
    ``step`` is the training step, needed when a regularizer weight is a schedule. ``vector_field`` should be an
    ``eqx.Module`` (or take its parameters through ``args``) for continuous adjoints such as ``BacksolveAdjoint``.
    Dispatches to ``regularizer.solve`` (:class:`AbstractRegularizer`).
    """
    regularizer = NoRegularization() if regularizer is None else regularizer
    if not isinstance(regularizer, AbstractRegularizer):
        raise TypeError(f"regularizer must be an AbstractRegularizer, got {type(regularizer).__name__}")
    if not isinstance(config, SolverConfig):
        raise TypeError(f"config must be a SolverConfig, got {type(config).__name__}")
    if regularizer.needs_key and key is None:
        raise ValueError(f"regularizer={type(regularizer).__name__} is random: pass key=")
    y0 = jtu.tree_map(jnp.asarray, y0)
    if not jtu.tree_leaves(y0):
        raise ValueError("y0 must contain at least one array")
    return regularizer.solve(vector_field, y0, t0, t1, ts=ts, args=args, config=config, key=key, step=step)


def _sq_norm(tree: PyTree[Array]) -> Scalar:
    return cast(Scalar, sum(jnp.sum(jnp.real(x) ** 2) for x in jtu.tree_leaves(tree)))


class _RNODEField(eqx.Module):
    """``(y, (E_kin, E_jac))' = (f, sign * (||f||^2, ||eps^T df/dy||^2))``, ``sign = sign(t1 - t0)``."""

    field: Callable
    eps: PyTree[Array]
    sign: Array

    def __call__(self, t, state, args):
        y, _ = state
        fy, vjp = jax.vjp(lambda yy: self.field(t, yy, args), y)
        (ej,) = vjp(self.eps)
        acc = jnp.stack([_sq_norm(fy), _sq_norm(ej)])
        return fy, (self.sign * acc).astype(acc.dtype)


class _TayNODEField(eqx.Module):
    """``(y, R)' = (f, sign * ||d^K y/dt^K||^2 / dim)``."""

    field: Callable
    order: int = eqx.field(static=True)
    sign: Array

    def __call__(self, t, state, args):
        y, _ = state
        dk = taylor_derivative(self.field, t, y, args, self.order)
        dim = sum(jnp.size(x) for x in jtu.tree_leaves(y))
        val = _sq_norm(dk) / dim
        return self.field(t, y, args), (self.sign * val[None]).astype(val.dtype)


def _augmented(aug_field, y0, n_extra, t0, t1, ts, args, config):
    """Solve the state ``(y, integrals)``; the integrals are read at the last save time (``t1``, or ``ts[-1]``)."""
    state0 = (y0, jnp.zeros((n_extra,), jnp.result_type(*jtu.tree_leaves(y0), float)))
    sol, _, stats = solve_with_heuristics(
        aug_field, config.solver, t0, t1, state0, args, saveat=_saveat(ts), heuristics=(), **config.solve_kwargs()
    )
    ys, integrals = cast(tuple[PyTree[Array], Array], sol.ys)
    return _final(ys, ts), integrals[-1], stats
