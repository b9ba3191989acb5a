"""Ask for the cost: a solver-heuristic regularizer whose weight adapts during training until the model solves at a
stated cost (prediction NFE or steps per solve).

A fixed weight ``lam`` on ``R_E`` is a poor dial: the cost it buys depends on the task, the model and the stage of
training, and on some tasks accuracy falls off a cliff between two nearby weights. :class:`TargetCost` instead takes
the cost ``T`` the user wants and treats training as the constrained problem

.. math::

    \\min_\\theta L(\\theta) \\quad \\text{subject to} \\quad C(\\theta) \\le T,

with ``L`` the task loss and ``C`` the measured cost of a solve (mean over the batch): function evaluations
(``cost="nfe"``), accepted steps (``"accepted_steps"``) or all attempted steps (``"steps"``). ``C`` is piecewise
constant in ``theta`` and has no useful gradient, so the primal step uses the differentiable surrogate of Pal et al.
(2021), the error heuristic ``R_E`` (optionally plus ``stiffness_ratio * R_S``): the primal loss is the Lagrangian
``L + lam * R_E``. The multiplier follows dual ascent on ``log lam`` against the measured log-cost ratio,

.. math::

    \\log\\lambda_{k+1} = \\mathrm{clip}\\big(\\log\\lambda_k + \\eta\\,(\\log C_k - \\log T),\\
        \\log\\lambda_{\\min}, \\log\\lambda_{\\max}\\big),

i.e. ``lam <- lam * (C_k / T)^eta``: the weight grows while the solves cost more than the target and shrinks while
they cost less. Working in ``log lam`` and ``log C`` makes the step scale-free (the same ``eta`` works whatever the
magnitude of ``R_E`` or of the cost), and the clip keeps ``lam`` in ``[min_weight, max_weight]``. At a fixed point
either ``C = T`` (the constraint is active and ``lam`` is the multiplier that holds it) or ``C < T`` with ``lam`` at
``min_weight`` (the unregularized model already solves within the budget: complementary slackness), so the user gets
the most accurate model that solves within ``T``, as far as first-order training finds it. The cost is measured on
the training solves themselves (``SolveStats`` of the loss's forward pass): no extra solve.

Everything is pure-functional, in the style of an ``optax`` transformation: ``state = tc.init()``; in the jitted train
step ``reg = tc.regularizer(state)`` is passed to the model, and ``state = tc.update(state, out.stats)`` after it
(``out.stats`` of a ``vmap`` of solves, ``(B,)``, or a shared-step batch solve, scalars)::

    tc = TargetCost(target=20.0)  # 20 function evaluations per solve
    state = tc.init()

    @eqx.filter_jit
    def train_step(model, opt_state, tc_state, x, y):
        def loss(m):
            out = jax.vmap(lambda xi: m(xi, regularizer=tc.regularizer(tc_state)))(x)
            return task_loss(out.ys, y) + jnp.mean(out.penalty), out.stats

        (l, stats), g = eqx.filter_value_and_grad(loss, has_aux=True)(model)
        updates, opt_state = opt.update(g, opt_state, model)
        return eqx.apply_updates(model, updates), opt_state, tc.update(tc_state, stats)

An unreachable target (below the cost at which the model can still fit the data, e.g. fewer steps than the
tolerances allow for any useful field) makes ``lam`` grow geometrically while the cost stalls, and accuracy suffers
(measured on digits without a safeguard: asking for 0.3x the unregularized NFE ended at ``lam = 1e6`` and 82%
accuracy, vs 97% unregularized). The safeguard ``stall_growth`` (default ``100``) bounds this: the state tracks an
exponential moving average of the cost (``cost_ema``, factor ``ema_decay``); whenever the average has fallen by a
relative ``min_improvement`` since it last did (``best_cost``), the current weight becomes the anchor, and ``lam``
may not rise above ``stall_growth`` times the anchor until the cost falls again (it may always fall).
``state.saturated`` is ``True`` while the last update wanted to raise ``lam`` but was stopped (by ``stall_growth``
or ``max_weight``): the target is out of reach at the weights allowed, so lower the target or accept the cost
reached. ``stall_growth=None`` restores the unguarded rule. The cost of an explicit Runge--Kutta solve is quantised
(Tsit5: ``3 + 6 x steps`` evaluations with the automatic first step), so a target between two step counts is met on
average over the batch.

The NFE of prediction is that of an unregularized solve, which equals the training solve's (the heuristics only add
to the solver state) for global regularization; local regularization adds its local steps to ``num_fevals``, so use
``cost="accepted_steps"`` with ``local=...``. Implicit solvers report ``num_fevals = -1``: use a step count.
"""

from __future__ import annotations

import math
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from ._regularizers import HeuristicRegularization
from ._solve import SolveStats, check_weight

__all__ = ["TargetCost", "TargetCostState"]

_COSTS = {"nfe": "num_fevals", "accepted_steps": "num_accepted", "steps": "num_steps"}


class TargetCostState(eqx.Module):
    """State of :class:`TargetCost` (scalars): ``log_weight`` (``log lam``), ``cost`` (the last measured mean cost
    per solve, ``nan`` before the first update), ``count`` (updates so far), ``cost_ema`` (moving average of the
    cost), ``best_cost`` (the average when it last fell by ``min_improvement``), ``anchor_log_weight`` (``log lam``
    at that update) and ``saturated`` (the last update wanted to raise ``lam`` and was stopped by the
    ``stall_growth`` or ``max_weight`` cap)."""

    log_weight: Float[Array, ""]
    cost: Float[Array, ""]
    count: Int[Array, ""]
    cost_ema: Float[Array, ""]
    best_cost: Float[Array, ""]
    anchor_log_weight: Float[Array, ""]
    saturated: Bool[Array, ""]

    @property
    def weight(self) -> Float[Array, ""]:
        """``lam = exp(log_weight)``."""
        return jnp.exp(self.log_weight)


class TargetCost(eqx.Module):
    """A heuristic regularizer whose weight adapts until solves cost ``target`` (module docstring for the maths).

    **Arguments:**

    - ``target``: the cost per solve to reach, in the unit of ``cost`` (positive);
    - ``cost``: ``"nfe"`` (``SolveStats.num_fevals``, explicit solvers), ``"accepted_steps"`` or ``"steps"``;
    - ``init_weight``: ``lam_0`` (positive);
    - ``learning_rate``: the dual step ``eta`` on ``log lam`` per update (positive; ``0.05``--``0.2`` works for
      hundreds of training steps: a solve at twice the target raises ``lam`` by ``2^eta`` per step);
    - ``min_weight``, ``max_weight``: the clip of ``lam`` (``0 < min_weight <= init_weight <= max_weight``);
    - ``stiffness_ratio``: ``lam_S = stiffness_ratio * lam`` (``0``: error heuristic only; ``> 0`` needs an explicit
      RK solver with a stiffness stage pair);
    - ``local``, ``num_samples``: as :class:`HeuristicRegularization` (local estimates, any adjoint, needs a key);
    - ``stall_growth``: the most ``lam`` may grow (factor ``> 1``) above its value when the cost last fell (module
      docstring); ``None``: no such cap (``max_weight`` only);
    - ``ema_decay``: the moving average's factor in ``[0, 1)`` (``0``: the last cost alone);
    - ``min_improvement``: the relative fall of the average cost below its best that counts as progress (``>= 0``).
    """

    target: float
    cost: Literal["nfe", "accepted_steps", "steps"] = eqx.field(static=True, default="nfe")
    init_weight: float = 1.0
    learning_rate: float = 0.1
    min_weight: float = 1e-6
    max_weight: float = 1e6
    stiffness_ratio: float = 0.0
    local: Literal["unbiased", "biased"] | None = eqx.field(static=True, default=None)
    num_samples: int = eqx.field(static=True, default=1)
    stall_growth: float | None = 100.0
    ema_decay: float = 0.9
    min_improvement: float = 0.01

    def __check_init__(self):
        for name in ("target", "init_weight", "learning_rate", "min_weight", "max_weight"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be a positive finite number, got {name}={v!r}")
        if not self.min_weight <= self.init_weight <= self.max_weight:
            raise ValueError(
                "need min_weight <= init_weight <= max_weight, got "
                f"{self.min_weight!r}, {self.init_weight!r}, {self.max_weight!r}"
            )
        if self.cost not in _COSTS:
            raise ValueError(f"cost must be one of {tuple(_COSTS)}, got cost={self.cost!r}")
        check_weight("stiffness_ratio", self.stiffness_ratio)
        g = self.stall_growth
        if g is not None and (not isinstance(g, (int, float)) or isinstance(g, bool) or not g > 1 or g == math.inf):
            raise ValueError(f"stall_growth must be a finite number > 1 or None, got stall_growth={g!r}")
        for name, ok in (("ema_decay", lambda v: 0 <= v < 1), ("min_improvement", lambda v: 0 <= v < 1)):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not ok(v):
                raise ValueError(f"{name} must be a number in [0, 1), got {name}={v!r}")
        if self.local is not None and self.cost == "nfe":
            raise ValueError(
                "local regularization adds its local steps to num_fevals; with local=... use cost='accepted_steps' "
                "or cost='steps'"
            )
        HeuristicRegularization(1.0, self.stiffness_ratio, local=self.local, num_samples=self.num_samples)

    def init(self) -> TargetCostState:
        """``log lam = log init_weight``, no cost measured yet."""
        log_w = jnp.asarray(math.log(self.init_weight), jnp.float32)
        nan = jnp.asarray(jnp.nan, jnp.float32)
        return TargetCostState(
            log_weight=log_w,
            cost=nan,
            count=jnp.asarray(0, jnp.int32),
            cost_ema=nan,
            best_cost=jnp.asarray(jnp.inf, jnp.float32),
            anchor_log_weight=log_w,
            saturated=jnp.asarray(False),
        )

    def regularizer(self, state: TargetCostState) -> HeuristicRegularization:
        """The :class:`HeuristicRegularization` with the current weight (``error_weight = lam``, ``stiffness_weight
        = stiffness_ratio * lam``) to pass to a model or :func:`regularized_solve`. The weight carries no gradient."""
        if not isinstance(state, TargetCostState):
            raise TypeError(f"state must be a TargetCostState (from TargetCost.init()), got {type(state).__name__}")
        w = jnp.exp(jnp.asarray(state.log_weight))
        w = jax.lax.stop_gradient(w)
        return HeuristicRegularization(
            error_weight=w,
            stiffness_weight=self.stiffness_ratio * w if self.stiffness_ratio else 0.0,
            local=self.local,
            num_samples=self.num_samples,
        )

    def measured_cost(self, stats: SolveStats) -> Float[Array, ""]:
        """The mean cost per solve in ``stats`` (scalars or ``(B,)`` arrays)."""
        if not isinstance(stats, SolveStats):
            raise TypeError(f"stats must be the SolveStats of the training solves, got {type(stats).__name__}")
        value = jnp.asarray(getattr(stats, _COSTS[self.cost]))
        value = eqx.error_if(
            value,
            jnp.any(value < 0),
            "TargetCost(cost='nfe'): the solver reports no function-evaluation count (num_fevals = -1, an implicit "
            "solver); use cost='accepted_steps' or cost='steps'",
        )
        return jnp.mean(value.astype(jnp.float32))

    def update(self, state: TargetCostState, stats: SolveStats) -> TargetCostState:
        """One dual step: ``log lam += learning_rate * (log C - log target)``, clipped to ``[min_weight,
        max_weight]`` and (rises only) to ``stall_growth`` times the weight at which the cost last fell."""
        if not isinstance(state, TargetCostState):
            raise TypeError(f"state must be a TargetCostState (from TargetCost.init()), got {type(state).__name__}")
        c = jnp.maximum(self.measured_cost(stats), 1e-12)
        ema = jnp.where(jnp.isnan(state.cost_ema), c, self.ema_decay * state.cost_ema + (1 - self.ema_decay) * c)
        improved = ema < (1 - self.min_improvement) * state.best_cost
        best = jnp.where(improved, ema, state.best_cost)
        anchor = jnp.where(improved, state.log_weight, state.anchor_log_weight)
        step = self.learning_rate * (jnp.log(c) - math.log(self.target))
        proposed = state.log_weight + step
        upper = jnp.asarray(math.log(self.max_weight), proposed.dtype)
        if self.stall_growth is not None:
            upper = jnp.minimum(upper, jnp.maximum(anchor + math.log(self.stall_growth), state.log_weight))
        log_w = jnp.clip(proposed, math.log(self.min_weight), upper)
        saturated = (step > 0) & (proposed > upper)
        dt = state.log_weight.dtype
        return TargetCostState(
            log_weight=log_w.astype(dt),
            cost=c.astype(state.cost.dtype),
            count=state.count + 1,
            cost_ema=ema.astype(state.cost_ema.dtype),
            best_cost=best.astype(state.best_cost.dtype),
            anchor_log_weight=anchor.astype(dt),
            saturated=saturated,
        )
