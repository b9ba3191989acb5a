"""jaxsciml.pde: spectral bases, spectral residuals and losses, PDE problems with reference solvers, and Neural
Spectral Methods (Du, Chalapathi, Krishnapriyan, ICLR 2024) with an FNO + PINN-loss baseline."""

from ._basis import AbstractBasis, Chebyshev, Fourier, dealias_size
from ._models import FNO, NSM, FourierLayer, SpectralLayer
from ._navier_stokes import NavierStokes2D, fno_forcing, solve_navier_stokes
from ._poisson import PoissonDirichlet, PoissonPeriodic, chebyshev_diff_matrix, solve_poisson_dirichlet
from ._problem import AbstractProblem
from ._random import gaussian_random_field, grf_spectrum
from ._reaction_diffusion import ReactionDiffusion, etdrk4_coefficients, solve_reaction_diffusion
from ._residual import derivative, laplacian, pointwise, product, relative_l2, spectral_loss, squared_norm
from ._tensor import TensorBasis, as_tensor_basis
from ._training import (
    default_optimizer,
    fno_loss,
    fno_predict,
    nsm_loss,
    nsm_predict,
    relative_error,
    train_operator,
)

__all__ = [
    "solve_navier_stokes",
    "fno_forcing",
    "NavierStokes2D",
    "solve_reaction_diffusion",
    "etdrk4_coefficients",
    "ReactionDiffusion",
    "train_operator",
    "relative_error",
    "nsm_predict",
    "nsm_loss",
    "fno_predict",
    "fno_loss",
    "default_optimizer",
    "AbstractBasis",
    "AbstractProblem",
    "Chebyshev",
    "FNO",
    "Fourier",
    "FourierLayer",
    "NSM",
    "PoissonDirichlet",
    "PoissonPeriodic",
    "SpectralLayer",
    "TensorBasis",
    "as_tensor_basis",
    "chebyshev_diff_matrix",
    "dealias_size",
    "derivative",
    "gaussian_random_field",
    "grf_spectrum",
    "laplacian",
    "pointwise",
    "product",
    "relative_l2",
    "solve_poisson_dirichlet",
    "spectral_loss",
    "squared_norm",
]
