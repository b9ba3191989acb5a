"""One-dimensional spectral bases: Fourier (periodic) and Chebyshev (bounded interval).

Every operation works along one array axis (``axis=-1`` by default) and broadcasts over all other axes, so the same code
serves single fields, batches, channels and tensor-product bases (:class:`jaxsciml.pde.TensorBasis` applies the 1-D
operations axis by axis). All operations are pure ``jax.numpy`` and are ``jit``/``vmap``/``grad``-safe; they follow the
dtype of their input (float32 or float64). Transforms of up to ``DENSE_TRANSFORM_MAX`` points are small cached matrix
products (faster than an FFT at these sizes on CPU); larger ones cost O(n log n) (``jnp.fft``).

Coefficient layouts
-------------------
**Fourier** on ``[a, a + L)`` with an odd number ``n = 2K + 1`` of real coefficients::

    c = [a_0, a_1, b_1, a_2, b_2, ..., a_K, b_K]
    u(x) = a_0 + sum_{k=1}^{K} a_k cos(2 pi k (x - a) / L) + b_k sin(2 pi k (x - a) / L)

(amplitude normalisation: ``a_k`` *is* the amplitude of the k-th cosine). The collocation grid has ``m >= n`` equispaced
points ``x_j = a + L j / m``. Parseval: ``int u^2 dx = L (a_0^2 + 1/2 sum_k (a_k^2 + b_k^2))``.

**Chebyshev** on ``[a, b]`` with ``n >= 2`` coefficients::

    u(x) = sum_{k=0}^{n-1} c_k T_k(s),   s = 2 (x - a) / (b - a) - 1 in [-1, 1]

The collocation grid is the Chebyshev--Gauss--Lobatto grid ``s_j = -cos(pi j / (m - 1))``, ``j = 0..m-1`` (ascending,
endpoints included). The forward/inverse transforms are DCT-I's computed with a real FFT of the even extension
(length ``2(m-1)``).

References: J. P. Boyd, *Chebyshev and Fourier Spectral Methods* (2nd ed., Dover 2001), ch. 2-4 and app. A;
L. N. Trefethen, *Spectral Methods in MATLAB* (SIAM 2000), ch. 3 and 8.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

__all__ = ["AbstractBasis", "Fourier", "Chebyshev", "dealias_size"]


def _jit_when_eager(method: Callable) -> Callable:
    """Compile a method with ``eqx.filter_jit`` when it is called eagerly (no tracer among the arguments), so eager
    use does not dispatch dozens of small ops; under an outer transformation it is inlined as plain code (nesting a
    jit here would also trip an XLA:CPU FFT-layout check when the outer function is partitioned with GSPMD)."""
    jitted = eqx.filter_jit(method)

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        if any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves((args, kwargs))):
            return method(*args, **kwargs)
        return jitted(*args, **kwargs)

    return wrapper


def dealias_size(n: int) -> int:
    """Number of collocation points for an aliasing-free quadratic product of two size-``n`` expansions (3/2 rule).

    ``ceil(3 n / 2)``: for Fourier (``n = 2K+1``) this is ``>= 3K + 1``; for Chebyshev--Lobatto it is ``>= 3n/2``. With
    this many points, a product computed on the grid and transformed back has exact coefficients ``0..n-1``.
    """
    return (3 * n + 1) // 2


def _check_axis_len(x: Array, axis: int, expected: int, name: str, what: str) -> None:
    if x.ndim == 0:
        raise ValueError(f"`{name}` must have at least one dimension ({what} along axis {axis}), got a scalar")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"`axis`={axis} is out of range for `{name}` with shape {x.shape}")
    if x.shape[axis] != expected:
        raise ValueError(
            f"`{name}` must have {what} = {expected} along axis {axis}, got shape {x.shape} (size {x.shape[axis]})"
        )


def _along(fn: Callable[[Array], Array], x: Array, axis: int) -> Array:
    """Apply ``fn`` (acting on the last axis) along ``axis``."""
    x = jnp.moveaxis(x, axis, -1)
    return jnp.moveaxis(fn(x), -1, axis)


def _float(x: ArrayLike, name: str = "coeffs") -> Array:
    """``x`` as a real float32/float64 array; complex and half-precision input is rejected at trace time (the bases
    hold real coefficients, and ``jnp.fft`` has no float16/bfloat16 kernels)."""
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise TypeError(
            f"`{name}` must be real (the bases hold real coefficients [a_0, a_1, b_1, ...] / Chebyshev c_k), got "
            f"dtype {x.dtype}; pass the real and imaginary parts separately"
        )
    if x.dtype in (jnp.float16, jnp.bfloat16):
        raise TypeError(
            f"`{name}` has dtype {x.dtype}: spectral transforms need float32 or float64, cast with .astype(jnp.float32)"
        )
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(jnp.result_type(float))
    return x


def runtime_check(x: Array, failed: Array, msg: str) -> Array:
    """``x`` unchanged, or an error ``msg`` if ``failed`` is true. Called eagerly on concrete values, it raises a plain
    ``ValueError(msg)`` at once (the message is the first line the user reads); under ``jit``/``vmap``/``grad`` it is
    ``eqx.error_if`` (a run-time ``EquinoxRuntimeError`` carrying ``msg``)."""
    if not isinstance(failed, jax.core.Tracer) and not isinstance(x, jax.core.Tracer):
        if bool(jnp.any(failed)):
            raise ValueError(msg)
        return x
    return eqx.error_if(x, failed, msg)


def check_finite(x: Array, name: str) -> Array:
    """``x`` unchanged, with an error if it holds NaN or inf (:func:`runtime_check`: a ``ValueError`` when called
    eagerly, ``eqx.error_if`` under jit/vmap/grad)."""
    return runtime_check(x, ~jnp.all(jnp.isfinite(x)), f"`{name}` contains NaN or inf")


class AbstractBasis(eqx.Module):
    """A one-dimensional spectral basis of ``n`` real coefficients on an interval ``domain = (a, b)``."""

    n: eqx.AbstractVar[int]
    domain: eqx.AbstractVar[tuple[float, float]]

    #: ``True`` for periodic bases.
    periodic: eqx.AbstractClassVar[bool]
    #: ``"fourier"`` or ``"chebyshev"``.
    kind: eqx.AbstractClassVar[str]

    @property
    def length(self) -> float:
        return self.domain[1] - self.domain[0]

    def check_coeffs(self, coeffs: Array, axis: int = -1, name: str = "coeffs") -> None:
        """Raise ``ValueError`` unless ``coeffs.shape[axis] == n``."""
        _check_axis_len(jnp.asarray(coeffs), axis, self.n, name, f"{self.kind} basis size n")

    @abc.abstractmethod
    def grid(self, m: int | None = None) -> np.ndarray:
        """The ``m``-point collocation grid (default ``m = n``) in physical coordinates, ascending, as NumPy."""

    @abc.abstractmethod
    def forward(self, values: Array, axis: int = -1) -> Array:
        """Values on the ``m``-point grid (``m >= n``) along ``axis`` -> the first ``n`` coefficients (interpolate then
        truncate, which is the dealiasing projection when ``m`` is a padded size)."""

    @abc.abstractmethod
    def inverse(self, coeffs: Array, m: int | None = None, axis: int = -1) -> Array:
        """Coefficients along ``axis`` -> values on the ``m``-point grid (``m >= n``, default ``n``; zero padding)."""

    @abc.abstractmethod
    def derivative(self, coeffs: Array, order: int = 1, axis: int = -1) -> Array:
        """Coefficients of the ``order``-th derivative (exact, same size ``n``)."""

    @abc.abstractmethod
    def integrate(self, coeffs: Array, axis: int = -1) -> Array:
        """Definite integral over the domain (reduces ``axis``)."""

    @abc.abstractmethod
    def basis_matrix(self, x: ArrayLike) -> Array:
        """``Phi[p, k] = phi_k(x_p)`` for points ``x`` of shape ``(P,)``; shape ``(P, n)``."""

    @abc.abstractmethod
    def evaluate(self, coeffs: Array, x: ArrayLike, axis: int = -1) -> Array:
        """Values at arbitrary points ``x`` (shape ``(P,)``); ``axis`` is replaced by an axis of length ``P``."""

    @abc.abstractmethod
    def gram(self) -> np.ndarray:
        """Gram matrix ``G[j, k] = int phi_j phi_k dx`` over the domain (NumPy, ``(n, n)``)."""

    @abc.abstractmethod
    def apply_gram(self, coeffs: Array, axis: int = -1) -> Array:
        """``G @ coeffs`` along ``axis``."""

    def _check_m(self, m: int | None, name: str = "m") -> int:
        m = self.n if m is None else int(m)
        if m < self.n:
            raise ValueError(f"`{name}` (number of grid points) must be >= basis size n={self.n}, got {m}")
        return m

    def _check_values(self, values: ArrayLike, axis: int) -> tuple[Array, int]:
        values = _float(values, "values")
        if values.ndim == 0:
            raise ValueError("`values` must have at least one dimension, got a scalar")
        m = values.shape[axis]
        if m < self.n:
            raise ValueError(
                f"`values` must have at least n={self.n} grid points along axis {axis} for a {self.kind} basis of "
                f"size n={self.n}, got shape {values.shape}"
            )
        return values, m

    def _check_order(self, order: int) -> int:
        if not isinstance(order, int | np.integer) or order < 0:
            raise ValueError(f"`order` must be a non-negative integer, got {order!r}")
        return int(order)


class Fourier(AbstractBasis):
    """Real Fourier basis on the periodic interval ``[a, a + L)``; ``n = 2K + 1`` coefficients (odd).

    Layout ``[a_0, a_1, b_1, ..., a_K, b_K]`` with ``u = a_0 + sum a_k cos(2 pi k x/L) + b_k sin(2 pi k x/L)``
    (see module docstring). Forward/inverse via ``jnp.fft.rfft``/``irfft`` on ``m >= n`` equispaced points.

    Arguments:
        n: number of real coefficients, odd (``K = (n - 1) / 2`` is the largest wavenumber).
        domain: ``(a, b)`` with period ``L = b - a > 0`` (default ``(0, 1)``).
    """

    n: int = eqx.field(static=True)
    domain: tuple[float, float] = eqx.field(static=True)
    periodic = True
    kind = "fourier"

    def __init__(self, n: int, domain: tuple[float, float] = (0.0, 1.0)):
        if not isinstance(n, int | np.integer) or n < 1 or n % 2 == 0:
            raise ValueError(
                f"Fourier basis size `n` must be a positive odd integer (n = 2K + 1 real coefficients "
                f"[a_0, a_1, b_1, ..., a_K, b_K]), got n={n!r}"
            )
        a, b = float(domain[0]), float(domain[1])
        if not b > a:
            raise ValueError(f"`domain` must be (a, b) with b > a, got {domain!r}")
        self.n = int(n)
        self.domain = (a, b)

    @property
    def kmax(self) -> int:
        return (self.n - 1) // 2

    def wavenumbers(self) -> np.ndarray:
        """Angular wavenumber of each coefficient: ``[0, w_1, w_1, ..., w_K, w_K]`` with ``w_k = 2 pi k / L``."""
        k = np.repeat(np.arange(1, self.kmax + 1), 2)
        return np.concatenate([[0.0], 2 * np.pi * k / self.length])

    def grid(self, m: int | None = None) -> np.ndarray:
        m = self._check_m(m) if m is not None else self.n
        return self.domain[0] + self.length * np.arange(m) / m

    def _to_complex(self, c: Array) -> Array:
        """Real layout (last axis) -> complex ``X_k`` (``k = 0..K``) with ``u = sum_k X_k e^{ikx} + c.c.`` (k > 0)."""
        a0 = c[..., :1].astype(jnp.result_type(c.dtype, jnp.complex64))
        ab = c[..., 1:].reshape(*c.shape[:-1], self.kmax, 2)
        xk = 0.5 * (ab[..., 0] - 1j * ab[..., 1])
        return jnp.concatenate([a0, xk], axis=-1)

    def _from_complex(self, z: Array) -> Array:
        ab = jnp.stack([2 * z[..., 1:].real, -2 * z[..., 1:].imag], axis=-1)
        ab = ab.reshape(*z.shape[:-1], 2 * self.kmax)
        return jnp.concatenate([z[..., :1].real, ab], axis=-1)

    @_jit_when_eager
    def forward(self, values: Array, axis: int = -1) -> Array:
        values, m = self._check_values(values, axis)

        return _along(lambda v: _fourier_forward(v, self.n), values, axis)

    @_jit_when_eager
    def inverse(self, coeffs: Array, m: int | None = None, axis: int = -1) -> Array:
        coeffs = _float(coeffs)
        self.check_coeffs(coeffs, axis)
        m = self._check_m(m)

        return _along(lambda c: _fourier_inverse(c, m), coeffs, axis)

    @_jit_when_eager
    def derivative(self, coeffs: Array, order: int = 1, axis: int = -1) -> Array:
        coeffs = _float(coeffs)
        self.check_coeffs(coeffs, axis)
        order = self._check_order(order)
        if order == 0:
            return coeffs
        w = 2 * np.pi * np.arange(1, self.kmax + 1) / self.length
        factor = (1j * w) ** order  # numpy complex128, exact-ish per mode

        def fn(c):
            z = self._to_complex(c)
            zk = z[..., 1:] * jnp.asarray(factor, dtype=z.dtype)
            z = jnp.concatenate([jnp.zeros_like(z[..., :1]), zk], axis=-1)
            return self._from_complex(z).astype(c.dtype)

        return _along(fn, coeffs, axis)

    @_jit_when_eager
    def antiderivative(self, coeffs: Array, axis: int = -1) -> Array:
        """Periodic antiderivative of ``u - mean(u)`` with zero mean (the mean ``a_0`` cannot be integrated
        periodically; it contributes ``a_0 (x - a)``, which is not representable and is dropped)."""
        coeffs = _float(coeffs)
        self.check_coeffs(coeffs, axis)
        w = 2 * np.pi * np.arange(1, self.kmax + 1) / self.length

        def fn(c):
            z = self._to_complex(c)
            zk = z[..., 1:] / jnp.asarray(1j * w, dtype=z.dtype)
            z = jnp.concatenate([jnp.zeros_like(z[..., :1]), zk], axis=-1)
            return self._from_complex(z).astype(c.dtype)

        return _along(fn, coeffs, axis)

    @_jit_when_eager
    def integrate(self, coeffs: Array, axis: int = -1) -> Array:
        coeffs = _float(coeffs)
        self.check_coeffs(coeffs, axis)
        return self.length * jnp.take(coeffs, 0, axis=axis)

    def basis_matrix(self, x: ArrayLike) -> Array:
        x = _float(x)
        if x.ndim != 1:
            raise ValueError(f"`x` must be a 1-D array of points, got shape {x.shape}")
        w = jnp.asarray(2 * np.pi * np.arange(1, self.kmax + 1) / self.length, dtype=x.dtype)
        th = (x[:, None] - self.domain[0]) * w[None, :]
        cs = jnp.stack([jnp.cos(th), jnp.sin(th)], axis=-1).reshape(x.shape[0], 2 * self.kmax)
        return jnp.concatenate([jnp.ones_like(x)[:, None], cs], axis=-1)

    @_jit_when_eager
    def evaluate(self, coeffs: Array, x: ArrayLike, axis: int = -1) -> Array:
        """Direct sum ``u(x_p) = sum_k c_k phi_k(x_p)`` at arbitrary points (O(n P))."""
        coeffs = _float(coeffs)
        self.check_coeffs(coeffs, axis)
        phi = self.basis_matrix(jnp.asarray(x, dtype=coeffs.dtype))
        return _along(lambda c: c @ phi.T, coeffs, axis)

    def weights(self) -> np.ndarray:
        """Diagonal of the Gram matrix: ``[L, L/2, L/2, ..., L/2]``."""
        w = np.full(self.n, self.length / 2)
        w[0] = self.length
        return w

    def gram(self) -> np.ndarray:
        return np.diag(self.weights())

    @_jit_when_eager
    def apply_gram(self, coeffs: Array, axis: int = -1) -> Array:
        coeffs = _float(coeffs)
        self.check_coeffs(coeffs, axis)
        return _along(lambda c: c * jnp.asarray(self.weights(), c.dtype), coeffs, axis)


def _even_integrals(k: np.ndarray) -> np.ndarray:
    """``int_{-1}^{1} T_k ds = 2 / (1 - k^2)`` for even ``k``, ``0`` for odd ``k``."""
    k = np.asarray(k)
    even = k % 2 == 0
    denom = np.where(even, 1.0 - k.astype(float) ** 2, 1.0)
    return np.where(even, 2.0 / denom, 0.0)


def _dct1(v: Array) -> Array:
    """Unnormalised DCT-I along the last axis: ``y_k = v_0 + (-1)^k v_N + 2 sum_{j=1}^{N-1} v_j cos(pi j k / N)``,
    computed as a real FFT of the even extension (length ``2N``)."""
    ext = jnp.concatenate([v, v[..., -2:0:-1]], axis=-1)
    return jnp.fft.rfft(ext, axis=-1).real.astype(v.dtype)


# --------------------------------------------------------------------------------------------------------------------
# Transform kernels along the last axis, with hand-written adjoints (custom VJPs).
#
# Each transform is linear and its adjoint is the *other* transform up to diagonal weights, so the backward pass runs
# the same FFTs as the forward pass. (Besides being cheaper, this sidesteps an XLA:CPU failure -- a RET_CHECK on the FFT
# operand layout -- seen when the autodiff transposes of chained multi-axis rfft/irfft ops are partitioned by GSPMD.)


#: Transforms whose grid and coefficient counts are both at most this size multiply by a cached dense matrix (built
#: in float64 from the closed-form cosines/sines, applied at ``Precision.HIGHEST``) instead of calling ``jnp.fft``: on
#: CPU an FFT of a few dozen points costs far more per element than a small matmul (NSM layers: activations at the
#: basis size, e.g. 17 or 31 points), while the O(n log n) FFT path keeps large evaluation grids cheap.
DENSE_TRANSFORM_MAX = 64


def _dense(m: int, n: int) -> bool:
    return max(m, n) <= DENSE_TRANSFORM_MAX


def _matmul_last(x: Array, mat: np.ndarray) -> Array:
    """``x @ mat`` along the last axis, at full precision (``mat`` a float64 NumPy constant, cast to ``x``'s dtype)."""
    return jnp.matmul(x, jnp.asarray(mat, x.dtype), precision=jax.lax.Precision.HIGHEST)


@functools.lru_cache(maxsize=256)
def _fourier_matrices(m: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(F, Inv)``: ``coeffs = values @ F`` (``m x n``), ``values = coeffs @ Inv`` (``n x m``) on ``x_j = j / m``."""
    kmax = (n - 1) // 2
    j = np.arange(m)[:, None]
    k = np.arange(1, kmax + 1)[None, :]
    cos, sin = np.cos(2 * np.pi * j * k / m), np.sin(2 * np.pi * j * k / m)
    inv = np.empty((n, m))
    inv[0] = 1.0
    inv[1::2], inv[2::2] = cos.T, sin.T
    fwd = np.empty((m, n))
    fwd[:, 0] = 1.0 / m
    fwd[:, 1::2], fwd[:, 2::2] = (2.0 / m) * cos, (2.0 / m) * sin
    return fwd, inv


@functools.lru_cache(maxsize=256)
def _chebyshev_matrices(m: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(F, Inv)`` for the ascending ``m``-point Lobatto grid and ``n`` coefficients: ``Inv[k, i] = T_k(s_i)``,
    ``F`` the interpolating (DCT-I) transform truncated to ``n`` coefficients."""
    nn = m - 1
    theta = np.pi * np.arange(m) / nn  # s_i = -cos(theta_i) = cos(pi - theta_i)
    inv = np.cos(np.arange(n)[:, None] * (np.pi - theta)[None, :])
    w = np.ones(m)
    w[0] = w[-1] = 0.5
    kk = np.arange(n)
    h = np.where((kk == 0) | (kk == nn), 0.5, 1.0)
    fwd = (2.0 / nn) * w[:, None] * np.cos((np.pi - theta)[:, None] * kk[None, :]) * h[None, :]
    return fwd, inv


def _fourier_weights(n: int, dtype, value: float) -> Array:
    w = np.full(n, value)
    w[0] = 1.0
    return jnp.asarray(w, dtype)


def _fourier_forward_impl(v: Array, n: int) -> Array:
    m, kmax = v.shape[-1], (n - 1) // 2
    if _dense(m, n):
        return _matmul_last(v, _fourier_matrices(m, n)[0])
    z = jnp.fft.rfft(v, axis=-1)[..., : kmax + 1] / m
    ab = jnp.stack([2 * z[..., 1:].real, -2 * z[..., 1:].imag], axis=-1).reshape(*z.shape[:-1], 2 * kmax)
    return jnp.concatenate([z[..., :1].real, ab], axis=-1).astype(v.dtype)


def _fourier_inverse_impl(c: Array, m: int) -> Array:
    n = c.shape[-1]
    if _dense(m, n):
        return _matmul_last(c, _fourier_matrices(m, n)[1])
    kmax = (n - 1) // 2
    a0 = c[..., :1].astype(jnp.result_type(c.dtype, jnp.complex64))
    ab = c[..., 1:].reshape(*c.shape[:-1], kmax, 2)
    z = jnp.concatenate([a0, 0.5 * (ab[..., 0] - 1j * ab[..., 1])], axis=-1)
    z = jnp.pad(z, [(0, 0)] * (z.ndim - 1) + [(0, m // 2 + 1 - z.shape[-1])])
    return jnp.fft.irfft(z * m, n=m, axis=-1).astype(c.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _fourier_forward(v: Array, n: int) -> Array:
    """``m`` equispaced values -> ``n`` real-layout coefficients (last axis)."""
    return _fourier_forward_impl(v, n)


def _fourier_forward_fwd(v, n):
    return _fourier_forward_impl(v, n), v.shape[-1]


def _fourier_forward_bwd(n, m, ct):
    # c = F v with a_0 = mean(v), a_k = (2/m) sum v cos, b_k = (2/m) sum v sin  =>  F^T c = Inv_m(w c) / m, w = [1,2,..]
    return (_fourier_inverse(ct * _fourier_weights(n, ct.dtype, 2.0), m) / m,)


_fourier_forward.defvjp(_fourier_forward_fwd, _fourier_forward_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _fourier_inverse(c: Array, m: int) -> Array:
    """``n`` real-layout coefficients -> values on ``m`` equispaced points (last axis)."""
    return _fourier_inverse_impl(c, m)


def _fourier_inverse_fwd(c, m):
    return _fourier_inverse_impl(c, m), c.shape[-1]


def _fourier_inverse_bwd(m, n, ct):
    # Inv^T v = [sum v, sum v cos, sum v sin, ...] = m * F(v) * [1, 1/2, 1/2, ...]
    return (m * _fourier_forward(ct, n) * _fourier_weights(n, ct.dtype, 0.5),)


_fourier_inverse.defvjp(_fourier_inverse_fwd, _fourier_inverse_bwd)


def _chebyshev_forward_impl(v: Array, n: int) -> Array:
    m = v.shape[-1]
    if _dense(m, n):
        return _matmul_last(v, _chebyshev_matrices(m, n)[0])
    nn = m - 1
    y = _dct1(jnp.flip(v, axis=-1)) / nn  # descending points s_j = cos(pi j / N)
    y = y.at[..., 0].multiply(0.5).at[..., nn].multiply(0.5)
    return y[..., :n]


def _chebyshev_inverse_impl(c: Array, m: int) -> Array:
    if _dense(m, c.shape[-1]):
        return _matmul_last(c, _chebyshev_matrices(m, c.shape[-1])[1])
    c = jnp.pad(c, [(0, 0)] * (c.ndim - 1) + [(0, m - c.shape[-1])])
    d = c.at[..., 0].multiply(2.0).at[..., m - 1].multiply(2.0)
    return jnp.flip(0.5 * _dct1(d), axis=-1)


def _lobatto_end_weights(m: int, dtype) -> Array:
    """``w_j = 1/2`` at both ends, 1 inside (the DCT-I endpoint weights; symmetric, so order-independent)."""
    w = np.ones(m)
    w[0] = w[-1] = 0.5
    return jnp.asarray(w, dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _chebyshev_forward(v: Array, n: int) -> Array:
    """Values on the ascending ``m``-point Lobatto grid -> the first ``n`` Chebyshev coefficients (last axis)."""
    return _chebyshev_forward_impl(v, n)


def _chebyshev_forward_fwd(v, n):
    return _chebyshev_forward_impl(v, n), v.shape[-1]


def _chebyshev_forward_bwd(n, m, ct):
    # c_k = (2/N) h_k sum_j w_j v_j cos(pi j k / N)  =>  F^T c = (2/N) w * Inv(h c); h_k = 1/2 at k = 0 and k = N
    nn = m - 1
    h = _lobatto_end_weights(m, ct.dtype)[:n]
    return ((2.0 / nn) * _lobatto_end_weights(m, ct.dtype) * _chebyshev_inverse(ct * h, m),)


_chebyshev_forward.defvjp(_chebyshev_forward_fwd, _chebyshev_forward_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _chebyshev_inverse(c: Array, m: int) -> Array:
    """``n`` Chebyshev coefficients -> values on the ascending ``m``-point Lobatto grid (last axis)."""
    return _chebyshev_inverse_impl(c, m)


def _chebyshev_inverse_fwd(c, m):
    return _chebyshev_inverse_impl(c, m), c.shape[-1]


def _chebyshev_inverse_bwd(m, n, ct):
    # Inv^T v = sum_j v_j cos(pi j k / N) = (N / (2 h_k)) F(v / w)_k
    nn = m - 1
    h = _lobatto_end_weights(m, ct.dtype)[:n]
    return ((nn / 2.0) * _chebyshev_forward(ct / _lobatto_end_weights(m, ct.dtype), n) / h,)


_chebyshev_inverse.defvjp(_chebyshev_inverse_fwd, _chebyshev_inverse_bwd)


class Chebyshev(AbstractBasis):
    """Chebyshev polynomials ``T_0..T_{n-1}`` on ``[a, b]`` (non-periodic), Gauss--Lobatto collocation.

    Forward and inverse transforms are DCT-I's computed by ``jnp.fft.rfft`` on the even extension; differentiation uses
    the backward recurrence ``c'_{k-1} = c'_{k+1} + 2 k c_k`` (evaluated as parity-split reverse cumulative sums, O(n));
    evaluation at arbitrary points uses Clenshaw's recurrence.

    Boundary conditions (:meth:`enforce_bc`) use the *boundary-row (tau) method*: the two highest coefficients are
    replaced so that the two boundary conditions hold exactly; for the reference solvers the same boundary rows replace
    the last two rows of the collocation system.

    Arguments:
        n: number of coefficients (``>= 2``).
        domain: ``(a, b)`` with ``b > a`` (default ``(0, 1)``).
    """

    n: int = eqx.field(static=True)
    domain: tuple[float, float] = eqx.field(static=True)
    periodic = False
    kind = "chebyshev"

    def __init__(self, n: int, domain: tuple[float, float] = (0.0, 1.0)):
        if not isinstance(n, int | np.integer) or n < 2:
            raise ValueError(f"Chebyshev basis size `n` must be an integer >= 2, got n={n!r}")
        a, b = float(domain[0]), float(domain[1])
        if not b > a:
            raise ValueError(f"`domain` must be (a, b) with b > a, got {domain!r}")
        self.n = int(n)
        self.domain = (a, b)

    def _to_unit(self, x: Array) -> Array:
        return 2 * (x - self.domain[0]) / self.length - 1

    def grid(self, m: int | None = None) -> np.ndarray:
        m = self._check_m(m) if m is not None else self.n
        s = -np.cos(np.pi * np.arange(m) / (m - 1))
        return self.domain[0] + self.length * (s + 1) / 2

    @_jit_when_eager
    def forward(self, values: Array, axis: int = -1) -> Array:
        values, m = self._check_values(values, axis)

        return _along(lambda v: _chebyshev_forward(v, self.n), values, axis)

    @_jit_when_eager
    def inverse(self, coeffs: Array, m: int | None = None, axis: int = -1) -> Array:
        coeffs = _float(coeffs)
        self.check_coeffs(coeffs, axis)
        m = self._check_m(m)

        return _along(lambda c: _chebyshev_inverse(c, m), coeffs, axis)

    @_jit_when_eager
    def derivative(self, coeffs: Array, order: int = 1, axis: int = -1) -> Array:
        coeffs = _float(coeffs)
        self.check_coeffs(coeffs, axis)
        order = self._check_order(order)
        n = self.n
        scale = 2.0 / self.length

        def once(c):
            e = c * jnp.asarray(2.0 * np.arange(n), c.dtype)
            npad = n + (n % 2)
            e = jnp.pad(e, [(0, 0)] * (c.ndim - 1) + [(0, npad - n)])
            e = e.reshape(*c.shape[:-1], npad // 2, 2)
            r = jnp.flip(jnp.cumsum(jnp.flip(e, -2), axis=-2), -2).reshape(*c.shape[:-1], npad)
            b = jnp.concatenate([r[..., 1:n], jnp.zeros_like(r[..., :1])], axis=-1)
            b = b.at[..., 0].multiply(0.5)
            return b * scale

        def fn(c):
            for _ in range(order):
                c = once(c)
            return c

        return _along(fn, coeffs, axis)

    @_jit_when_eager
    def antiderivative(self, coeffs: Array, axis: int = -1) -> Array:
        """Antiderivative vanishing at the left end ``a``; exact, so it has ``n + 1`` coefficients along ``axis``
        (``I_k = (c_{k-1} - c_{k+1}) / (2k)`` with ``c_0`` doubled, times ``(b - a)/2``)."""
        coeffs = _float(coeffs)
        self.check_coeffs(coeffs, axis)
        n = self.n

        def fn(c):
            cp = jnp.pad(c, [(0, 0)] * (c.ndim - 1) + [(0, 2)])  # c_0..c_{n+1}, zeros beyond
            cm = cp.at[..., 0].multiply(2.0)
            k = jnp.asarray(np.arange(1, n + 1), c.dtype)
            ik = (cm[..., 0:n] - cp[..., 2 : n + 2]) / (2 * k)
            sign = jnp.asarray((-1.0) ** np.arange(1, n + 1), c.dtype)
            i0 = -jnp.sum(ik * sign, axis=-1, keepdims=True)
            return jnp.concatenate([i0, ik], axis=-1) * (self.length / 2)

        return _along(fn, coeffs, axis)

    def _integral_weights(self, n: int) -> np.ndarray:
        return _even_integrals(np.arange(n)) * self.length / 2

    @_jit_when_eager
    def integrate(self, coeffs: Array, axis: int = -1) -> Array:
        """``int_a^b u dx = (b - a)/2 sum_{k even} 2 c_k / (1 - k^2)``."""
        coeffs = _float(coeffs)
        self.check_coeffs(coeffs, axis)
        w = jnp.asarray(self._integral_weights(self.n), coeffs.dtype)
        return jnp.tensordot(jnp.moveaxis(coeffs, axis, -1), w, axes=1)

    def quadrature_weights(self, m: int | None = None) -> np.ndarray:
        """Clenshaw--Curtis weights on the ``m``-point Lobatto grid: ``sum_j w_j f(x_j) = int_a^b p dx`` exactly for
        the degree ``m - 1`` interpolant ``p`` of ``f``."""
        m = self._check_m(m)
        # weights = (forward transform)^T applied to the integral functional; NumPy setup, not on the hot path.
        nn = m - 1
        v = np.flip(np.eye(m), axis=-1)
        coef = np.fft.rfft(np.concatenate([v, v[:, -2:0:-1]], axis=-1), axis=-1).real / nn
        coef[:, 0] *= 0.5
        coef[:, nn] *= 0.5
        return coef @ Chebyshev(m, self.domain)._integral_weights(m)

    def basis_matrix(self, x: ArrayLike) -> Array:
        x = _float(x)
        if x.ndim != 1:
            raise ValueError(f"`x` must be a 1-D array of points, got shape {x.shape}")
        s = self._to_unit(x)

        def step(carry, _):
            t0, t1 = carry
            return (t1, 2 * s * t1 - t0), t0

        _, cols = jax.lax.scan(step, (jnp.ones_like(s), s), None, length=self.n)
        return cols.T

    @_jit_when_eager
    def evaluate(self, coeffs: Array, x: ArrayLike, axis: int = -1) -> Array:
        """Clenshaw's recurrence ``b_k = c_k + 2 s b_{k+1} - b_{k+2}``, ``u = c_0 + s b_1 - b_2`` at points ``x``."""
        coeffs = _float(coeffs)
        self.check_coeffs(coeffs, axis)
        x = jnp.asarray(x, dtype=coeffs.dtype)
        if x.ndim != 1:
            raise ValueError(f"`x` must be a 1-D array of points, got shape {x.shape}")
        s = self._to_unit(x)

        def fn(c):
            cs = jnp.moveaxis(c, -1, 0)[..., None]  # (n, ..., 1)

            def step(carry, ck):
                b1, b2 = carry
                return (ck + 2 * s * b1 - b2, b1), None

            zeros = jnp.zeros(cs.shape[1:-1] + s.shape, c.dtype)
            (b1, b2), _ = jax.lax.scan(step, (zeros, zeros), cs[1:], reverse=True)
            return cs[0] + s * b1 - b2

        return _along(fn, coeffs, axis)

    def gram(self) -> np.ndarray:
        """``G[j, k] = int_a^b T_j T_k dx = (b-a)/4 (I_{j+k} + I_{|j-k|})``, ``I_m = 2/(1-m^2)`` (m even) else 0."""
        j = np.arange(self.n)
        s, d = j[:, None] + j[None, :], np.abs(j[:, None] - j[None, :])
        return self.length / 4 * (_even_integrals(s) + _even_integrals(d))

    @_jit_when_eager
    def apply_gram(self, coeffs: Array, axis: int = -1) -> Array:
        coeffs = _float(coeffs)
        self.check_coeffs(coeffs, axis)
        g = self.gram()
        return _along(lambda c: c @ jnp.asarray(g, c.dtype), coeffs, axis)

    @_jit_when_eager
    def boundary_values(self, coeffs: Array, axis: int = -1) -> tuple[Array, Array]:
        """``(u(a), u(b)) = (sum_k (-1)^k c_k, sum_k c_k)`` (reduces ``axis``)."""
        coeffs = _float(coeffs)
        self.check_coeffs(coeffs, axis)
        c = jnp.moveaxis(coeffs, axis, -1)
        sign = jnp.asarray((-1.0) ** np.arange(self.n), c.dtype)
        return c @ sign, jnp.sum(c, axis=-1)

    def boundary_rows(self, bc: str) -> np.ndarray:
        """Rows ``(2, n)`` of the boundary functionals at ``(a, b)``: ``"dirichlet"``: ``u``; ``"neumann"``: ``u'``."""
        k = np.arange(self.n, dtype=float)
        if bc == "dirichlet":
            return np.stack([(-1.0) ** k, np.ones(self.n)])
        if bc == "neumann":
            # T_k'(+-1) = (+-1)^{k+1} k^2, times ds/dx = 2/(b-a)
            return np.stack([(-1.0) ** (k + 1) * k**2, k**2]) * (2.0 / self.length)
        raise ValueError(f"`bc` must be one of 'dirichlet', 'neumann', got {bc!r}")

    @_jit_when_eager
    def enforce_bc(
        self, coeffs: Array, bc: str = "dirichlet", left: ArrayLike = 0.0, right: ArrayLike = 0.0, axis: int = -1
    ) -> Array:
        """Tau / boundary-row projection: replace ``c_{n-2}, c_{n-1}`` so that ``B u = (left, right)`` exactly.

        ``bc="dirichlet"``: ``u(a) = left, u(b) = right``; ``bc="neumann"``: ``u'(a) = left, u'(b) = right`` (needs
        ``n >= 3``). A linear (affine) map, so it commutes with the same operation along other axes; ``left``/``right``
        broadcast against the coefficients with ``axis`` removed.
        """
        rows = self.boundary_rows(bc)
        coeffs = _float(coeffs)
        self.check_coeffs(coeffs, axis)
        if self.n < 3 and bc == "neumann":
            raise ValueError(f"Neumann conditions need a Chebyshev basis with n >= 3, got n={self.n}")
        rest = tuple(d for i, d in enumerate(coeffs.shape) if i != axis % coeffs.ndim)
        for side, val in (("left", left), ("right", right)):
            val = _float(val, side)
            try:
                np.broadcast_shapes(jnp.shape(val), rest)
            except ValueError:
                raise ValueError(
                    f"`{side}` (boundary value) must broadcast against the coefficients without axis {axis}, shape "
                    f"{rest}, got shape {jnp.shape(val)}"
                ) from None
        tail = rows[:, -2:]
        inv = np.linalg.inv(tail)  # 2x2, invertible for both bc kinds

        def fn(c):
            head = c[..., :-2]
            rhs0 = jnp.asarray(left, c.dtype) - head @ jnp.asarray(rows[0, :-2], c.dtype)
            rhs1 = jnp.asarray(right, c.dtype) - head @ jnp.asarray(rows[1, :-2], c.dtype)
            rhs = jnp.stack(jnp.broadcast_arrays(rhs0, rhs1), axis=-1)
            last = rhs @ jnp.asarray(inv.T, c.dtype)
            return jnp.concatenate([head, last], axis=-1)

        return _along(fn, coeffs, axis)

    @_jit_when_eager
    def multiply_by_x(self, coeffs: Array, axis: int = -1) -> Array:
        """Coefficients of ``(x - a) u(x)`` with ``n + 1`` entries (exact): ``s T_k = (T_{k+1} + T_{|k-1|}) / 2``."""
        coeffs = _float(coeffs)
        self.check_coeffs(coeffs, axis)

        def fn(c):
            cp = jnp.pad(c, [(0, 0)] * (c.ndim - 1) + [(0, 1)])  # length n+1
            up = jnp.pad(c, [(0, 0)] * (c.ndim - 1) + [(1, 0)]) * 0.5  # T_{k+1} part
            up = up.at[..., 1].add(0.5 * c[..., 0])  # s T_0 = T_1 (not T_1 / 2)
            down = jnp.pad(c[..., 1:], [(0, 0)] * (c.ndim - 1) + [(0, 2)]) * 0.5  # T_{k-1}, k >= 1
            su = up + down  # coefficients of s u
            return (su + cp) * (self.length / 2)  # (x - a) = (b-a)/2 (s + 1)

        return _along(fn, coeffs, axis)
