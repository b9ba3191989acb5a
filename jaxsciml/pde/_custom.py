"""A user's own PDE without subclassing: a residual function, constraints and a parameter sampler (:class:`Problem`).

The constraints ("mollifiers" in the NSM paper) map the network output to a function that satisfies the initial and
boundary conditions exactly, so the spectral loss only has to drive the residual to zero:

- :class:`InitialValue` -- ``u = u0 + (t - t0) v`` along a Chebyshev time axis (one-sided; :func:`initial_value`);
- :class:`Dirichlet` / :class:`Neumann` -- the two-sided boundary-row (tau) projection along a Chebyshev axis;
- :class:`PeriodicGauge` -- pins the free constant of a problem that only sees derivatives (e.g. periodic Poisson).

Example (viscous Burgers ``u_t + u u_x = nu u_xx``, periodic in ``x``, ``u(x, 0) = u0(x)``)::

    basis = pde.TensorBasis(pde.Fourier(31), pde.Chebyshev(12, (0.0, 1.0)))
    space = basis.bases[0]
    burgers = pde.Problem(
        basis,
        residual=lambda u, u0: (
            pde.derivative(u, basis, 1)
            + pde.pointwise(lambda w, wx: w * wx, basis, u, pde.derivative(u, basis, 0))
            - 0.01 * pde.derivative(u, basis, 0, 2)
        ),
        sample=lambda key, batch: pde.gaussian_random_field(key, space, 0.2, shape=(batch,), kernel="periodic"),
        constraints=[pde.InitialValue(axis=1)],
        time_axis=1,
    )
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import cast

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

from ._basis import Chebyshev, Fourier, _float
from ._problem import AbstractProblem
from ._residual import _sobolev_order
from ._tensor import TensorBasis, as_tensor_basis

__all__ = [
    "Problem",
    "AbstractConstraint",
    "InitialValue",
    "Dirichlet",
    "Neumann",
    "PeriodicGauge",
    "initial_value",
    "time_coordinate",
]


def _axis(basis: TensorBasis, axis: int, kind: type, what: str) -> int:
    if not isinstance(axis, int | np.integer) or not -basis.ndim <= axis < basis.ndim:
        raise ValueError(f"`axis` must be an integer in [-{basis.ndim}, {basis.ndim}), got {axis!r}")
    axis = int(axis) % basis.ndim
    if not isinstance(basis.bases[axis], kind):
        raise ValueError(f"{what} needs a {kind.__name__} axis; axis {axis} is {type(basis.bases[axis]).__name__}")
    return axis


def _lift(u0: Array, basis: TensorBasis, axis: int) -> Array:
    """Coefficients of ``u0`` (a function of the other axes) as a function constant along ``axis``."""
    u0 = jnp.expand_dims(u0, axis)
    off = u0.ndim - basis.ndim  # leading batch axes: `axis` counts them, `basis.shape` does not
    pad = [(0, 0)] * u0.ndim
    pad[axis] = (0, basis.shape[axis - off] - 1)
    return jnp.pad(u0, pad)


def time_coordinate(basis: TensorBasis, axis: int, dtype=None) -> Array:
    """Coefficients (shape ``basis.shape``) of the coordinate function ``t`` of Chebyshev axis ``axis`` on ``(a, b)``:
    ``t = (a + b)/2 T_0 + (b - a)/2 T_1``. The NSM input channel that gives the network direct access to time."""
    basis = as_tensor_basis(basis)
    axis = _axis(basis, axis, Chebyshev, "time_coordinate")
    a, b = basis.bases[axis].domain
    line = np.zeros(basis.shape[axis])
    line[0], line[1] = (a + b) / 2, (b - a) / 2
    shape = [1] * basis.ndim
    shape[axis] = basis.shape[axis]
    e0 = np.zeros(basis.shape)
    idx = tuple(slice(None) if i == axis else 0 for i in range(basis.ndim))
    e0[idx] = line
    return jnp.asarray(e0, dtype if dtype is not None else jnp.result_type(float))


def initial_value(v: ArrayLike, u0: ArrayLike, basis: TensorBasis, axis: int) -> Array:
    """``u = u0 + (t - a) v``: the one-sided initial-value constraint along Chebyshev axis ``axis`` on ``(a, b)``.

    ``v`` has shape ``basis.shape``; ``u0`` the shape without ``axis`` (coefficients on the other axes). The top
    coefficient of ``v`` along ``axis`` is dropped so that ``(t - a) v`` stays exact in the basis; ``u(t = a) = u0``
    exactly for any ``v``.
    """
    basis = as_tensor_basis(basis)
    axis = _axis(basis, axis, Chebyshev, "initial_value")
    v = basis.check_coeffs(v, "v")
    u0 = _float(u0, "u0")
    want = basis.shape[:axis] + basis.shape[axis + 1 :]
    if tuple(u0.shape[-len(want) :] if want else ()) != want or u0.ndim != v.ndim - 1:
        raise ValueError(f"`u0` must have shape {want} (the basis shape without axis {axis}), got {u0.shape}")
    off = v.ndim - basis.ndim  # leading batch axes
    ax = off + axis
    v = v.at[(slice(None),) * ax + (-1,)].set(0.0)
    tv = cast(Chebyshev, basis.bases[axis]).multiply_by_x(v, axis=ax)
    tv = jnp.take(tv, jnp.arange(basis.shape[axis]), axis=ax)
    return _lift(u0, basis, ax) + tv


class AbstractConstraint(eqx.Module):
    """A constraint ``u -> u'`` applied to the network output before the residual: ``c(u, params, basis)``."""

    @abc.abstractmethod
    def __call__(self, u: Array, params: Array, basis: TensorBasis) -> Array:
        """Constrained coefficients (shape ``basis.shape``)."""


def _value(v, params):
    return v(params) if callable(v) else v


class InitialValue(AbstractConstraint):
    """``u = u0 + (t - t0) v`` along Chebyshev ``axis`` (see :func:`initial_value`). ``value``: ``None`` (``u0`` is
    the parameter array itself) or a function ``params -> u0`` coefficients."""

    axis: int = eqx.field(static=True)
    value: Callable[[Array], Array] | None = eqx.field(static=True, default=None)

    def __call__(self, u, params, basis):
        return initial_value(u, params if self.value is None else self.value(params), basis, self.axis)


class _BoundaryRows(AbstractConstraint):
    axis: eqx.AbstractVar[int]
    left: eqx.AbstractVar[object]
    right: eqx.AbstractVar[object]
    kind = ""

    def __call__(self, u, params, basis):
        axis = _axis(basis, self.axis, Chebyshev, f"{type(self).__name__}")
        left = _constant_trace(_value(self.left, params), basis, axis)
        right = _constant_trace(_value(self.right, params), basis, axis)
        return basis.enforce_bc(u, axis, self.kind, left, right)


def _constant_trace(value, basis, axis):
    """A scalar boundary value means the constant *function* on the other axes: return its coefficients there (a
    scalar broadcast over coefficients would set every mode of the trace, not the constant). Arrays are taken as
    coefficients of the trace already."""
    if basis.ndim == 1 or jnp.ndim(value) != 0:
        return value
    others = TensorBasis(*(b for i, b in enumerate(basis.bases) if i != axis % basis.ndim))
    return others.forward(jnp.full(others.shape, value, dtype=jnp.result_type(float)))


class Dirichlet(_BoundaryRows):
    """``u = left`` at the start and ``u = right`` at the end of Chebyshev ``axis`` (constants, arrays broadcasting
    against the other axes' coefficients, or functions of ``params``), exactly, by the boundary-row projection.
    Apply it after :class:`InitialValue`; the initial value is kept when it satisfies the same boundary values."""

    axis: int = eqx.field(static=True)
    left: object = eqx.field(static=True, default=0.0)
    right: object = eqx.field(static=True, default=0.0)
    kind = "dirichlet"


class Neumann(_BoundaryRows):
    """``du/dx = left, right`` at the two ends of Chebyshev ``axis`` (see :class:`Dirichlet`)."""

    axis: int = eqx.field(static=True)
    left: object = eqx.field(static=True, default=0.0)
    right: object = eqx.field(static=True, default=0.0)
    kind = "neumann"


class PeriodicGauge(AbstractConstraint):
    """Pin the constant a problem leaves free (only derivatives of ``u`` enter, all axes periodic): zero mean."""

    def __call__(self, u, params, basis):
        if not all(isinstance(b, Fourier) for b in basis.bases):
            raise ValueError("PeriodicGauge needs Fourier (periodic) axes only")
        return u.at[(0,) * basis.ndim].set(0.0)


class Problem(AbstractProblem):
    """A PDE given by functions: the minimal path to training an NSM on a new equation.

    Arguments:
        basis: the solution's :class:`TensorBasis`.
        residual: ``residual(u, params) -> R`` on coefficient arrays (single sample, shape ``basis.shape``), written
            with :func:`derivative`, :func:`laplacian`, :func:`product`, :func:`pointwise`; the loss is the exact
            ``int R^2 dx`` (:func:`spectral_loss`).
        sample: ``sample(key, batch) -> params`` (a batch of parameter coefficient arrays).
        constraints: applied in order to the network output (e.g. ``[InitialValue(1)]``, ``[Dirichlet(0),
            Dirichlet(1)]``, ``[PeriodicGauge()]``).
        time_axis: a Chebyshev axis that is time: the parameters are then functions of the other axes (e.g. an
            initial condition), lifted as constant in time, and the NSM gets the time coordinate as a second input
            channel (:func:`time_coordinate`). ``None``: the parameters have the basis shape and are the only
            channel.
        reference: optional ``reference(params, shape) -> values`` on ``basis.uniform_grid(shape)`` (single sample),
            for :meth:`reference` (errors, benchmarks).
        sobolev: Sobolev order ``s`` of the residual norm in the loss (default 0: ``int R^2 dx``); ``s != 0``
            weighs residual coefficients by ``(1 + |k|^2)^s`` along the periodic axes (:func:`spectral_loss`). Helps
            where a spatial operator of high order dominates the residual (Poisson, ``s = -1``: 2.6x lower error),
            hurts where ``u_t`` does (reaction--diffusion, ``s = -1``: 4.4x higher).

    The grid (FNO + PINN) side of :class:`AbstractProblem` is not provided; :meth:`grid_input` etc. raise
    ``NotImplementedError``.
    """

    basis: TensorBasis
    residual_fn: Callable[[Array, Array], Array] = eqx.field(static=True)
    sample_fn: Callable[[Array, int], Array] = eqx.field(static=True)
    constraints: tuple[AbstractConstraint, ...]
    time_axis: int | None = eqx.field(static=True)
    reference_fn: Callable[[Array, tuple[int, ...]], Array] | None = eqx.field(static=True)
    sobolev: float = eqx.field(static=True)

    def __init__(
        self,
        basis: TensorBasis,
        residual: Callable[[Array, Array], Array],
        sample: Callable[[Array, int], Array],
        constraints: Sequence[AbstractConstraint] = (),
        time_axis: int | None = None,
        reference: Callable[[Array, tuple[int, ...]], Array] | None = None,
        sobolev: float = 0.0,
    ):
        self.basis = as_tensor_basis(basis)
        self.sobolev = _sobolev_order(sobolev)
        for name, fn in (("residual", residual), ("sample", sample)):
            if not callable(fn):
                raise TypeError(f"`{name}` must be a function, got {type(fn).__name__}")
        if reference is not None and not callable(reference):
            raise TypeError(f"`reference` must be None or a function, got {type(reference).__name__}")
        constraints = tuple(constraints)
        for c in constraints:
            if not isinstance(c, AbstractConstraint):
                raise TypeError(f"`constraints` must hold constraint objects (InitialValue, ...), got {c!r}")
        self.time_axis = None if time_axis is None else _axis(self.basis, time_axis, Chebyshev, "time_axis")
        self.residual_fn = residual
        self.sample_fn = sample
        self.constraints = constraints
        self.reference_fn = reference

    @property
    def param_shape(self) -> tuple[int, ...]:
        """Shape of one parameter array: ``basis.shape``, without :attr:`time_axis` if set."""
        s = self.basis.shape
        return s if self.time_axis is None else s[: self.time_axis] + s[self.time_axis + 1 :]

    @property
    def in_channels(self) -> int:
        return 1 if self.time_axis is None else 2

    def _check_params(self, params) -> Array:
        p = _float(params, "params")
        if tuple(p.shape) != self.param_shape:
            raise ValueError(f"`params` must have shape {self.param_shape} (one sample), got {p.shape}")
        return p

    def sample(self, key: Array, batch: int) -> Array:
        return self.sample_fn(key, batch)

    def model_input(self, params: Array) -> Array:
        p = self._check_params(params)
        if self.time_axis is None:
            return p[None]
        return jnp.stack([_lift(p, self.basis, self.time_axis), time_coordinate(self.basis, self.time_axis, p.dtype)])

    def constrain(self, raw: Array, params: Array) -> Array:
        u = raw[0]
        for c in self.constraints:
            u = c(u, params, self.basis)
        return u

    def residual(self, u: Array, params: Array) -> Array:
        return self.residual_fn(self.basis.check_coeffs(u, "u"), params)

    def reference(self, params: Array, shape: tuple[int, ...]) -> Array:
        if self.reference_fn is None:
            raise NotImplementedError("this Problem was built without a `reference` function")
        return self.reference_fn(params, shape)

    def _no_grid(self, *args, **kwargs):
        raise NotImplementedError("Problem has no grid (FNO + PINN) side; subclass AbstractProblem for it")

    grid_input = grid_constrain = grid_residual = _no_grid
