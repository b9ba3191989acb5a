"""Neural differential equation models returning predictions plus solve statistics and regularization penalties.

Every model's ``__call__`` returns an :class:`ODEOutput` for one example (``vmap`` over a batch), so a training loss
reads ``task(out.ys, target) + out.penalty`` (or with explicit weights, ``task + lam_E * out.error + lam_S *
out.stiffness`` using ``HeuristicRegularization(error_weight=1, stiffness_weight=1)`` for the raw values).
"""

from __future__ import annotations

from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Float, PRNGKeyArray

from ._regularizers import (
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
    """``f(t, y) = MLP([y, t])`` (or ``MLP(y)`` if not ``time_dependent``), ``y`` of shape ``(size,)``."""

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
        if self.time_dependent:
            y = jnp.concatenate([y, jnp.asarray(t, y.dtype)[None]])
        return self.mlp(y)


class NeuralODE(eqx.Module):
    """``y(t)`` solving ``y' = field(t, y)`` from ``t0`` to ``t1`` with the solver settings in ``config``.

    ``__call__(y0, ts=None, *, regularizer=None, key=None) -> ODEOutput`` for one initial condition ``y0`` of shape
    ``(n,)``: ``ys`` is ``y(t1)`` (``(n,)``) or ``y(ts)`` (``(len(ts), n)``). ``vmap`` over ``y0`` (and ``key``) for
    a batch.
    """

    field: eqx.Module
    t0: float = eqx.field(static=True)
    t1: float = eqx.field(static=True)
    config: SolverConfig

    def __init__(self, field: eqx.Module, t0: float = 0.0, t1: float = 1.0, config: SolverConfig | None = None):
        if float(t0) == float(t1):
            raise ValueError(f"t1 must differ from t0, got t0 = t1 = {t0}")
        self.field = field
        self.t0 = float(t0)
        self.t1 = float(t1)
        self.config = SolverConfig() if config is None else config

    def __call__(
        self,
        y0: Float[Array, " n"],
        ts: Float[Array, " m"] | None = None,
        *,
        regularizer: AbstractRegularizer | None = None,
        key: PRNGKeyArray | None = None,
    ) -> ODEOutput:
        return regularized_solve(
            self.field, y0, self.t0, self.t1, ts=ts, config=self.config, regularizer=regularizer, key=key
        )


class ODEClassifier(eqx.Module):
    """``logits = head(ODE(encoder(x))(t1))``: an ODE block between an encoder and a head (Chen et al. 2018)."""

    encoder: eqx.Module
    ode: NeuralODE
    head: eqx.Module

    def __call__(
        self, x: Array, *, regularizer: AbstractRegularizer | None = None, key: PRNGKeyArray | None = None
    ) -> ODEOutput:
        h0 = self.encoder(x)
        out = self.ode(h0, regularizer=regularizer, key=key)
        return eqx.tree_at(lambda o: o.ys, out, self.head(out.ys))


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
    ) -> ODEOutput:
        if xs.ndim != 2 or xs.shape[1] != self.data_size or xs.shape[0] != ts.shape[0] or mask.shape != ts.shape:
            raise ValueError(
                f"expected ts (m,), xs (m, {self.data_size}), mask (m,); got {ts.shape}, {xs.shape}, {mask.shape}"
            )
        z0 = self.encode(ts, xs, mask)
        out = self.ode(z0, ts, regularizer=regularizer, key=key)
        return eqx.tree_at(lambda o: o.ys, out, jax.vmap(self.decoder)(out.ys))


class NeuralSDE(eqx.Module):
    """Stratonovich neural SDE ``dy = drift(t, y) dt + diag(diffusion(t, y)) o dW`` solved adaptively.

    Noise: a ``VirtualBrownianTree`` from the ``key`` of each call (so a rejected step re-uses the same Brownian
    path). Solver: an adaptive SDE solver with an embedded error estimate (default ``diffrax.Heun``, Stratonovich)
    and a PID controller. Error-estimate regularization: ``HeuristicRegularization(error_weight=...)`` (global,
    discrete adjoint); the stiffness heuristic is not defined for SDE solves. ``ys`` is ``y(t1)`` or ``y(ts)``.
    """

    drift: eqx.Module
    diffusion: eqx.Module
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
        drift: eqx.Module,
        diffusion: eqx.Module,
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
        on_max_steps: str = "raise",
    ) -> ODEOutput:
        regularizer = NoRegularization() if regularizer is None else regularizer
        if isinstance(regularizer, HeuristicRegularization):
            if regularizer.local is not None or "stiffness" in regularizer.heuristics:
                raise ValueError("NeuralSDE supports global error-estimate regularization only (stiffness_weight=0)")
            heur = regularizer.heuristics
        elif isinstance(regularizer, NoRegularization):
            heur = ()
        else:
            raise ValueError(f"NeuralSDE does not support regularizer={type(regularizer).__name__}")
        levy = dfx.SpaceTimeLevyArea if isinstance(self.solver, dfx.SPaRK) else dfx.BrownianIncrement
        bm = dfx.VirtualBrownianTree(self.t0, self.t1, tol=self.bm_tol, shape=y0.shape, key=key, levy_area=levy)
        terms = dfx.MultiTerm(dfx.ODETerm(self.drift), dfx.ControlTerm(_Diagonal(self.diffusion), bm))
        saveat = dfx.SaveAt(ts=ts) if ts is not None else dfx.SaveAt(t1=True)
        sol, h, stats = solve_with_heuristics(
            terms,
            self.solver,
            self.t0,
            self.t1,
            y0,
            dt0=0.05 * (self.t1 - self.t0),
            stepsize_controller=dfx.PIDController(rtol=self.rtol, atol=self.atol, dtmin=self.dtmin),
            saveat=saveat,
            max_steps=self.max_steps,
            on_max_steps=on_max_steps,
            heuristics=heur,
            rtol=self.rtol,
            atol=self.atol,
        )
        ys = sol.ys if ts is not None else sol.ys[-1]
        penalty = regularizer.error_weight * h.error if heur else jnp.zeros((), y0.dtype)
        return ODEOutput(ys, penalty, h.error, h.stiffness, stats)


class _Diagonal(eqx.Module):
    fn: eqx.Module

    def __call__(self, t, y, args):
        return lx.DiagonalLinearOperator(self.fn(t, y, args))
