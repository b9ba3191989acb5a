"""jaxsciml.ode: neural differential equations with solver-heuristic regularization.

Heuristic-recording solves (Pal et al., ICML 2021, arXiv 2105.03918): :func:`solve_with_heuristics` runs
``diffrax.diffeqsolve`` with the solver wrapped in :class:`HeuristicSolver`, which accumulates the error-estimate
heuristic ``R_E = sum_k ||e_k||_w |h_k|`` and the stiffness heuristic ``R_S = sum_k lambda_k |h_k|`` over the accepted
steps, and returns them with :class:`SolveStats`.
"""

from ._heuristics import HeuristicSolver, HeuristicState, stiffness_stage_pair
from ._local import local_step_heuristics, solve_with_local_heuristics
from ._solve import Heuristics, SolveStats, solve_with_heuristics

__all__ = [
    "HeuristicSolver",
    "HeuristicState",
    "Heuristics",
    "SolveStats",
    "local_step_heuristics",
    "solve_with_heuristics",
    "solve_with_local_heuristics",
    "stiffness_stage_pair",
]
