"""jaxsciml.ode: neural differential equations with solver-heuristic regularization.

- States are any PyTree; ``t1 < t0`` integrates backward (every penalty then equals that of the mirrored
  forward problem); ``dt0=None`` picks the first step by Hairer's estimate (:func:`initial_step_size`).
- Heuristic-recording solves (Pal et al., ICML 2021, arXiv 2105.03918): :func:`solve_with_heuristics` runs
  ``diffrax.diffeqsolve`` with the solver wrapped in :class:`HeuristicSolver`, which accumulates the error-estimate
  heuristic ``R_E = sum_k ||e_k||_w |h_k|`` and the stiffness heuristic ``R_S = sum_k lambda_k |h_k|`` over the
  accepted steps, and returns them with :class:`SolveStats`.
- Local regularization (Pal et al., ICML 2023, arXiv 2303.02262): :func:`solve_with_local_heuristics` estimates them
  from one step at randomly sampled time points, with any adjoint.
- Regularizers in one API (:func:`regularized_solve`, :class:`ODEOutput`): subclasses of
  :class:`AbstractRegularizer` implementing ``solve``: :class:`NoRegularization`, :class:`HeuristicRegularization`
  (weights may be optax schedules), and the baselines :class:`RNODE`, :class:`TayNODE`, :class:`STEER`.
- Ask for the cost: :class:`TargetCost` takes a target prediction NFE (or steps) per solve and adapts the weight of
  the error heuristic during training by dual ascent on its logarithm (pure-functional state, optax-style).
- Models: :class:`NeuralODE`, :class:`ODEClassifier`, :class:`LatentODE`, :class:`NeuralSDE`,
  :class:`MLPVectorField`; ``NeuralODE.batched``/``ODEClassifier.batched`` solve a minibatch with one shared step
  sequence or per example (``vmap``).
"""

from ._heuristics import HeuristicSolver, HeuristicState, stiffness_stage_pair
from ._local import local_step_heuristics, solve_with_local_heuristics
from ._models import LatentODE, MLPVectorField, NeuralODE, NeuralSDE, ODEClassifier
from ._regularizers import (
    RNODE,
    STEER,
    AbstractRegularizer,
    HeuristicRegularization,
    NoRegularization,
    ODEOutput,
    SolverConfig,
    TayNODE,
    regularized_solve,
    taylor_derivative,
)
from ._solve import Heuristics, SolveStats, initial_step_size, solve_with_heuristics
from ._target import TargetCost, TargetCostState

__all__ = [
    "AbstractRegularizer",
    "HeuristicRegularization",
    "HeuristicSolver",
    "HeuristicState",
    "Heuristics",
    "LatentODE",
    "MLPVectorField",
    "NeuralODE",
    "NeuralSDE",
    "NoRegularization",
    "ODEClassifier",
    "ODEOutput",
    "RNODE",
    "STEER",
    "SolveStats",
    "SolverConfig",
    "TargetCost",
    "TargetCostState",
    "TayNODE",
    "initial_step_size",
    "local_step_heuristics",
    "regularized_solve",
    "solve_with_heuristics",
    "solve_with_local_heuristics",
    "stiffness_stage_pair",
    "taylor_derivative",
]
