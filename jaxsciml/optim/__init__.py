"""jaxsciml.optim: Shampoo-style optimizers as optax transformations.

- :func:`shampoo` / :func:`scale_by_shampoo`: blocked Kronecker-factored preconditioning with grafting, momentum,
  decoupled weight decay, eigh or coupled-Newton roots (batched over blocks, optionally spread over a device mesh),
  4-bit eigenvector state (``quantize_eigenvectors=True``; ``four_bit_mode="eigenbasis"``, ``"roots"`` or
  ``"eigenvalue_tracking"``) and New-Perspective power iterations;
- :func:`soap` / :func:`scale_by_soap`: eigenvalue-corrected Shampoo (Adam in the Kronecker eigenbasis);
- :func:`spectral` / :func:`scale_by_spectral`: memoryless Shampoo (``beta2 = 0``: the polar factor of the momentum,
  Muon's update, by Newton-Schulz) with Adam-norm grafting;
- :func:`state_memory_bytes`, :func:`memory_breakdown`, :func:`preconditioner_memory_bytes`: optimizer-state memory;
- :func:`health`: summed ``root_fallbacks`` / ``nonfinite_statistics`` counters of every Shampoo/SOAP state in any
  optax state tree.
"""

from ._blocking import BlockPlan, make_plan
from ._health import health
from ._memory import memory_breakdown, preconditioner_memory_bytes, state_memory_bytes
from ._quant import QuantizedMatrix, bjorck, dequantize, linear_square_codebook, quantize
from ._shampoo import STATIC_ARGS, ShampooState, scale_by_shampoo, shampoo
from ._soap import SoapState, scale_by_soap, soap
from ._spectral import SpectralState, newton_schulz, scale_by_spectral, spectral

__all__ = [
    "STATIC_ARGS",
    "BlockPlan",
    "QuantizedMatrix",
    "ShampooState",
    "SoapState",
    "SpectralState",
    "bjorck",
    "dequantize",
    "health",
    "linear_square_codebook",
    "make_plan",
    "memory_breakdown",
    "newton_schulz",
    "preconditioner_memory_bytes",
    "quantize",
    "scale_by_shampoo",
    "scale_by_soap",
    "scale_by_spectral",
    "shampoo",
    "soap",
    "spectral",
    "state_memory_bytes",
]
