"""jaxsciml.pde: spectral bases, spectral residuals and losses, PDE problems with reference solvers, and Neural
Spectral Methods (Du, Chalapathi, Krishnapriyan, ICLR 2024) with an FNO + PINN-loss baseline.

- Bases: :class:`Fourier` (periodic, real layout ``[a_0, a_1, b_1, ...]``), :class:`Chebyshev` (Gauss--Lobatto, DCT
  via FFT, tau boundary conditions) and :class:`TensorBasis` (1-D to 3-D products); transforms, exact derivatives,
  integrals, evaluation anywhere, 3/2-rule dealiased products.
- Residual vocabulary: :func:`derivative`, :func:`laplacian`, :func:`product`, :func:`pointwise`; loss
  :func:`spectral_loss` = exact ``int R^2 dx`` (Parseval on Fourier axes, the exact dx Gram matrix on Chebyshev axes);
  opt-in :func:`causal_loss` (causal weighting along a time axis; ``nsm_loss(..., causal_eps=...)``).
- Problems (:class:`AbstractProblem`): :class:`PoissonPeriodic`, :class:`PoissonDirichlet`, :class:`ReactionDiffusion`,
  :class:`NavierStokes2D`, :class:`NavierStokesForced2D`, each with the NSM paper's parameter distribution by default
  (:func:`periodic_kernel_spectrum`) and a JAX reference solver.
- A new PDE without subclassing: :class:`Problem` (residual + sampler + constraints :class:`InitialValue`,
  :class:`Dirichlet`, :class:`Neumann`, :class:`PeriodicGauge`; optional reference).
- Models: :class:`NSM` (coefficient space) and :class:`FNO` (grid), trained by :func:`train_operator` with
  :func:`nsm_loss` (spectral) or :func:`fno_loss` (finite-difference PINN).
- The NSM paper's other baselines: :class:`SNO` (coefficients in and out, activations on coefficients, dense
  mode-mixing kernel; :func:`nsm_loss`), :class:`T1` ("Transform Once": every layer in the frequency domain;
  :func:`fno_loss`) and :class:`CNO` (an FNO with the Chebyshev transform on non-periodic axes; :func:`fno_loss`).

Example (periodic Poisson, ``-Laplace(u) = f``)::

    prob = PoissonPeriodic(n=15)
    model = NSM(prob.basis, 1, 1, width=32, depth=4, activation=jax.nn.gelu, key=jax.random.key(0))
    model, record = train_operator(model, lambda m, f: nsm_loss(m, prob, f), lambda k: prob.sample(k, 16), 1000, key)
    u = nsm_predict(model, prob, f)                       # solution coefficients
    values = prob.solution_values(u, (256, 256))           # any resolution
"""

from ._basis import AbstractBasis, Chebyshev, Fourier, dealias_size
from ._causal import causal_loss
from ._cno import CNO, ChebyshevFourierLayer
from ._custom import (
    AbstractConstraint,
    Dirichlet,
    InitialValue,
    Neumann,
    PeriodicGauge,
    Problem,
    initial_value,
    time_coordinate,
)
from ._models import FNO, NSM, OUTPUT_SCALE, FourierLayer, SpectralLayer
from ._navier_stokes import NavierStokes2D, NavierStokesForced2D, fno_forcing, solve_navier_stokes
from ._poisson import PoissonDirichlet, PoissonPeriodic, chebyshev_diff_matrix, solve_poisson_dirichlet
from ._problem import AbstractProblem
from ._random import gaussian_random_field, grf_spectrum, periodic_kernel_spectrum
from ._reaction_diffusion import ReactionDiffusion, etdrk4_coefficients, solve_reaction_diffusion
from ._residual import (
    derivative,
    laplacian,
    pointwise,
    product,
    relative_l2,
    sobolev_weights,
    spectral_loss,
    squared_norm,
)
from ._sno import SNO, SNO_OUTPUT_SCALE
from ._t1 import T1, T1Layer
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
    "CNO",
    "ChebyshevFourierLayer",
    "SNO",
    "SNO_OUTPUT_SCALE",
    "T1",
    "T1Layer",
    "OUTPUT_SCALE",
    "time_coordinate",
    "initial_value",
    "Problem",
    "PeriodicGauge",
    "Neumann",
    "InitialValue",
    "Dirichlet",
    "AbstractConstraint",
    "AbstractBasis",
    "AbstractProblem",
    "as_tensor_basis",
    "Chebyshev",
    "chebyshev_diff_matrix",
    "dealias_size",
    "default_optimizer",
    "derivative",
    "etdrk4_coefficients",
    "FNO",
    "fno_forcing",
    "fno_loss",
    "fno_predict",
    "Fourier",
    "FourierLayer",
    "gaussian_random_field",
    "grf_spectrum",
    "laplacian",
    "NavierStokes2D",
    "NavierStokesForced2D",
    "NSM",
    "nsm_loss",
    "nsm_predict",
    "periodic_kernel_spectrum",
    "pointwise",
    "PoissonDirichlet",
    "PoissonPeriodic",
    "product",
    "ReactionDiffusion",
    "relative_error",
    "relative_l2",
    "solve_navier_stokes",
    "solve_poisson_dirichlet",
    "solve_reaction_diffusion",
    "sobolev_weights",
    "spectral_loss",
    "causal_loss",
    "SpectralLayer",
    "squared_norm",
    "TensorBasis",
    "train_operator",
]
