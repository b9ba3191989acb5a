"""T1 ("Transform Once", Poli et al., NeurIPS 2022): a grid-to-grid neural operator that transforms its input to the
frequency domain once, computes every layer there, and transforms back once. One of the NSM paper's baselines (Du,
Chalapathi, Krishnapriyan, ICLR 2024), trained there with a grid PINN loss; here with :func:`fno_loss`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from ._spectral_grid import (
    check_grid,
    grid_coordinates,
    grid_forward,
    grid_inverse,
    kept_shape,
    modes_tuple,
    periodic_axes,
)
from ._tensor import TensorBasis

__all__ = ["T1", "T1Layer"]


def _dense(key: PRNGKeyArray, n_in: int, n_out: int, dtype) -> Array:
    lim = 1.0 / np.sqrt(n_in)
    return jax.random.uniform(key, (n_in, n_out), dtype, -lim, lim)


def _mix(w: Array, z: Array) -> Array:
    """Channel mix ``(C_in, ...) -> (C_out, ...)`` with real ``w: (C_in, C_out)``."""
    return jnp.tensordot(w.astype(z.dtype), z, axes=([0], [0]))


def _add_const(z: Array, b: Array) -> Array:
    """``b[c]`` times the constant function: added to the coefficient of mode ``(0, ..., 0)``."""
    return z.at[(slice(None),) + (0,) * (z.ndim - 1)].add(b.astype(z.dtype))


def split_activation(activation: Callable[[Array], Array], z: Array) -> Array:
    """``sigma(Re z) + i sigma(Im z)`` for complex ``z`` (``sigma(z)`` for real ``z``): the nonlinearity applied to the
    coefficients themselves, not to values on a grid."""
    if jnp.iscomplexobj(z):
        return jax.lax.complex(activation(z.real), activation(z.imag))
    return activation(z)


class T1Layer(eqx.Module):
    """One frequency-domain layer ``z <- K z + W z + b``: ``K`` a per-mode channel-mixing weight (complex when the
    coefficients are, i.e. with a periodic axis), ``W[i, o]`` a real channel mix, ``b[o]`` on the constant mode.
    Acts on truncated coefficients ``(width, *kept)``."""

    weight_re: Array
    weight_im: Array | None
    linear: Array
    bias: Array

    def __init__(self, width: int, kept: Sequence[int], complex_weights: bool, key: PRNGKeyArray, dtype=None):
        dtype = jnp.result_type(float) if dtype is None else dtype
        k1, k2, k3 = jax.random.split(key, 3)
        shape = tuple(kept) + (width, width)
        self.weight_re = jax.random.normal(k1, shape, dtype) / width  # FNO's 1 / width scale
        self.weight_im = jax.random.normal(k2, shape, dtype) / width if complex_weights else None
        self.linear = _dense(k3, width, width, dtype)
        self.bias = jnp.zeros((width,), dtype)

    def __call__(self, z: Array) -> Array:
        d = z.ndim - 1
        w = self.weight_re if self.weight_im is None else jax.lax.complex(self.weight_re, self.weight_im)
        letters = "abc"[:d]
        kz = jnp.einsum(f"i{letters},{letters}io->o{letters}", z, w.astype(jnp.result_type(z.dtype, w.dtype)))
        return _add_const(kz + _mix(self.linear, z), self.bias)


class T1(eqx.Module):
    """T1 ("Transform Once") on uniform grids: one forward transform, ``depth`` frequency-domain layers with
    nonlinearities applied to the coefficients, one inverse transform.

    ``x (C_in, *grid)`` -> append coordinates (as :class:`FNO`) -> transform once (Fourier on periodic axes,
    Chebyshev/DCT-I on bounded ones, see :mod:`jaxsciml.pde._spectral_grid`) and keep the lowest ``modes`` per axis
    -> lift ``z <- L z + b e_0`` -> ``depth`` x [:class:`T1Layer` ``z <- K z + W z + b e_0``, then
    ``sigma_c(z) = sigma(Re z) + i sigma(Im z)`` except after the last layer] -> projection ``P_2 sigma_c(P_1 z + b_1
    e_0)`` -> inverse once onto the uniform grid of ``shape`` (default: the input grid) -> ``(C_out, *shape)``.

    Every operation between the two transforms acts on the truncated spectrum ``(width, *kept)``, so a forward pass
    costs two transforms instead of the FNO's two per layer; the price is that the nonlinearity is no longer applied
    pointwise in space (it does not commute with translations; a periodic shift ``e^{-iks}`` of the input does not
    shift the output) and the output is band-limited to the kept modes. Because the coefficients are normalised
    independently of the number of grid points, the model can be trained on one grid and evaluated on any other with at
    least ``2 m - 1`` points per periodic axis (``m`` per bounded axis).

    Where this follows Poli et al. and where it chooses: the transform-once structure, the per-mode (diagonal in
    frequency) channel-mixing weights and the nonlinearity in frequency space are theirs; the split real/imaginary
    activation, the FNO-style lift/projection widths (``width``, ``2 width``) and initialisation (per-mode weights
    ``N(0, 1/width^2)``) are this package's, so that T1 differs from :class:`FNO` only in where the layers act.

    Arguments:
        axes: a :class:`TensorBasis` (Fourier axes periodic, Chebyshev axes bounded; e.g. ``problem.basis``) or 1 to 3
            of ``"fourier"`` / ``"chebyshev"``.
        in_channels: input channels (coordinates are appended to the inputs).
        out_channels: output channels.
        width: hidden channels. depth: frequency-domain layers.
        modes: kept modes per axis (int or per-axis): frequencies ``|k| < m`` on periodic axes, degrees ``< m`` else.
        activation: the scalar nonlinearity ``sigma``.
        coordinates: append the grid coordinates to the input (``True`` as in the FNO).
        output_scale: fixed factor on the output.
        key: PRNG key. dtype: real parameter dtype.

    References:
        M. Poli, S. Massaroli, F. Berto, J. Park, T. Dao, C. Re, S. Ermon, "Transform Once: Efficient Operator
        Learning in Frequency Domain", NeurIPS 2022 (arXiv 2211.14453). Used as a baseline with a PINN loss in Y. Du,
        N. Chalapathi, A. Krishnapriyan, "Neural Spectral Methods", ICLR 2024.
    """

    lift: Array
    lift_bias: Array
    layers: tuple[T1Layer, ...]
    proj1: Array
    proj1_bias: Array
    proj2: Array
    periodic: tuple[bool, ...] = eqx.field(static=True)
    modes: tuple[int, ...] = eqx.field(static=True)
    activation: Callable[[Array], Array] = eqx.field(static=True)
    coordinates: bool = eqx.field(static=True)
    output_scale: float = eqx.field(static=True)

    def __init__(
        self,
        axes: TensorBasis | Sequence[str],
        in_channels: int,
        out_channels: int = 1,
        width: int = 32,
        depth: int = 4,
        modes: int | Sequence[int] = 8,
        activation: Callable[[Array], Array] = jax.nn.gelu,
        *,
        key: PRNGKeyArray,
        coordinates: bool = True,
        output_scale: float = 1.0,
        dtype=None,
    ):
        self.periodic = periodic_axes(axes)
        d = len(self.periodic)
        self.modes = modes_tuple(modes, d)
        for name, val in (("in_channels", in_channels), ("out_channels", out_channels), ("width", width)):
            if isinstance(val, bool) or not isinstance(val, int | np.integer) or val < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {val!r}")
        if isinstance(depth, bool) or not isinstance(depth, int | np.integer) or depth < 0:
            raise ValueError(f"`depth` must be a non-negative integer, got {depth!r}")
        if not (isinstance(output_scale, int | float | np.floating) and np.isfinite(output_scale) and output_scale > 0):
            raise ValueError(f"`output_scale` must be a positive finite number, got {output_scale!r}")
        dtype = jnp.result_type(float) if dtype is None else dtype
        keys = jax.random.split(key, depth + 3)
        c_in = in_channels + (d if coordinates else 0)
        kept = kept_shape(self.periodic, self.modes)
        self.lift = _dense(keys[0], c_in, width, dtype)
        self.lift_bias = jnp.zeros((width,), dtype)
        self.layers = tuple(T1Layer(width, kept, any(self.periodic), k, dtype) for k in keys[1 : depth + 1])
        self.proj1 = _dense(keys[depth + 1], width, 2 * width, dtype)
        self.proj1_bias = jnp.zeros((2 * width,), dtype)
        self.proj2 = _dense(keys[depth + 2], 2 * width, out_channels, dtype)
        self.activation = activation
        self.coordinates = bool(coordinates)
        self.output_scale = float(output_scale)

    def __call__(self, x: Array, shape: Sequence[int] | None = None) -> Array:
        """``x (C_in, *grid)`` -> ``(C_out, *shape)`` (``shape`` defaults to ``grid``)."""
        d = len(self.periodic)
        c_in = self.lift.shape[0] - (d if self.coordinates else 0)
        if x.ndim != d + 1 or x.shape[0] != c_in:
            raise ValueError(f"`x` must have shape ({c_in}, *grid) with {d} grid axes, got {x.shape}")
        grid = x.shape[1:]
        check_grid(grid, self.periodic, self.modes, "x")
        shape = grid if shape is None else tuple(int(n) for n in shape)
        if len(shape) != d:
            raise ValueError(f"`shape` must have {d} entries, got {shape}")
        check_grid(shape, self.periodic, self.modes, "shape")
        if self.coordinates:
            x = jnp.concatenate([x, grid_coordinates(grid, self.periodic, x.dtype)])
        z = grid_forward(x, self.periodic, self.modes)  # transform once
        z = _add_const(_mix(self.lift, z), self.lift_bias)
        for i, layer in enumerate(self.layers):
            z = layer(z)
            if i < len(self.layers) - 1:
                z = split_activation(self.activation, z)
        z = split_activation(self.activation, _add_const(_mix(self.proj1, z), self.proj1_bias))
        z = _mix(self.proj2, z)
        out = grid_inverse(z, self.periodic, self.modes, shape)  # inverse once
        return (self.output_scale * out).astype(x.dtype)
