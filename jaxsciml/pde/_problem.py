"""The problem interface shared by the built-in PDEs, the NSM/FNO models and the benchmark."""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ._basis import _float, check_finite
from ._residual import spectral_loss
from ._tensor import TensorBasis

__all__ = ["AbstractProblem", "fd_periodic_second"]


class AbstractProblem(eqx.Module):
    """A parametric PDE ``F(u; phi) = 0``: parameter sampler, spectral residual, grid residual and reference solver.

    Conventions (single sample; ``jax.vmap`` for batches):

    - ``params`` is the parameter's coefficient array (:meth:`sample` returns a batch of them);
    - the spectral side works on :attr:`basis` coefficients: :meth:`model_input` gives the NSM input channels
      ``(C, *basis.shape)``, :meth:`constrain` maps the network output ``(1, *basis.shape)`` to a solution satisfying
      the built-in constraints (mollifiers), :meth:`residual` gives residual coefficients, :meth:`loss` the loss;
    - the grid side (FNO + PINN baseline) works on values on :meth:`TensorBasis.uniform_grid` of a given ``shape``:
      :meth:`grid_input`, :meth:`grid_constrain`, :meth:`grid_residual` (finite differences), :meth:`grid_loss`;
    - :meth:`reference` gives the reference solution's values on the uniform grid of ``shape``.
    """

    basis: eqx.AbstractVar[TensorBasis]

    @property
    def in_channels(self) -> int:
        return 1

    @abc.abstractmethod
    def sample(self, key: Array, batch: int) -> Array:
        """``batch`` parameter coefficient arrays."""

    @abc.abstractmethod
    def model_input(self, params: Array) -> Array:
        """NSM input coefficients ``(in_channels, *basis.shape)``."""

    @abc.abstractmethod
    def constrain(self, raw: Array, params: Array) -> Array:
        """Network output ``(1, *basis.shape)`` -> solution coefficients ``basis.shape``."""

    @abc.abstractmethod
    def residual(self, u: Array, params: Array) -> Array:
        """Residual coefficients ``basis.shape``."""

    def loss(self, u: Array, params: Array) -> Array:
        """Exact spectral loss of a batch: ``mean_b int R_b^2 dx`` (NaN/inf in ``params`` raise at run time); in the
        Sobolev norm ``H^s`` along periodic axes where the problem has a ``sobolev = s`` field (see
        :func:`~jaxsciml.pde.spectral_loss`)."""
        u = self.basis.check_coeffs(u, "u")
        params = check_finite(_float(params, "params"), "params")
        if u.ndim > self.basis.ndim:
            if params.ndim == 0 or params.shape[0] != u.shape[0]:
                raise ValueError(f"`params` must have the batch size of `u`, {u.shape[0]}, got shape {params.shape}")
            r = jax.vmap(self.residual)(u, params)
        else:
            r = self.residual(u, params)
        return spectral_loss(r, self.basis, sobolev=getattr(self, "sobolev", 0.0))

    @abc.abstractmethod
    def reference(self, params: Array, shape: tuple[int, ...]) -> Array:
        """Reference solution values on ``basis.uniform_grid(shape)``."""

    @abc.abstractmethod
    def grid_input(self, params: Array, shape: tuple[int, ...]) -> Array:
        """FNO input values ``(C, *shape)`` on the uniform grid."""

    @abc.abstractmethod
    def grid_constrain(self, raw: Array, params: Array, shape: tuple[int, ...]) -> Array:
        """FNO output ``(1, *shape)`` -> solution values ``shape`` satisfying the constraints."""

    @abc.abstractmethod
    def grid_residual(self, u: Array, params: Array, shape: tuple[int, ...]) -> Array:
        """Finite-difference residual values on the grid (interior points where needed)."""

    def grid_loss(self, u: Array, params: Array, shape: tuple[int, ...]) -> Array:
        """PINN loss: mean squared FD residual times the domain volume (a Riemann sum of ``int R^2``)."""
        r = jax.vmap(lambda a, b: self.grid_residual(a, b, shape))(u, params)
        return jnp.mean(r**2) * self.basis.volume

    def solution_values(self, u: Array, shape: tuple[int, ...]) -> Array:
        """Values of solution coefficients on the uniform grid of ``shape`` (any resolution)."""
        return self.basis.evaluate_uniform(u, shape)


def fd_periodic_second(u: Array, axis: int, h: float) -> Array:
    """Second-order central difference ``(u_{i+1} - 2 u_i + u_{i-1}) / h^2`` with periodic wrap."""
    return (jnp.roll(u, -1, axis) - 2 * u + jnp.roll(u, 1, axis)) / h**2


def _np_float(x) -> np.ndarray:
    return np.asarray(x, dtype=float)
