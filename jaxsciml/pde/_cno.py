"""CNO: the NSM paper's "FNO with a Chebyshev transform" (Du, Chalapathi, Krishnapriyan, ICLR 2024), a grid FNO whose
spectral convolution uses the Chebyshev transform (DCT-I) along non-periodic axes instead of a zero-padded FFT, trained
with a grid PINN loss (:func:`fno_loss`)."""

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
from ._t1 import _dense, _mix
from ._tensor import TensorBasis

__all__ = ["CNO", "ChebyshevFourierLayer"]


class ChebyshevFourierLayer(eqx.Module):
    """``K v + W v + b`` on grid values ``(width, *grid)``: ``K v = T^{-1}(w * T v)`` with ``T`` the Fourier transform
    on periodic axes and the Chebyshev transform (DCT-I of the samples) on bounded ones, truncated to ``modes``
    (per-mode channel-mixing weights ``w``, complex when there is a periodic axis); ``W`` a real channel mix; ``b``
    a bias."""

    weight_re: Array
    weight_im: Array | None
    linear: Array
    bias: Array
    periodic: tuple[bool, ...] = eqx.field(static=True)
    modes: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, width: int, periodic: Sequence[bool], modes: Sequence[int], key: PRNGKeyArray, dtype=None):
        dtype = jnp.result_type(float) if dtype is None else dtype
        k1, k2, k3 = jax.random.split(key, 3)
        self.periodic = tuple(bool(p) for p in periodic)
        self.modes = tuple(int(m) for m in modes)
        shape = kept_shape(self.periodic, self.modes) + (width, width)
        self.weight_re = jax.random.normal(k1, shape, dtype) / width
        self.weight_im = jax.random.normal(k2, shape, dtype) / width if any(self.periodic) else None
        self.linear = _dense(k3, width, width, dtype)
        self.bias = jnp.zeros((width,), dtype)

    def __call__(self, v: Array) -> Array:
        d = v.ndim - 1
        check_grid(v.shape[1:], self.periodic, self.modes, "v")
        z = grid_forward(v, self.periodic, self.modes)
        w = self.weight_re if self.weight_im is None else jax.lax.complex(self.weight_re, self.weight_im)
        letters = "abc"[:d]
        kz = jnp.einsum(f"i{letters},{letters}io->o{letters}", z, w.astype(jnp.result_type(z.dtype, w.dtype)))
        kv = grid_inverse(kz, self.periodic, self.modes, v.shape[1:]).astype(v.dtype)
        return kv + _mix(self.linear, v) + self.bias[(slice(None),) + (None,) * d]


class CNO(eqx.Module):
    """The NSM paper's CNO baseline: :class:`FNO` with the Chebyshev transform on non-periodic axes.

    ``x (C_in, *grid)`` -> append coordinates -> lift -> ``depth`` x [:class:`ChebyshevFourierLayer`, activation
    (pointwise on the grid; none after the last layer)] -> projection (channel mix to ``2 width`` -> activation ->
    channel mix) -> ``(C_out, *grid)``. Same structure, widths and initialisation as this package's :class:`FNO`; the
    only difference is the transform of the spectral convolution along bounded axes, where the FNO zero-pads the grid
    (``pad``) and uses a periodic FFT.

    On the uniform PINN grid (``linspace(0, T, n)`` along a bounded axis) the Chebyshev transform of the samples is the
    cosine series ``sum_k a_k cos(pi k t / T)``, as in the authors' code, which applies its Chebyshev transform to the
    values of its uniform PINN grid: exact and invertible on any number of points, with no periodic wrap-around from
    ``t = T`` to ``t = 0`` (which the FNO avoids only by padding). With only periodic axes a CNO is an FNO.

    Arguments:
        axes: a :class:`TensorBasis` (Fourier axes periodic, Chebyshev axes bounded; e.g. ``problem.basis``) or 1 to 3
            of ``"fourier"`` / ``"chebyshev"``.
        in_channels: input channels (coordinates are appended to the inputs).
        out_channels: output channels.
        width: hidden channels.
        depth: spectral layers.
        modes: kept modes per axis (int or per-axis); the grid needs ``2 m - 1`` points per periodic axis, ``m`` per
            bounded axis.
        activation: pointwise nonlinearity. output_scale: fixed factor on the output.
        key: PRNG key. dtype: real parameter dtype.

    References:
        Y. Du, N. Chalapathi, A. Krishnapriyan, "Neural Spectral Methods: Self-supervised learning in the spectral
        domain", ICLR 2024 (the "CNO" rows); Z. Li et al., "Fourier Neural Operator for Parametric PDEs", ICLR 2021.
    """

    lift: Array
    lift_bias: Array
    layers: tuple[ChebyshevFourierLayer, ...]
    proj1: Array
    proj1_bias: Array
    proj2: Array
    periodic: tuple[bool, ...] = eqx.field(static=True)
    activation: Callable[[Array], Array] = eqx.field(static=True)
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
        output_scale: float = 1.0,
        dtype=None,
    ):
        self.periodic = periodic_axes(axes)
        d = len(self.periodic)
        modes = modes_tuple(modes, d)
        for name, val in (("in_channels", in_channels), ("out_channels", out_channels), ("width", width)):
            if isinstance(val, bool) or not isinstance(val, int | np.integer) or val < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {val!r}")
        if isinstance(depth, bool) or not isinstance(depth, int | np.integer) or depth < 0:
            raise ValueError(f"`depth` must be a non-negative integer, got {depth!r}")
        if not (isinstance(output_scale, int | float | np.floating) and np.isfinite(output_scale) and output_scale > 0):
            raise ValueError(f"`output_scale` must be a positive finite number, got {output_scale!r}")
        dtype = jnp.result_type(float) if dtype is None else dtype
        keys = jax.random.split(key, depth + 3)
        self.lift = _dense(keys[0], in_channels + d, width, dtype)
        self.lift_bias = jnp.zeros((width,), dtype)
        self.layers = tuple(ChebyshevFourierLayer(width, self.periodic, modes, k, dtype) for k in keys[1 : depth + 1])
        self.proj1 = _dense(keys[depth + 1], width, 2 * width, dtype)
        self.proj1_bias = jnp.zeros((2 * width,), dtype)
        self.proj2 = _dense(keys[depth + 2], 2 * width, out_channels, dtype)
        self.activation = activation
        self.output_scale = float(output_scale)

    def __call__(self, x: Array) -> Array:
        d = len(self.periodic)
        if x.ndim != d + 1 or x.shape[0] + d != self.lift.shape[0]:
            raise ValueError(f"`x` must have shape ({self.lift.shape[0] - d}, *grid) with {d} grid axes, got {x.shape}")
        if self.layers:
            check_grid(x.shape[1:], self.periodic, self.layers[0].modes, "x")
        bshape = (slice(None),) + (None,) * d
        x = jnp.concatenate([x, grid_coordinates(x.shape[1:], self.periodic, x.dtype)])
        v = _mix(self.lift, x) + self.lift_bias[bshape]
        for i, layer in enumerate(self.layers):
            v = layer(v)
            if i < len(self.layers) - 1:
                v = self.activation(v)
        v = self.activation(_mix(self.proj1, v) + self.proj1_bias[bshape])
        return self.output_scale * _mix(self.proj2, v)
