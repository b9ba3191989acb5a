"""Neural operators: the Neural Spectral Method (NSM) and the grid-based FNO baseline.

Both act on a single sample with channels first (``jax.vmap`` for batches):

- :class:`NSM` maps parameter *coefficients* ``(C_in, *basis.shape)`` to solution coefficients ``(C_out, *basis.shape)``
  (Du, Chalapathi, Krishnapriyan, ICLR 2024). Each layer is ``v <- sigma_hat(K v + W v + b)``: ``K`` a learned
  per-mode channel-mixing map on the lowest ``modes`` coefficients, ``W`` a mode-independent channel mix (the pointwise
  linear path: a pointwise linear map commutes with the transforms), ``b`` a bias on the constant mode, and
  ``sigma_hat = forward o sigma o inverse`` the activation applied on the collocation grid.
- :class:`FNO` maps parameter *values* on a uniform grid ``(C_in, *grid)`` (plus appended coordinates) to solution
  values (Li et al., "Fourier Neural Operator for Parametric PDEs", ICLR 2021), resolution-independent through its
  truncated Fourier modes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from ._basis import Fourier
from ._tensor import TensorBasis

__all__ = ["NSM", "FNO", "SpectralLayer", "FourierLayer", "OUTPUT_SCALE"]

OUTPUT_SCALE = 1.0
"""Default :attr:`NSM.output_scale` (since 0.2.0; it was ``1e-3``, the factor of the authors' mollifiers). With the
complex per-frequency layers and the default optimizer (Adam ``3e-3``), ``1.0`` is as accurate on periodic Poisson
(0.87% vs 0.85% relative L2, 300 steps) and 2-3x more accurate on reaction--diffusion (2.2% vs 4.9%) and on transport
problems (advection 2.5% vs 12.8%+, Burgers), where ``1e-3`` keeps the network's correction too small to learn the
nonlinear dynamics (``benchmarks/results/nsm_transport.md``). Pass ``output_scale=1e-3`` for the paper's ReLU recipe
(Adam ``1e-3`` decayed to ``1e-6``)."""


def _dense(key: PRNGKeyArray, n_in: int, n_out: int, dtype) -> Array:
    lim = 1.0 / np.sqrt(n_in)
    return jax.random.uniform(key, (n_in, n_out), dtype, -lim, lim)


def _mix(w: Array, v: Array) -> Array:
    """Channel mix ``(C_in, ...) -> (C_out, ...)`` with ``w: (C_in, C_out)``."""
    return jnp.tensordot(w, v, axes=([0], [0]))


def _add_const(v: Array, b: Array, ndim: int) -> Array:
    """Add ``b[c]`` times the constant function, i.e. to the coefficient of mode ``(0, ..., 0)``."""
    idx = (slice(None),) + (0,) * ndim
    return v.at[idx].add(b)


def _fourier_to_modes(x: Array, axis: int, half: bool) -> Array:
    """Real Fourier layout ``[a_0, a_1, b_1, ..., a_K, b_K]`` along ``axis`` -> complex exponential coefficients.

    ``c_0 = a_0``, ``c_k = (a_k - i b_k) / 2``, ``c_{-k} = (a_k + i b_k) / 2``, so that
    ``a_k cos(kx) + b_k sin(kx) = c_k e^{ikx} + c_{-k} e^{-ikx}``. ``half``: only ``k = 0..K`` (length ``K + 1``);
    otherwise ``k = -K..K`` in increasing order (length ``2K + 1``).
    """
    x = jnp.moveaxis(x, axis, 0)
    a0, a, b = x[:1], x[1::2], x[2::2]
    pos = 0.5 * (a - 1j * b)
    out = jnp.concatenate([a0.astype(pos.dtype), pos]) if half else jnp.concatenate([jnp.conj(pos)[::-1], a0, pos])
    return jnp.moveaxis(out, 0, axis)


def _modes_to_fourier(z: Array, axis: int, half: bool) -> Array:
    """Inverse of :func:`_fourier_to_modes` along ``axis`` (complex in, complex out; the caller takes the real part).

    Full: ``a_k = c_k + c_{-k}``, ``b_k = i (c_k - c_{-k})``. Half (the negative frequencies are the conjugate mirror
    of the positive ones, as for a real function): ``a_k = 2 c_k``, ``b_k = 2 i c_k`` before the real part.
    """
    z = jnp.moveaxis(z, axis, 0)
    if half:
        c0, pos, neg = z[:1], 2 * z[1:], jnp.zeros_like(z[1:])
    else:
        kk = (z.shape[0] - 1) // 2
        c0, pos, neg = z[kk : kk + 1], z[kk + 1 :], z[:kk][::-1]
    ab = jnp.stack([pos + neg, 1j * (pos - neg)], axis=1).reshape((2 * pos.shape[0],) + pos.shape[1:])
    return jnp.moveaxis(jnp.concatenate([c0, ab]), 0, axis)


class SpectralLayer(eqx.Module):
    """``K v + W v + b`` in coefficient space: per-mode weights ``K`` on the lowest ``modes`` coefficient indices
    (higher ones only see ``W``), channel mix ``W[i, o]`` and a constant-mode bias ``b[o]``.

    Along Chebyshev axes (and along every axis when ``fourier_axes`` is empty) ``K`` is a real weight per coefficient
    index. Along the axes listed in ``fourier_axes`` (the periodic axes of a layout ``[a_0, a_1, b_1, ..., a_K,
    b_K]``) ``K`` is a **complex** weight per frequency acting on ``c_k = (a_k - i b_k) / 2``, as in the FNO: it scales
    and *rotates* each ``(a_k, b_k)`` pair, so a layer can represent a translation ``u(x) -> u(x - s)``
    (``c_k -> e^{-iks} c_k``) and any other convolution, which a real weight per index cannot (it would scale the cosine
    and sine parts separately: no phase shift, hence no transport). Both signs of the frequency are kept on every
    periodic axis but the last one, where the negative frequencies are the conjugate mirror (the ``rfftn`` layout).
    On a periodic axis with ``modes = m`` the frequencies ``0..m // 2`` get weights (``2 (m // 2) + 1`` indices).

    Arguments:
        width_in: channels in.
        width_out: channels out.
        modes: per-axis number of coefficient indices with per-mode weights.
        key: PRNG key.
        dtype: real parameter dtype (default: JAX's default float).
        kernel_scale: standard deviation of the initial per-mode weights (default ``1 / (width_in * width_out)``).
        fourier_axes: the periodic (Fourier) axes, counted from 0 over the coefficient axes.
    """

    kernel: Array
    kernel_imag: Array | None
    index_mix: tuple[Array, ...]
    linear: Array
    bias: Array
    modes: tuple[int, ...] = eqx.field(static=True)
    fourier_axes: tuple[int, ...] = eqx.field(static=True)
    mix_axes: tuple[int, ...] = eqx.field(static=True)

    def __init__(
        self,
        width_in: int,
        width_out: int,
        modes: Sequence[int],
        key: PRNGKeyArray,
        dtype=None,
        kernel_scale: float | None = None,
        fourier_axes: Sequence[int] = (),
        mix_axes: Sequence[int] = (),
    ):
        dtype = jnp.result_type(float) if dtype is None else dtype
        k1, k2, k3 = jax.random.split(key, 3)
        self.modes = tuple(int(m) for m in modes)
        fa = tuple(sorted({int(a) for a in fourier_axes}))
        if any(not 0 <= a < len(self.modes) for a in fa):
            raise ValueError(f"`fourier_axes` must be axes in [0, {len(self.modes)}), got {tuple(fourier_axes)}")
        self.fourier_axes = fa
        ma = tuple(sorted({int(a) for a in mix_axes}))
        if any(not 0 <= a < len(self.modes) for a in ma) or set(ma) & set(fa):
            raise ValueError(f"`mix_axes` must be non-periodic axes in [0, {len(self.modes)}), got {tuple(mix_axes)}")
        self.mix_axes = ma
        # per input channel, a dense map across the kept coefficient indices of each axis in `mix_axes`, starting at
        # the identity (the diagonal per-index kernel alone cannot move content between Chebyshev indices)
        self.index_mix = tuple(
            jnp.broadcast_to(jnp.eye(self.modes[a], dtype=dtype), (width_in,) + (self.modes[a],) * 2) for a in ma
        )
        # small per-mode weights (FNO's 1/(in*out) scale): with O(1/sqrt(in)) weights every mode starts with O(1)
        # content, and the spectral loss, which weights mode k by |k|^4 for second-order operators, is dominated by
        # removing it (measured: ~30x worse error after 300 steps on periodic Poisson).
        scale = 1.0 / (width_in * width_out) if kernel_scale is None else float(kernel_scale)
        shape = self._weight_shape() + (width_in, width_out)
        self.kernel = scale * jax.random.normal(k1, shape, dtype)
        self.kernel_imag = scale * jax.random.normal(k3, shape, dtype) if fa else None
        self.linear = _dense(k2, width_in, width_out, dtype)
        self.bias = jnp.zeros((width_out,), dtype)

    def _kept(self) -> tuple[int, ...]:
        """Coefficient indices that see ``K`` per axis (whole (a_k, b_k) pairs on Fourier axes)."""
        return tuple(2 * (m // 2) + 1 if i in self.fourier_axes else m for i, m in enumerate(self.modes))

    def _weight_shape(self) -> tuple[int, ...]:
        last = self.fourier_axes[-1] if self.fourier_axes else -1
        out = []
        for i, m in enumerate(self.modes):
            if i not in self.fourier_axes:
                out.append(m)
            else:
                out.append(m // 2 + 1 if i == last else 2 * (m // 2) + 1)
        return tuple(out)

    def __call__(self, v: Array) -> Array:
        d = len(self.modes)
        kept = self._kept()
        for i, (n, k) in enumerate(zip(v.shape[1:], kept)):
            if k > n:
                raise ValueError(f"axis {i} has {n} coefficients, fewer than the {k} the layer's modes need")
        low = v[(slice(None),) + tuple(slice(0, k) for k in kept)]
        letters = "abc"[:d]
        for a, mix in zip(self.mix_axes, self.index_mix):
            low = jnp.moveaxis(jnp.einsum("i...j,ikj->i...k", jnp.moveaxis(low, a + 1, -1), mix), -1, a + 1)
        if not self.fourier_axes:
            kv = jnp.einsum(f"i{letters},{letters}io->o{letters}", low, self.kernel)
        else:
            last = self.fourier_axes[-1]
            z = low
            for a in self.fourier_axes:
                z = _fourier_to_modes(z, a + 1, half=a == last)
            w = self.kernel + 1j * cast(Array, self.kernel_imag)  # set when there are Fourier axes
            kz = jnp.einsum(f"i{letters},{letters}io->o{letters}", z, w)
            for a in self.fourier_axes:
                kz = _modes_to_fourier(kz, a + 1, half=a == last)
            kv = jnp.real(kz).astype(v.dtype)
        pad = [(0, 0)] + [(0, n - k) for n, k in zip(v.shape[1:], kept)]
        out = jnp.pad(kv, pad) + _mix(self.linear, v)
        return _add_const(out, self.bias, d)


class NSM(eqx.Module):
    """Neural Spectral Method operator on a :class:`TensorBasis`.

    ``x (C_in, *basis.shape)`` -> lift (channel mix + bias) -> ``depth`` x [:class:`SpectralLayer` -> spectral
    activation] -> projection (channel mix -> spectral activation -> channel mix) -> ``(C_out, *basis.shape)``.
    The spectral activation transforms to the collocation grid ``activation_grid`` (default: the basis grid, size
    ``n`` per axis), applies ``activation`` pointwise and transforms back.

    Arguments:
        basis: the coefficient basis of input and output.
        in_channels: input channel count.
        out_channels: output channel count.
        width: hidden channels (paper: 64).
        depth: number of spectral layers (paper: 4).
        modes: per-axis number of coefficient indices with per-mode weights (default: all).
        activation: pointwise nonlinearity (paper: ReLU).
        activation_grid: collocation grid shape for the activation (default: the basis shape).
        key: PRNG key.
        kernel_scale: standard deviation of the initial per-mode weights (default ``1 / width^2``).
        output_scale: a fixed factor on the network output, before the problem's constraint (the authors' code
            multiplies by ``1e-3`` in its mollifiers). With Adam every weight moves by about the learning rate per
            step whatever the gradient's size, so the output's change per step is proportional to this factor: the
            solutions of the paper's problems are small (periodic Poisson: ``|u| ~ 1e-2``), and at ``1`` the ReLU
            network at the paper's learning rate overshoots and stalls. Measured on periodic Poisson (paper sources,
            width 32, depth 4, batch 16, 1000 steps, Adam ``1e-3 * 1e-3^(step/steps)``): 56% error at ``1`` vs 1.96%
            at ``1e-3`` with 31x31 modes, 1.48% at ``1e-3`` with 15x15. The package's GELU recipe (Adam 3e-3 decayed
            x0.1) is insensitive to it (0.70% at ``1e-3`` vs 0.54% at ``1`` after 300 steps, 15x15, one seed).
    """

    basis: TensorBasis
    lift: Array
    lift_bias: Array
    layers: tuple[SpectralLayer, ...]
    proj1: Array
    proj1_bias: Array
    proj2: Array
    activation: Callable[[Array], Array] = eqx.field(static=True)
    activation_grid: tuple[int, ...] = eqx.field(static=True)
    output_scale: float = eqx.field(static=True)

    def __init__(
        self,
        basis: TensorBasis,
        in_channels: int,
        out_channels: int = 1,
        width: int = 64,
        depth: int = 4,
        modes: Sequence[int] | None = None,
        activation: Callable[[Array], Array] = jax.nn.relu,
        activation_grid: Sequence[int] | None = None,
        *,
        key: PRNGKeyArray,
        dtype=None,
        kernel_scale: float | None = None,
        output_scale: float = OUTPUT_SCALE,
        index_mixing: bool = True,
    ):
        if not isinstance(basis, TensorBasis):
            raise TypeError(f"`basis` must be a TensorBasis, got {type(basis).__name__}")
        for name, val in (("in_channels", in_channels), ("out_channels", out_channels), ("width", width)):
            if not isinstance(val, int | np.integer) or val < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {val!r}")
        if not isinstance(depth, int | np.integer) or depth < 0:
            raise ValueError(f"`depth` must be a non-negative integer, got {depth!r}")
        modes = basis.shape if modes is None else tuple(int(m) for m in modes)
        if len(modes) != basis.ndim or any(not 1 <= m <= n for m, n in zip(modes, basis.shape)):
            raise ValueError(
                f"`modes` must have {basis.ndim} entries in [1, n] for basis shape {basis.shape}, got {modes}"
            )
        dtype = jnp.result_type(float) if dtype is None else dtype
        keys = jax.random.split(key, depth + 3)
        self.basis = basis
        self.lift = _dense(keys[0], in_channels, width, dtype)
        self.lift_bias = jnp.zeros((width,), dtype)
        fourier = tuple(i for i, b in enumerate(basis.bases) if isinstance(b, Fourier))
        mix = tuple(i for i in range(basis.ndim) if i not in fourier) if index_mixing else ()
        self.layers = tuple(
            SpectralLayer(width, width, modes, k, dtype, kernel_scale, fourier_axes=fourier, mix_axes=mix)
            for k in keys[1 : depth + 1]
        )
        self.proj1 = _dense(keys[depth + 1], width, width, dtype)
        self.proj1_bias = jnp.zeros((width,), dtype)
        self.proj2 = _dense(keys[depth + 2], width, out_channels, dtype)
        self.activation = activation
        self.activation_grid = basis.shape if activation_grid is None else tuple(int(m) for m in activation_grid)
        if not (isinstance(output_scale, int | float | np.floating) and np.isfinite(output_scale) and output_scale > 0):
            raise ValueError(f"`output_scale` must be a positive finite number, got {output_scale!r}")
        self.output_scale = float(output_scale)

    def _act(self, v: Array) -> Array:
        return self.basis.apply(self.activation, v, shape=self.activation_grid)

    def __call__(self, x: Array) -> Array:
        d = self.basis.ndim
        if x.ndim != d + 1 or tuple(x.shape[1:]) != self.basis.shape or x.shape[0] != self.lift.shape[0]:
            raise ValueError(
                f"`x` must have shape ({self.lift.shape[0]}, *{self.basis.shape}) (channels, coefficients), "
                f"got {x.shape}"
            )
        v = _add_const(_mix(self.lift, x), self.lift_bias, d)
        for layer in self.layers:
            v = self._act(layer(v))
        v = self._act(_add_const(_mix(self.proj1, v), self.proj1_bias, d))
        return self.output_scale * _mix(self.proj2, v)


class FourierLayer(eqx.Module):
    """FNO layer ``sigma(K v + W v + b)`` on grid values: ``K`` multiplies the lowest ``modes`` Fourier modes
    (``rfftn``; both signs of the frequency on all but the last axis) by complex channel-mixing weights."""

    weight_re: Array
    weight_im: Array
    linear: Array
    bias: Array
    modes: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, width: int, modes: Sequence[int], key: PRNGKeyArray, dtype=None):
        dtype = jnp.result_type(float) if dtype is None else dtype
        k1, k2, k3 = jax.random.split(key, 3)
        self.modes = tuple(int(m) for m in modes)
        shape = tuple(2 * m for m in self.modes[:-1]) + (self.modes[-1], width, width)
        scale = 1.0 / width
        self.weight_re = scale * jax.random.normal(k1, shape, dtype)
        self.weight_im = scale * jax.random.normal(k2, shape, dtype)
        self.linear = _dense(k3, width, width, dtype)
        self.bias = jnp.zeros((width,), dtype)

    def __call__(self, v: Array) -> Array:
        d = len(self.modes)
        shape = v.shape[1:]
        for i, (n, m) in enumerate(zip(shape, self.modes)):
            need = m if i == d - 1 else 2 * m
            limit = n // 2 + 1 if i == d - 1 else n
            if need > limit:
                raise ValueError(f"grid size {n} along axis {i} is too small for {m} FNO modes")
        vh = jnp.fft.rfftn(v, axes=tuple(range(1, d + 1)))
        idx = [np.concatenate([np.arange(m), np.arange(n - m, n)]) for n, m in zip(shape[:-1], self.modes[:-1])]
        idx.append(np.arange(self.modes[-1]))
        ix = np.ix_(*idx)
        low = vh[(slice(None), *ix)]
        w = (self.weight_re + 1j * self.weight_im).astype(vh.dtype)
        letters = "abc"[:d]
        kv = jnp.einsum(f"i{letters},{letters}io->o{letters}", low, w)
        out_h = jnp.zeros((w.shape[-1], *vh.shape[1:]), vh.dtype).at[(slice(None), *ix)].set(kv)
        kx = jnp.fft.irfftn(out_h, s=shape, axes=tuple(range(1, d + 1))).astype(v.dtype)
        out = kx + _mix(self.linear, v) + self.bias[(slice(None),) + (None,) * d]
        return out


class FNO(eqx.Module):
    """Fourier Neural Operator on uniform grids (the PINN baseline's network).

    ``x (C_in, *grid)`` -> append coordinates in ``[0, 1)`` -> lift -> ``depth`` x [FourierLayer, activation] ->
    projection (channel mix -> activation -> channel mix) -> ``(C_out, *grid)``. ``pad`` zero-pads the grid by that many
    points per axis before the Fourier layers (for non-periodic axes) and crops afterwards. Works on any grid with at
    least ``2 * modes`` points per axis (``modes + 1`` along the last).
    """

    lift: Array
    lift_bias: Array
    layers: tuple[FourierLayer, ...]
    proj1: Array
    proj1_bias: Array
    proj2: Array
    activation: Callable[[Array], Array] = eqx.field(static=True)
    pad: tuple[int, ...] = eqx.field(static=True)

    def __init__(
        self,
        ndim: int,
        in_channels: int,
        out_channels: int = 1,
        width: int = 32,
        depth: int = 4,
        modes: int | Sequence[int] = 12,
        activation: Callable[[Array], Array] = jax.nn.gelu,
        pad: int | Sequence[int] = 0,
        *,
        key: PRNGKeyArray,
        dtype=None,
    ):
        if ndim not in (1, 2, 3):
            raise ValueError(f"`ndim` must be 1, 2 or 3, got {ndim!r}")
        modes = (int(modes),) * ndim if isinstance(modes, int | np.integer) else tuple(int(m) for m in modes)
        if len(modes) != ndim or any(m < 1 for m in modes):
            raise ValueError(f"`modes` must be a positive int or {ndim} positive ints, got {modes}")
        dtype = jnp.result_type(float) if dtype is None else dtype
        keys = jax.random.split(key, depth + 3)
        self.lift = _dense(keys[0], in_channels + ndim, width, dtype)
        self.lift_bias = jnp.zeros((width,), dtype)
        self.layers = tuple(FourierLayer(width, modes, k, dtype) for k in keys[1 : depth + 1])
        self.proj1 = _dense(keys[depth + 1], width, 2 * width, dtype)
        self.proj1_bias = jnp.zeros((2 * width,), dtype)
        self.proj2 = _dense(keys[depth + 2], 2 * width, out_channels, dtype)
        self.activation = activation
        self.pad = (int(pad),) * ndim if isinstance(pad, int | np.integer) else tuple(int(p) for p in pad)

    def __call__(self, x: Array) -> Array:
        d = len(self.pad)
        if x.ndim != d + 1 or x.shape[0] + d != self.lift.shape[0]:
            raise ValueError(f"`x` must have shape ({self.lift.shape[0] - d}, *grid) with {d} grid axes, got {x.shape}")
        shape = x.shape[1:]
        coords = jnp.meshgrid(*[jnp.arange(n, dtype=x.dtype) / n for n in shape], indexing="ij")
        x = jnp.concatenate([x, jnp.stack(coords)], axis=0)
        bshape = (slice(None),) + (None,) * d
        v = _mix(self.lift, x) + self.lift_bias[bshape]
        v = jnp.pad(v, [(0, 0)] + [(0, p) for p in self.pad])
        for i, layer in enumerate(self.layers):
            v = layer(v)
            if i < len(self.layers) - 1:
                v = self.activation(v)
        v = v[(slice(None), *[slice(0, n) for n in shape])]
        v = self.activation(_mix(self.proj1, v) + self.proj1_bias[bshape])
        return _mix(self.proj2, v)
