"""Causal weighting of the spectral residual loss along a time axis (Wang, Sankaran & Perdikaris, "Respecting
causality is all you need for training physics-informed neural networks", 2022 / CMAME 2024), adapted to NSM.

The exact spectral loss (:func:`~jaxsciml.pde.spectral_loss`) weighs the residual at all times alike,
``int_0^T L(t) dt`` with ``L(t) = int_Omega R(x, t)^2 dx``. The causal loss delays the residual at a time until the
residual before it is small:

.. math::

    \\mathcal{L}_\\varepsilon = \\sum_k w_k\\,L(t_k)\\,q_k, \\qquad
    w_k = \\exp\\Big(-\\varepsilon \\sum_{j<k} L(t_j)\\,q_j\\Big) \\ (\\text{no gradient through } w),

on the ``K`` Gauss--Legendre nodes ``t_k`` / weights ``q_k`` of the time interval. ``L(t_k)`` is exact in space: the
residual's coefficients are evaluated along the Chebyshev time axis at ``t_k`` (a ``K x n_t`` matrix) and the
remaining axes are reduced by :func:`~jaxsciml.pde.squared_norm` (Parseval on Fourier axes, the exact Gram matrix on
Chebyshev axes). With ``K >= n_t`` the quadrature is exact for the polynomial ``L(t)`` of degree ``2 n_t - 2``, so
``eps = 0`` gives the spectral loss up to rounding. ``w_0 = 1``; the weights decrease with the residual accumulated
before ``t_k``. They are computed per sample (each initial condition is its own causal chain) and the loss is the
mean over the leading batch axes. It is not renormalised (``L_eps <= L_0``; Adam is invariant to a constant scale),
as in the paper; ``eps`` has the units of ``1 / (loss x time)`` (the paper's ``eps`` with its uniform ``dt = T / K``).

Measured as an ablation at equal wall time (``benchmarks/results/nsm_time_treatment.md``); not part of the default
recipe.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

from ._basis import Chebyshev
from ._tensor import TensorBasis, as_tensor_basis

__all__ = ["time_nodes", "time_residuals", "causal_weights", "causal_loss", "problem_causal_loss"]


def _time_axis(basis: TensorBasis, time_axis: int) -> tuple[int, Chebyshev]:
    if isinstance(time_axis, bool) or not isinstance(time_axis, int | np.integer):
        raise TypeError(f"`time_axis` must be a Python int, got {time_axis!r}")
    if not -basis.ndim <= time_axis < basis.ndim:
        raise ValueError(f"`time_axis` must be in [-{basis.ndim}, {basis.ndim}), got {time_axis}")
    axis = int(time_axis) % basis.ndim
    b = basis.bases[axis]
    if not isinstance(b, Chebyshev):
        raise ValueError(f"`time_axis` must be a Chebyshev axis; axis {axis} is a {b.kind} axis")
    return axis, b


def time_nodes(time_basis: Chebyshev, nodes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Gauss--Legendre nodes ``t_k`` (increasing) and weights ``q_k`` on the Chebyshev axis' domain; ``nodes``
    defaults to the basis size ``n`` (then exact for polynomials of degree ``2 n - 1``). NumPy float64."""
    k = time_basis.n if nodes is None else nodes
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"`nodes` must be a positive integer, got {nodes!r}")
    s, q = np.polynomial.legendre.leggauss(int(k))
    a, b = time_basis.domain
    return a + (b - a) * (s + 1) / 2, q * (b - a) / 2


def time_residuals(
    residual_coeffs: ArrayLike, basis: TensorBasis, time_axis: int, nodes: int | None = None
) -> tuple[Array, np.ndarray, np.ndarray]:
    """``L(t_k) = int_Omega R(x, t_k)^2 dx`` at the Gauss--Legendre nodes of the time axis (see :func:`time_nodes`).

    Arguments:
        residual_coeffs: residual coefficients ``(..., *basis.shape)`` (leading batch axes).
        basis: the :class:`TensorBasis`; ``time_axis`` must be a Chebyshev axis.
        nodes: number of time nodes ``K`` (default ``n_t``).

    Returns:
        ``(L, t, q)``: ``L`` of shape ``(..., K)``, nodes ``t`` and weights ``q`` (NumPy, ``(K,)``).
    """
    basis = as_tensor_basis(basis)
    axis, tb = _time_axis(basis, time_axis)
    r = jnp.asarray(residual_coeffs)
    if not jnp.issubdtype(r.dtype, jnp.floating):
        r = r.astype(jnp.result_type(float))
    if r.ndim < basis.ndim or tuple(r.shape[r.ndim - basis.ndim :]) != basis.shape:
        raise ValueError(f"`residual_coeffs` must have trailing shape {basis.shape}, got {r.shape}")
    t, q = time_nodes(tb, nodes)
    s = 2 * (t - tb.domain[0]) / tb.length - 1
    phi = np.cos(np.outer(np.arccos(np.clip(s, -1.0, 1.0)), np.arange(tb.n)))  # T_j(s_k), (K, n_t)
    ax = r.ndim - basis.ndim + axis
    vals = jnp.tensordot(r, jnp.asarray(phi, r.dtype), axes=([ax], [1]))  # time axis -> last, length K
    if basis.ndim == 1:
        return vals**2, t, q
    others = TensorBasis(*(b for i, b in enumerate(basis.bases) if i != axis))
    return jax.vmap(others.squared_norm, in_axes=-1, out_axes=-1)(vals), t, q


def causal_weights(per_time: ArrayLike, quad_weights: ArrayLike, eps: float | ArrayLike) -> Array:
    """``w_k = exp(-eps sum_{j<k} L_j q_j)`` (``w_0 = 1``) along the last axis, without gradient
    (``jax.lax.stop_gradient``). ``eps >= 0`` may be a traced scalar (e.g. an annealing schedule)."""
    if isinstance(eps, int | float | np.integer | np.floating) and not (np.isfinite(eps) and eps >= 0):
        raise ValueError(f"`eps` must be a non-negative finite number, got {eps!r}")
    lq = jnp.asarray(per_time) * jnp.asarray(quad_weights, jnp.result_type(per_time))
    before = jnp.cumsum(lq, axis=-1) - lq  # exclusive prefix sum
    return jax.lax.stop_gradient(jnp.exp(-jnp.asarray(eps, lq.dtype) * before))


def causal_loss(
    residual_coeffs: ArrayLike,
    basis: TensorBasis,
    time_axis: int,
    eps: float | ArrayLike,
    nodes: int | None = None,
) -> Array:
    """Causally weighted spectral loss (Wang, Sankaran & Perdikaris, "Respecting causality is all you need for
    training physics-informed neural networks", 2022 / CMAME 2024), on residual coefficients; a scalar.

    ``L(t) = int_Omega R(x, t)^2 dx`` is evaluated exactly in space (Parseval on Fourier axes, the Gram matrix on
    Chebyshev axes) at the ``K`` Gauss--Legendre nodes ``t_k`` (weights ``q_k``) of the Chebyshev axis ``time_axis``,
    and the loss is ``mean_b sum_k w_k L_b(t_k) q_k`` with ``w_k = exp(-eps sum_{j<k} L_b(t_j) q_j)`` (``w_0 = 1``;
    no gradient through ``w``; per sample ``b``). The residual at a time only counts once the residual before it is
    small. ``eps = 0`` is the exact spectral loss ``mean_b int R_b^2 dx dt`` (:func:`spectral_loss`) for
    ``nodes >= n_t`` (default ``K = n_t``: exact for the degree ``2 n_t - 2`` polynomial ``L(t)``). Not renormalised
    (the loss is at most the spectral loss; Adam is invariant to its scale). ``eps`` (``>= 0``, units
    ``1 / (loss x time)``) may be traced (an annealing schedule).

    Arguments:
        residual_coeffs: residual coefficients ``(..., *basis.shape)`` (leading batch axes).
        basis: the :class:`TensorBasis`.
        time_axis: the Chebyshev time axis of ``basis`` (a Python int).
        eps: the causality parameter (measured: ``eps = 100`` on Burgers and reaction--diffusion with losses of
            order 1e-3..1 and ``T`` = 0.5..1, ``benchmarks/results/nsm_time_treatment.md``).
        nodes: number of time nodes ``K`` (default ``n_t``).

    From a model: ``nsm_loss(model, problem, params, causal_eps=eps)``. Works under ``jit`` / ``grad`` / ``vmap``.
    """
    per_time, _, q = time_residuals(residual_coeffs, basis, time_axis, nodes)
    w = causal_weights(per_time, q, eps)
    return jnp.mean(jnp.sum(w * per_time * jnp.asarray(q, per_time.dtype), axis=-1))


def problem_causal_loss(
    problem, u: Array, params: Array, eps: float | ArrayLike, time_axis: int | None = None
) -> Array:
    """:func:`causal_loss` of ``problem``'s residual for a batch of solutions ``u`` ``(B, *basis.shape)`` and their
    parameters; ``time_axis`` defaults to ``problem.time_axis`` (set on :class:`~jaxsciml.pde.Problem`). The causal
    loss measures the residual in ``L^2``: a problem with a Sobolev-weighted loss (``sobolev != 0``) is refused."""
    if time_axis is None:
        time_axis = getattr(problem, "time_axis", None)
        if time_axis is None:
            raise ValueError(
                f"causal weighting needs a time axis: pass `time_axis` (the Chebyshev time axis of the basis); "
                f"{type(problem).__name__} has no `time_axis`"
            )
    if getattr(problem, "sobolev", 0.0) != 0.0:
        raise ValueError("causal weighting measures the residual in L^2; the problem has `sobolev` != 0")
    u = problem.basis.check_coeffs(u, "u")
    if u.ndim != problem.basis.ndim + 1:
        raise ValueError(f"`u` must be a batch (B, *basis.shape), got shape {u.shape}")
    return causal_loss(jax.vmap(problem.residual)(u, params), problem.basis, time_axis, eps)
