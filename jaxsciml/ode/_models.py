"""Neural differential equation models returning predictions plus solve statistics and regularization penalties.

Every model's ``__call__`` returns an :class:`ODEOutput` for one example (``vmap`` over a batch), so a training loss
reads ``task(out.ys, target) + out.penalty`` (or with explicit weights, ``task + lam_E * out.error + lam_S *
out.stiffness`` using ``HeuristicRegularization(error_weight=1, stiffness_weight=1)`` for the raw values). States may
be any PyTree the vector field accepts. ``step=`` (the training step) evaluates schedule weights.

**Batching.** ``NeuralODE.batched`` / ``ODEClassifier.batched`` offer both ways of solving a minibatch:

- ``shared_steps=False``: ``vmap`` of per-example adaptive solves. Each example takes its own step sequence (its own
  accuracy control and heuristics), but a vmapped ``while_loop`` runs until the slowest member finishes, so the
  batch costs ``max_b(steps_b)`` iterations of work on every member (finished ones are masked, not skipped);
- ``shared_steps=True``: the batch is one ODE system ``Y' = (f(t, y_1), ..., f(t, y_B))`` with one step sequence
  (as in the papers' Julia implementations). The controller's RMS norm runs over the whole batch, so the step count
  follows the batch's RMS error rather than the worst member's, each step is a batched matmul, and ``R_E``/``R_S``
  are those of the joint system (one scalar per batch). Errors of individual examples are controlled only on average.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, cast

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree

from ._regularizers import (
    YT,
    AbstractRegularizer,
    HeuristicRegularization,
    NoRegularization,
    ODEOutput,
    SolverConfig,
    regularized_solve,
)
from ._solve import check_tolerances, solve_with_heuristics

__all__ = ["LatentODE", "MLPVectorField", "NeuralODE", "NeuralSDE", "ODEClassifier"]


class MLPVectorField(eqx.Module):
    """``f(t, y) = MLP([y, t])`` (or ``MLP(y)`` if not ``time_dependent``), ``y`` of shape ``(size,)``, or any PyTree
    with ``size`` elements in all (flattened for the MLP; the output has ``y``'s structure)."""

    mlp: eqx.nn.MLP
    time_dependent: bool = eqx.field(static=True)

    def __init__(
        self,
        size: int,
        width: int,
        depth: int,
        *,
        key: PRNGKeyArray,
        time_dependent: bool = True,
        activation: Callable = jnp.tanh,
        final_activation: Callable = lambda x: x,
    ):
        self.time_dependent = time_dependent
        self.mlp = eqx.nn.MLP(
            size + int(time_dependent),
            size,
            width,
            depth,
            activation=activation,
            final_activation=final_activation,
            key=key,
        )

    def __call__(self, t, y, args=None):
        flat, unravel = ravel_pytree(y)
        if self.time_dependent:
            flat = jnp.concatenate([flat, jnp.asarray(t, flat.dtype)[None]])
        return unravel(self.mlp(flat))


class _BatchedField(eqx.Module):
    """``F(t, Y) = vmap(f)(t, Y)``: a batch (leading axis of every leaf) as one ODE system."""

    field: Callable

    def __call__(self, t, y, args):
        return jax.vmap(self.field, in_axes=(None, 0, None))(t, y, args)


def _batch_size(tree: PyTree[Array]) -> int:
    sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in jtu.tree_leaves(tree)}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"a batch needs one leading batch axis on every leaf, got leading sizes {sizes}")
    return cast(int, sizes.pop())


class NeuralODE(eqx.Module):
    """``y(t)`` solving ``y' = field(t, y)`` from ``t0`` to ``t1`` (``t1 < t0`` allowed) with the settings in
    ``config``.

    ``__call__(y0, ts=None, *, regularizer=None, key=None, step=None) -> ODEOutput`` for one initial condition ``y0``
    (an array or any PyTree the field accepts): ``ys`` is ``y(t1)`` or ``y(ts)`` (leading axis ``len(ts)``). ``vmap``
    over ``y0`` (and ``key``) for a batch, or :meth:`batched` for either batching mode.
    """

    field: Callable[..., PyTree]
    t0: float = eqx.field(static=True)
    t1: float = eqx.field(static=True)
    config: SolverConfig

    def __init__(
        self, field: Callable[..., PyTree], t0: float = 0.0, t1: float = 1.0, config: SolverConfig | None = None
    ):
        if float(t0) == float(t1):
            raise ValueError(f"t1 must differ from t0, got t0 = t1 = {t0}")
        self.field = field
        self.t0 = float(t0)
        self.t1 = float(t1)
        self.config = SolverConfig() if config is None else config

    def __call__(
        self,
        y0: YT,
        ts: Float[Array, " m"] | None = None,
        *,
        regularizer: AbstractRegularizer | None = None,
        key: PRNGKeyArray | None = None,
        step: Int[Array, ""] | int | None = None,
    ) -> ODEOutput[YT]:
        return regularized_solve(
            self.field, y0, self.t0, self.t1, ts=ts, config=self.config, regularizer=regularizer, key=key, step=step
        )

    def batched(
        self,
        y0s: YT,
        ts: Float[Array, " m"] | None = None,
        *,
        shared_steps: bool = True,
        regularizer: AbstractRegularizer | None = None,
        key: PRNGKeyArray | None = None,
        step: Int[Array, ""] | int | None = None,
    ) -> ODEOutput[YT]:
        """Solve a batch ``y0s`` (leading axis ``B`` on every leaf): one system with one step sequence
        (``shared_steps=True``) or ``vmap`` of per-example solves (module docstring for the trade-off).

        ``ys`` has the batch axis first (``(B, ...)`` or ``(B, len(ts), ...)``). ``penalty``, ``error``,
        ``stiffness`` are scalars: the joint system's (shared) or the batch mean (vmap). ``stats`` are scalars
        (shared) or ``(B,)`` (vmap); ``extra`` values likewise.
        """
        b = _batch_size(y0s)
        if not shared_steps:
            keys = None if key is None else jax.random.split(key, b)
            out = jax.vmap(lambda y, k: self(y, ts, regularizer=regularizer, key=k, step=step))(y0s, keys)
            return eqx.tree_at(
                lambda o: (o.penalty, o.error, o.stiffness),
                out,
                (jnp.mean(out.penalty), jnp.mean(out.error), jnp.mean(out.stiffness)),
            )
        out = regularized_solve(
            _BatchedField(self.field),
            y0s,
            self.t0,
            self.t1,
            ts=ts,
            config=self.config,
            regularizer=regularizer,
            key=key,
            step=step,
        )
        if ts is not None:
            out = eqx.tree_at(lambda o: o.ys, out, jtu.tree_map(lambda y: jnp.swapaxes(y, 0, 1), out.ys))
        return out


class ODEClassifier(eqx.Module):
    """``logits = head(ODE(encoder(x))(t1))``: an ODE block between an encoder and a head (Chen et al. 2018)."""

    encoder: Callable[..., PyTree]
    ode: NeuralODE
    head: Callable[..., PyTree]

    def __call__(
        self,
        x: Array,
        *,
        regularizer: AbstractRegularizer | None = None,
        key: PRNGKeyArray | None = None,
        step: Int[Array, ""] | int | None = None,
    ) -> ODEOutput[Array]:
        h0 = self.encoder(x)
        out = self.ode(h0, regularizer=regularizer, key=key, step=step)
        return eqx.tree_at(lambda o: o.ys, out, self.head(out.ys))

    def batched(
        self,
        xs: PyTree[Array],
        *,
        shared_steps: bool = True,
        regularizer: AbstractRegularizer | None = None,
        key: PRNGKeyArray | None = None,
        step: Int[Array, ""] | int | None = None,
    ) -> ODEOutput[Array]:
        """Logits for a batch ``xs`` (leading axis ``B``): the ODE block solved with one shared step sequence or
        per example (see :meth:`NeuralODE.batched`)."""
        h0s = jax.vmap(self.encoder)(xs)
        out = self.ode.batched(h0s, shared_steps=shared_steps, regularizer=regularizer, key=key, step=step)
        return eqx.tree_at(lambda o: o.ys, out, jax.vmap(self.head)(out.ys))


class LatentODE(eqx.Module):
    """Latent ODE for irregularly sampled series (Rubanova et al. 2019, deterministic encoder).

    A GRU reads the observations backwards in time, with inputs ``[x_i * m_i, m_i, t_{i+1} - t_i]`` (``m`` the
    observation mask), a linear map gives ``z(t0)``, the latent ODE is solved at the (sorted) times ``ts`` and
    ``decoder(z(t_i))`` predicts ``x_i``. ``__call__(ts, xs, mask) -> ODEOutput`` with ``ys`` of shape
    ``(len(ts), data_size)`` (``ts`` in ``[t0, t1]``; the encoder sees only the observations with ``mask = 1``).
    """

    cell: eqx.nn.GRUCell
    to_latent: eqx.nn.Linear
    ode: NeuralODE
    decoder: eqx.nn.MLP
    data_size: int = eqx.field(static=True)

    def __init__(
        self,
        data_size: int,
        latent_size: int,
        hidden_size: int,
        width: int,
        *,
        key: PRNGKeyArray,
        t0: float = 0.0,
        t1: float = 1.0,
        config: SolverConfig | None = None,
    ):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        self.data_size = data_size
        self.cell = eqx.nn.GRUCell(data_size + 2, hidden_size, key=k1)
        self.to_latent = eqx.nn.Linear(hidden_size, latent_size, key=k2)
        field = MLPVectorField(latent_size, width, 2, key=k3, time_dependent=False)
        self.ode = NeuralODE(field, t0, t1, config)
        self.decoder = eqx.nn.MLP(latent_size, data_size, width, 1, activation=jnp.tanh, key=k4)

    def encode(self, ts: Float[Array, " m"], xs: Float[Array, "m d"], mask: Float[Array, " m"]) -> Array:
        dts = jnp.diff(ts, append=ts[-1:])
        inputs = jnp.concatenate([xs * mask[:, None], mask[:, None], dts[:, None]], axis=1)

        def step(h, inp):
            x_in, m = inp
            h_new = self.cell(x_in, h)
            return jnp.where(m > 0, h_new, h), None

        h0 = jnp.zeros((self.cell.hidden_size,), xs.dtype)
        h, _ = jax.lax.scan(step, h0, (inputs[::-1], mask[::-1]))
        return self.to_latent(h)

    def __call__(
        self,
        ts: Float[Array, " m"],
        xs: Float[Array, "m d"],
        mask: Float[Array, " m"],
        *,
        regularizer: AbstractRegularizer | None = None,
        key: PRNGKeyArray | None = None,
        step: Int[Array, ""] | int | None = None,
    ) -> ODEOutput[Array]:
        if xs.ndim != 2 or xs.shape[1] != self.data_size or xs.shape[0] != ts.shape[0] or mask.shape != ts.shape:
            raise ValueError(
                f"expected ts (m,), xs (m, {self.data_size}), mask (m,); got {ts.shape}, {xs.shape}, {mask.shape}"
            )
        z0 = self.encode(ts, xs, mask)
        out = self.ode(z0, ts, regularizer=regularizer, key=key, step=step)
        return eqx.tree_at(lambda o: o.ys, out, jax.vmap(self.decoder)(out.ys))


class NeuralSDE(eqx.Module):
    """Stratonovich neural SDE ``dy = drift(t, y) dt + diag(diffusion(t, y)) o dW`` solved adaptively.

    Noise: a ``VirtualBrownianTree`` from the ``key`` of each call (so a rejected step re-uses the same Brownian
    path). Solver: an adaptive SDE solver with an embedded error estimate (default ``diffrax.Heun``, Stratonovich)
    and a PID controller. Error-estimate regularization: ``HeuristicRegularization(error_weight=...)`` (global,
    discrete adjoint); the stiffness heuristic is not defined for SDE solves. ``ys`` is ``y(t1)`` or ``y(ts)``.
    ``y0`` may be any PyTree (flattened to a vector for the solve; ``drift``/``diffusion`` take and return ``y0``'s
    structure).
    """

    drift: Callable[..., PyTree]
    diffusion: Callable[..., PyTree]
    t0: float = eqx.field(static=True)
    t1: float = eqx.field(static=True)
    solver: dfx.AbstractSolver
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    dtmin: float = eqx.field(static=True)
    bm_tol: float = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)

    def __init__(
        self,
        drift: Callable[..., PyTree],
        diffusion: Callable[..., PyTree],
        t0: float = 0.0,
        t1: float = 1.0,
        *,
        solver: dfx.AbstractSolver | None = None,
        rtol: float = 1e-2,
        atol: float = 1e-3,
        dtmin: float = 1e-3,
        bm_tol: float = 1e-4,
        max_steps: int = 4096,
    ):
        check_tolerances(rtol, atol)
        if float(t0) == float(t1):
            raise ValueError(f"t1 must differ from t0, got t0 = t1 = {t0}")
        self.drift, self.diffusion = drift, diffusion
        self.t0, self.t1 = float(t0), float(t1)
        self.solver = dfx.Heun() if solver is None else solver
        if not isinstance(self.solver, dfx.AbstractAdaptiveSolver):
            raise TypeError(f"unsupported solver={type(self.solver).__name__}: no embedded error estimate")
        self.rtol, self.atol, self.dtmin, self.bm_tol, self.max_steps = rtol, atol, dtmin, bm_tol, max_steps

    def __call__(
        self,
        y0: Float[Array, " n"],
        ts: Float[Array, " m"] | None = None,
        *,
        key: PRNGKeyArray,
        regularizer: AbstractRegularizer | None = None,
        on_max_steps: Literal["raise", "flag"] = "raise",
        step: Int[Array, ""] | int | None = None,
    ) -> ODEOutput[Array]:
        regularizer = NoRegularization() if regularizer is None else regularizer
        if isinstance(regularizer, HeuristicRegularization):
            if regularizer.local is not None or "stiffness" in regularizer.heuristics:
                raise ValueError("NeuralSDE supports global error-estimate regularization only (stiffness_weight=0)")
            heur = regularizer.heuristics
            lam_e = regularizer.weights(step)[0]
        elif isinstance(regularizer, NoRegularization):
            heur, lam_e = (), 0.0
        else:
            raise ValueError(f"NeuralSDE does not support regularizer={type(regularizer).__name__}")
        flat0, unravel = ravel_pytree(y0)
        levy = dfx.SpaceTimeLevyArea if isinstance(self.solver, dfx.SPaRK) else dfx.BrownianIncrement
        bm = dfx.VirtualBrownianTree(self.t0, self.t1, tol=self.bm_tol, shape=flat0.shape, key=key, levy_area=levy)
        drift, diffusion = _Flat(self.drift, unravel), _Flat(self.diffusion, unravel)
        terms: dfx.MultiTerm[tuple[dfx.AbstractTerm, ...]]
        terms = dfx.MultiTerm(dfx.ODETerm(drift), dfx.ControlTerm(_Diagonal(diffusion), bm))
        saveat = dfx.SaveAt(ts=ts) if ts is not None else dfx.SaveAt(t1=True)
        sol, h, stats = solve_with_heuristics(
            terms,
            self.solver,
            self.t0,
            self.t1,
            flat0,
            dt0=0.05 * (self.t1 - self.t0),
            stepsize_controller=dfx.PIDController(rtol=self.rtol, atol=self.atol, dtmin=self.dtmin),
            saveat=saveat,
            max_steps=self.max_steps,
            on_max_steps=on_max_steps,
            heuristics=heur,
            rtol=self.rtol,
            atol=self.atol,
        )
        ys = jax.vmap(unravel)(cast(Array, sol.ys))
        ys = ys if ts is not None else jtu.tree_map(lambda y: y[-1], ys)
        penalty = lam_e * h.error if heur else jnp.zeros((), flat0.dtype)
        return ODEOutput(ys, penalty, h.error, h.stiffness, stats)


class _Flat(eqx.Module):
    """A field on ``y0``'s PyTree structure as a field on its flattened vector."""

    fn: Callable
    unravel: Callable

    def __call__(self, t, y, args):
        return ravel_pytree(self.fn(t, self.unravel(y), args))[0]


class _Diagonal(eqx.Module):
    fn: Callable[..., Array]

    def __call__(self, t, y, args):
        return lx.DiagonalLinearOperator(self.fn(t, y, args))
