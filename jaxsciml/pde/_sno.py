"""SNO (Fanaskov & Oseledets, "Spectral Neural Operators", 2022): a coefficient-to-coefficient operator whose layers
mix coefficient indices with a dense kernel and apply the nonlinearity to the coefficients themselves. One of the NSM
paper's baselines, trained there (and here, through :func:`nsm_loss`) with the spectral loss."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from ._t1 import _dense, _mix
from ._tensor import TensorBasis

__all__ = ["SNO", "SNO_OUTPUT_SCALE"]

SNO_OUTPUT_SCALE = 1e-3
"""Default :attr:`SNO.output_scale`: the factor of the NSM authors' mollifiers (``1e-3``), which their code applies to
every spectral model, SNO included (the same default as the NSM's)."""


class SNO(eqx.Module):
    """Spectral Neural Operator on a :class:`TensorBasis`: coefficients in, coefficients out, nonlinearity on the
    coefficients.

    With ``M = prod(basis.shape)`` coefficients flattened to one index ``m``: ``x (C_in, *basis.shape)`` ->
    lift ``v_c,m <- sum_i L_ic x_i,m + b_c`` -> ``depth`` x [``v_o,m <- sigma( sum_c W_co sum_n v_c,n A_nm + b_o )``]
    -> ``P_2 sigma(P_1 v + b_1)`` -> ``output_scale * (C_out, *basis.shape)``.

    ``A (M, M)`` is a dense *mode-mixing* kernel shared by the channels (any linear map between coefficient vectors;
    the NSM's is diagonal in the mode), ``W`` a channel mix, and ``sigma`` is applied to the **coefficients**
    directly (the NSM applies it to values on the collocation grid), as are the biases, which are added to every
    coefficient. This is the structure of the SNO baseline in the NSM authors' code (a dense map over all coefficient
    indices per layer, then a channel-mixing dense layer and the activation on coefficients), with this package's NSM
    lift/projection so that the two differ only in the layers. The network has no grid: it cannot be evaluated on
    another number of coefficients, and costs ``O(width M^2)`` per layer.

    Initialisation: ``A = I + N(0, kernel_scale^2)`` (default ``kernel_scale = 1 / M``): at step 0 each coefficient
    only feeds itself, as in the NSM whose small per-mode weights keep high modes near zero at the start; the authors'
    code initialises ``A`` LeCun-normal (``std 1 / sqrt(M)``), which mixes every mode into every other from step 0.
    ``W``, ``L``, ``P``: uniform ``+-1/sqrt(fan_in)``; biases zero.

    Arguments:
        basis: the coefficient basis of input and output (e.g. ``problem.basis``).
        in_channels: input channels.
        out_channels: output channels.
        width: hidden channels. depth: number of mode-mixing layers.
        activation: the nonlinearity applied to coefficients.
        key: PRNG key.
        kernel_scale: standard deviation of the initial deviation of ``A`` from the identity.
        output_scale: fixed factor on the output (default :data:`SNO_OUTPUT_SCALE`, the authors' mollifier factor).
        dtype: real parameter dtype.

    References:
        V. Fanaskov, I. Oseledets, "Spectral Neural Operators", arXiv 2205.10573 (2022); used as a baseline (with the
        spectral loss) in Y. Du, N. Chalapathi, A. Krishnapriyan, "Neural Spectral Methods", ICLR 2024.
    """

    basis: TensorBasis
    lift: Array
    lift_bias: Array
    mode_mix: tuple[Array, ...]
    channel_mix: tuple[Array, ...]
    channel_bias: tuple[Array, ...]
    proj1: Array
    proj1_bias: Array
    proj2: Array
    activation: Callable[[Array], Array] = eqx.field(static=True)
    output_scale: float = eqx.field(static=True)

    def __init__(
        self,
        basis: TensorBasis,
        in_channels: int,
        out_channels: int = 1,
        width: int = 32,
        depth: int = 4,
        activation: Callable[[Array], Array] = jax.nn.gelu,
        *,
        key: PRNGKeyArray,
        kernel_scale: float | None = None,
        output_scale: float = SNO_OUTPUT_SCALE,
        dtype=None,
    ):
        if not isinstance(basis, TensorBasis):
            raise TypeError(f"`basis` must be a TensorBasis, got {type(basis).__name__}")
        for name, val in (("in_channels", in_channels), ("out_channels", out_channels), ("width", width)):
            if isinstance(val, bool) or not isinstance(val, int | np.integer) or val < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {val!r}")
        if isinstance(depth, bool) or not isinstance(depth, int | np.integer) or depth < 0:
            raise ValueError(f"`depth` must be a non-negative integer, got {depth!r}")
        if not (isinstance(output_scale, int | float | np.floating) and np.isfinite(output_scale) and output_scale > 0):
            raise ValueError(f"`output_scale` must be a positive finite number, got {output_scale!r}")
        m = int(np.prod(basis.shape))
        scale = 1.0 / m if kernel_scale is None else float(kernel_scale)
        if not (np.isfinite(scale) and scale >= 0):
            raise ValueError(f"`kernel_scale` must be a non-negative finite number, got {kernel_scale!r}")
        dtype = jnp.result_type(float) if dtype is None else dtype
        keys = jax.random.split(key, 2 * depth + 3)
        self.basis = basis
        self.lift = _dense(keys[0], in_channels, width, dtype)
        self.lift_bias = jnp.zeros((width,), dtype)
        eye = jnp.eye(m, dtype=dtype)
        self.mode_mix = tuple(eye + scale * jax.random.normal(k, (m, m), dtype) for k in keys[1 : depth + 1])
        self.channel_mix = tuple(_dense(k, width, width, dtype) for k in keys[depth + 1 : 2 * depth + 1])
        self.channel_bias = tuple(jnp.zeros((width,), dtype) for _ in range(depth))
        self.proj1 = _dense(keys[2 * depth + 1], width, width, dtype)
        self.proj1_bias = jnp.zeros((width,), dtype)
        self.proj2 = _dense(keys[2 * depth + 2], width, out_channels, dtype)
        self.activation = activation
        self.output_scale = float(output_scale)

    def __call__(self, x: Array) -> Array:
        d = self.basis.ndim
        if x.ndim != d + 1 or tuple(x.shape[1:]) != self.basis.shape or x.shape[0] != self.lift.shape[0]:
            raise ValueError(
                f"`x` must have shape ({self.lift.shape[0]}, *{self.basis.shape}) (channels, coefficients), "
                f"got {x.shape}"
            )
        b = (slice(None), None)
        v = x.reshape(x.shape[0], -1)  # (C, M)
        v = _mix(self.lift, v) + self.lift_bias[b]
        for a, w, bias in zip(self.mode_mix, self.channel_mix, self.channel_bias):
            v = self.activation(_mix(w, v @ a) + bias[b])
        v = self.activation(_mix(self.proj1, v) + self.proj1_bias[b])
        v = _mix(self.proj2, v)
        return self.output_scale * v.reshape((v.shape[0],) + self.basis.shape)
