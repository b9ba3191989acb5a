"""Tensor-product spectral bases in 1-D, 2-D and 3-D.

A :class:`TensorBasis` of 1-D bases ``(B_1, ..., B_d)`` represents
``u(x_1..x_d) = sum c[k_1..k_d] prod_i phi_{k_i}(x_i)`` with a coefficient array whose **trailing** ``d`` axes have
shape ``(n_1, ..., n_d)``; any leading axes (batch, channels) are carried along. Every operation applies the 1-D
operation of :mod:`jaxsciml.pde._basis` along the right axis, so transforms cost O(N log N) and derivatives O(N)
(``N = prod n_i``).

Multi-axis operations run from the last axis to the first: with this order the gradients of chained transforms compile
under GSPMD data parallelism on XLA:CPU (the opposite order trips an FFT-layout RET_CHECK there, jax/jaxlib 0.10.2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, cast

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

from ._basis import AbstractBasis, Chebyshev, _float, _jit_when_eager, dealias_size

__all__ = ["TensorBasis", "as_tensor_basis"]


class TensorBasis(eqx.Module):
    """Tensor product of 1-D bases; e.g. ``TensorBasis(Fourier(31), Fourier(31))`` (periodic square) or
    ``TensorBasis(Fourier(63), Chebyshev(16, (0, T)))`` (periodic space x time).

    Arguments:
        *bases: one to three :class:`~jaxsciml.pde.AbstractBasis` instances, one per physical axis (in axis order).
    """

    bases: tuple[AbstractBasis, ...]

    def __init__(self, *bases: AbstractBasis):
        if len(bases) == 1 and isinstance(bases[0], tuple | list):
            bases = tuple(bases[0])
        if not 1 <= len(bases) <= 3:
            raise ValueError(f"`bases` must contain 1 to 3 one-dimensional bases, got {len(bases)}")
        for i, b in enumerate(bases):
            if not isinstance(b, AbstractBasis):
                raise TypeError(f"`bases[{i}]` must be a Fourier or Chebyshev basis, got {type(b).__name__}")
        self.bases = tuple(bases)

    # ----------------------------------------------------------------------------------------------- structure
    @property
    def ndim(self) -> int:
        return len(self.bases)

    @property
    def shape(self) -> tuple[int, ...]:
        """Coefficient shape ``(n_1, ..., n_d)``."""
        return tuple(b.n for b in self.bases)

    @property
    def volume(self) -> float:
        return float(np.prod([b.length for b in self.bases]))

    def dealias_shape(self) -> tuple[int, ...]:
        """Padded grid shape for aliasing-free quadratic products (3/2 rule per axis)."""
        return tuple(dealias_size(n) for n in self.shape)

    def _axis(self, axis: int) -> int:
        if not isinstance(axis, int | np.integer) or not -self.ndim <= axis < self.ndim:
            raise ValueError(f"`axis` must be an integer in [0, {self.ndim}) for a {self.ndim}-D basis, got {axis!r}")
        return int(axis) % self.ndim - self.ndim  # negative array axis

    def _shape_arg(self, shape: int | Sequence[int] | None, name: str = "shape") -> tuple[int, ...]:
        if shape is None:
            return self.shape
        if isinstance(shape, int | np.integer):
            shape = (int(shape),) * self.ndim
        shape = tuple(int(s) for s in shape)
        if len(shape) != self.ndim:
            raise ValueError(f"`{name}` must have {self.ndim} entries (one per axis), got {shape}")
        for i, (m, n) in enumerate(zip(shape, self.shape)):
            if m < n:
                raise ValueError(f"`{name}[{i}]` must be >= basis size n={n} along axis {i}, got {m}")
        return shape

    def check_coeffs(self, coeffs: ArrayLike, name: str = "coeffs") -> Array:
        """Return ``coeffs`` as a float array, raising ``ValueError`` unless its trailing axes are :attr:`shape`."""
        c = _float(coeffs, name)
        if c.ndim < self.ndim or tuple(c.shape[-self.ndim :]) != self.shape:
            kinds = " x ".join(f"{b.kind}({b.n})" for b in self.bases)
            raise ValueError(
                f"`{name}` must have trailing shape {self.shape} for the basis {kinds}, got shape {c.shape}"
            )
        return c

    # --------------------------------------------------------------------------------------------- transforms
    def grid(self, shape: int | Sequence[int] | None = None) -> tuple[np.ndarray, ...]:
        """1-D collocation grids (NumPy), one per axis."""
        shape = self._shape_arg(shape)
        return tuple(b.grid(m) for b, m in zip(self.bases, shape))

    def mesh(self, shape: int | Sequence[int] | None = None) -> np.ndarray:
        """Collocation points as an array of shape ``(*shape, d)`` (``ij`` indexing)."""
        return np.stack(np.meshgrid(*self.grid(shape), indexing="ij"), axis=-1)

    @_jit_when_eager
    def forward(self, values: ArrayLike) -> Array:
        """Values on a collocation grid (trailing shape ``(m_1..m_d)``, ``m_i >= n_i``) -> coefficients."""
        v = _float(values, "values")
        if v.ndim < self.ndim:
            raise ValueError(f"`values` must have at least {self.ndim} dimensions, got shape {v.shape}")
        for i, b in reversed(list(enumerate(self.bases))):
            v = b.forward(v, axis=i - self.ndim)
        return v

    @_jit_when_eager
    def inverse(self, coeffs: ArrayLike, shape: int | Sequence[int] | None = None) -> Array:
        """Coefficients -> values on the collocation grid of ``shape`` (default: the basis shape), zero padding."""
        c = self.check_coeffs(coeffs)
        shape = self._shape_arg(shape)
        for i, (b, m) in reversed(list(enumerate(zip(self.bases, shape)))):
            c = b.inverse(c, m, axis=i - self.ndim)
        return c

    @_jit_when_eager
    def evaluate_grid(self, coeffs: ArrayLike, xs: Sequence[ArrayLike]) -> Array:
        """Values on the tensor grid ``xs[0] x ... x xs[d-1]`` of arbitrary 1-D point sets."""
        c = self.check_coeffs(coeffs)
        if len(xs) != self.ndim:
            raise ValueError(f"`xs` must have {self.ndim} point arrays (one per axis), got {len(xs)}")
        for i, (b, x) in reversed(list(enumerate(zip(self.bases, xs)))):
            c = b.evaluate(c, x, axis=i - self.ndim)
        return c

    def uniform_grid(self, shape: int | Sequence[int]) -> tuple[np.ndarray, ...]:
        """Equispaced evaluation points per axis: the periodic grid ``a + L j / m`` on Fourier axes and
        ``linspace(a, b, m)`` (endpoints included) on Chebyshev axes."""
        if isinstance(shape, int | np.integer):
            shape = (int(shape),) * self.ndim
        if len(shape) != self.ndim or any(int(m) < 1 for m in shape):
            raise ValueError(f"`shape` must have {self.ndim} positive entries, got {shape}")
        out = []
        for b, m in zip(self.bases, shape):
            a, e = b.domain
            out.append(a + (e - a) * np.arange(m) / m if b.periodic else np.linspace(a, e, int(m)))
        return tuple(out)

    @_jit_when_eager
    def evaluate_uniform(self, coeffs: ArrayLike, shape: int | Sequence[int]) -> Array:
        """Values on :meth:`uniform_grid`: inverse FFT with zero-padded coefficients on Fourier axes (``m >= n``),
        Clenshaw on Chebyshev axes. This is how a learned solution is evaluated at any resolution."""
        c = self.check_coeffs(coeffs)
        xs = self.uniform_grid(shape)
        for i, (b, x) in reversed(list(enumerate(zip(self.bases, xs)))):
            ax = i - self.ndim
            if b.periodic and len(x) >= b.n:
                c = b.inverse(c, len(x), axis=ax)
            else:
                c = b.evaluate(c, jnp.asarray(x, c.dtype), axis=ax)
        return c

    @_jit_when_eager
    def evaluate(self, coeffs: ArrayLike, points: ArrayLike) -> Array:
        """Values at scattered points of shape ``(P, d)``; returns ``(..., P)``."""
        c = self.check_coeffs(coeffs)
        p = jnp.asarray(points, dtype=c.dtype)
        if p.ndim != 2 or p.shape[1] != self.ndim:
            raise ValueError(f"`points` must have shape (P, {self.ndim}), got {p.shape}")
        mats = [b.basis_matrix(p[:, i]) for i, b in enumerate(self.bases)]
        letters = "abc"[: self.ndim]
        spec = f"...{letters}," + ",".join(f"p{ch}" for ch in letters) + "->...p"
        return jnp.einsum(spec, c, *mats)

    # ------------------------------------------------------------------------------------------------ calculus
    @_jit_when_eager
    def derivative(self, coeffs: ArrayLike, axis: int, order: int = 1) -> Array:
        """Exact ``d^order u / dx_axis^order`` in coefficient space."""
        c = self.check_coeffs(coeffs)
        ax = self._axis(axis)
        return self.bases[ax + self.ndim].derivative(c, order, axis=ax)

    def gradient(self, coeffs: ArrayLike) -> tuple[Array, ...]:
        return tuple(self.derivative(coeffs, i) for i in range(self.ndim))

    @_jit_when_eager
    def laplacian(self, coeffs: ArrayLike, axes: Sequence[int] | None = None) -> Array:
        """Sum of second derivatives over ``axes`` (default: all axes)."""
        axes = range(self.ndim) if axes is None else axes
        out = None
        for i in axes:
            d2 = self.derivative(coeffs, i, 2)
            out = d2 if out is None else out + d2
        return cast(Array, out)

    @_jit_when_eager
    def integrate(self, coeffs: ArrayLike) -> Array:
        """Definite integral over the whole box (reduces the trailing ``d`` axes)."""
        c = self.check_coeffs(coeffs)
        for i in reversed(range(self.ndim)):
            c = self.bases[i].integrate(c, axis=-1)
        return c

    # ---------------------------------------------------------------------------------------- nonlinear terms
    @_jit_when_eager
    def apply(
        self,
        fn: Callable[..., Array],
        *coeffs: ArrayLike,
        shape: int | Sequence[int] | Literal["dealias"] | None = "dealias",
    ) -> Array:
        """Coefficients of ``fn(u_1, ..., u_k)`` with ``fn`` applied pointwise on a collocation grid.

        Each ``u_i`` is transformed to the grid of ``shape`` (default ``"dealias"``: the 3/2-rule padded grid, exact for
        quadratic ``fn``; ``None``: the unpadded grid), ``fn`` is applied pointwise and the result is transformed back
        and truncated to :attr:`shape`.
        """
        if not coeffs:
            raise ValueError("`apply` needs at least one coefficient array")
        grid_shape = self.dealias_shape() if shape == "dealias" else self._shape_arg(shape)
        vals = [self.inverse(c, grid_shape) for c in coeffs]
        return self.forward(fn(*vals))

    @_jit_when_eager
    def product(self, a: ArrayLike, b: ArrayLike) -> Array:
        """Dealiased product ``a * b`` (3/2-rule padding; exact for the retained modes)."""
        return self.apply(jnp.multiply, a, b)

    # -------------------------------------------------------------------------------------------------- norms
    @_jit_when_eager
    def apply_gram(self, coeffs: ArrayLike) -> Array:
        """``(G_1 x ... x G_d) c`` (Fourier: diagonal Parseval weights; Chebyshev: the exact dx Gram matrix)."""
        c = self.check_coeffs(coeffs)
        for i, b in reversed(list(enumerate(self.bases))):
            c = b.apply_gram(c, axis=i - self.ndim)
        return c

    @_jit_when_eager
    def squared_norm(self, coeffs: ArrayLike) -> Array:
        """Exact ``int u^2 dx`` over the box (reduces the trailing ``d`` axes)."""
        c = self.check_coeffs(coeffs)
        axes = tuple(range(-self.ndim, 0))
        return jnp.sum(c * self.apply_gram(c), axis=axes)

    # ------------------------------------------------------------------------------------------ Chebyshev only
    def _chebyshev(self, axis: int, what: str) -> tuple[int, Chebyshev]:
        ax = self._axis(axis)
        b = self.bases[ax + self.ndim]
        if not isinstance(b, Chebyshev):
            raise ValueError(
                f"{what} needs a Chebyshev axis: `axis`={axis} is a {b.kind} axis; expected one of the Chebyshev "
                f"axes {[i for i, bb in enumerate(self.bases) if isinstance(bb, Chebyshev)]}"
            )
        return ax, b

    def quadrature_weights(self, axis: int, m: int | None = None) -> np.ndarray:
        """Clenshaw--Curtis weights on the ``m``-point Lobatto grid of Chebyshev axis ``axis``."""
        _, b = self._chebyshev(axis, "Chebyshev quadrature")
        return b.quadrature_weights(m)

    @_jit_when_eager
    def enforce_bc(
        self,
        coeffs: ArrayLike,
        axis: int,
        bc: str = "dirichlet",
        left: ArrayLike = 0.0,
        right: ArrayLike = 0.0,
    ) -> Array:
        """Boundary-row (tau) projection along Chebyshev axis ``axis`` (see :meth:`Chebyshev.enforce_bc`)."""
        c = self.check_coeffs(coeffs)
        ax, b = self._chebyshev(axis, "enforce_bc")
        return b.enforce_bc(c, bc, left, right, axis=ax)


def as_tensor_basis(basis: AbstractBasis | TensorBasis) -> TensorBasis:
    """Wrap a 1-D basis as a 1-D :class:`TensorBasis` (a :class:`TensorBasis` is returned unchanged)."""
    if isinstance(basis, TensorBasis):
        return basis
    if isinstance(basis, AbstractBasis):
        return TensorBasis(basis)
    raise TypeError(f"`basis` must be a Fourier, Chebyshev or TensorBasis, got {type(basis).__name__}")
