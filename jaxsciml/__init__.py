"""jaxsciml: a JAX scientific-ML toolkit.

Three pillars that compose through ``jit``, ``vmap``, ``pmap`` and ``jax.sharding``:

- :mod:`jaxsciml.ode` -- neural differential equations with solver-heuristic regularization;
- :mod:`jaxsciml.pde` -- spectral-loss PDE solvers (Neural Spectral Methods);
- :mod:`jaxsciml.optim` -- Shampoo-style optimizers as optax transformations;

plus :mod:`jaxsciml.train`, the training utilities (fit loop, orbax checkpoints, NaN guard, data parallelism).
"""

from . import ode, optim, pde, train
from ._version import __version__

__all__ = ["__version__", "ode", "optim", "pde", "train"]
