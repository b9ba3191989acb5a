"""Memoryless Shampoo = spectral-norm steepest descent (Muon's orthogonalised momentum), with Adam-norm grafting.

Shampoo's direction for a matrix block with statistics ``L = G G^T``, ``R = G^T G`` of one gradient only (no
accumulation, ``beta2 = 0``) and the default exponent ``1/4`` on each side is, with ``G = U S V^T``,

    L^{-1/4} G R^{-1/4} = U S^{-1/2} U^T  U S V^T  V S^{-1/2} V^T = U V^T,

the polar factor of ``G``: steepest descent in the spectral norm (Bernstein & Newhouse 2024, "Old optimizer, new
norm"), which Muon (Jordan et al. 2024) applies to the momentum. :func:`scale_by_spectral` is that member of the
family, computed without statistics or eigendecompositions: per matrix leaf (order ``k > 2`` leaves reshaped to
``(prod(shape[:-1]), shape[-1])``)

    m <- beta1 m + (1 - beta1) g                    (EMA momentum; Nesterov: n = beta1 m + (1 - beta1) g, else n = m)
    v <- graft_beta2 v + (1 - graft_beta2) g^2      (diagonal second moment, for the graft)
    a =  n / (sqrt(v) + graft_epsilon)              (RMSprop-with-momentum direction)
    O ~= polar(n) = U V^T                           (Newton-Schulz iterations on n / ||n||_F)
    u =  O * ||a||_F / ||O||_F                      (graft="rmsprop": the spectral direction, Adam's step length)

``graft="none"`` returns ``O * sqrt(max(1, rows / cols))`` instead (Muon's shape scaling). Scalars and vectors (and
leaves with a dimension of size 1 after dropping unit dims) take ``a`` itself. No bias correction: step 1 is
``(1 - beta1)`` times a full step with Nesterov off (measured: a warm start, see ``benchmarks/shampoo_peers.py``).

Newton-Schulz: ``X <- a X + (b A + c A^2) X`` with ``A = X X^T`` (on the wide orientation), ``ns_steps`` times, from
``X_0 = n / (||n||_F + 1e-7)``. The default coefficients ``(3.4445, -4.7750, 2.0315)`` (Jordan et al.) map every
singular value into roughly ``[0.7, 1.2]`` in 5 steps (not exactly 1; cheap, matmuls only); ``(1.5, -0.5, 0.0)`` is the
classical cubic iteration, which converges to ``U V^T`` exactly (quadratically once the singular values are near 1).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Int

from . import _common as C

SPECTRAL_GRAFTS = ("none", "rmsprop")
MUON_COEFFS = (3.4445, -4.7750, 2.0315)


class SpectralState(NamedTuple):
    """State of :func:`scale_by_spectral` (per-leaf tuples in ``tree_leaves`` order).

    Attributes:
        count: applied (finite) steps (int32).
        skipped: non-finite steps skipped (int32).
        mu: per leaf: EMA momentum (parameter shape).
        nu: per leaf: diagonal second moment of the graft (parameter shape; empty with ``graft="none"`` except for
            vector leaves, which always use it).
    """

    count: Int[Array, ""]  # type: ignore[assignment]  # a NamedTuple field shadowing tuple.count, as in optax
    skipped: Int[Array, ""]
    mu: tuple
    nu: tuple


def _as_matrix(x: Array) -> Array | None:
    """The leaf as a matrix ``(prod(shape[:-1]), shape[-1])`` after dropping unit dims, or ``None`` (diagonal)."""
    shape = tuple(d for d in x.shape if d != 1)
    if len(shape) < 2:
        return None
    return x.reshape(-1, shape[-1])


def newton_schulz(x: Array, steps: int, coeffs: tuple[float, float, float] = MUON_COEFFS) -> Array:
    """Approximate polar factor ``U V^T`` of a matrix ``x`` ``(m, n)`` by ``steps`` Newton-Schulz iterations.

    The iteration runs on the wide orientation (``m <= n``, transposing if needed) from ``x / (||x||_F + 1e-7)``.
    """
    a, b, c = coeffs
    tall = x.shape[0] > x.shape[1]
    y = x.T if tall else x
    y = y / (jnp.linalg.norm(y) + 1e-7)

    def body(y, _):
        g = y @ y.T
        return a * y + (b * g + c * (g @ g)) @ y, None

    y, _ = jax.lax.scan(body, y, None, length=steps)
    return y.T if tall else y


def scale_by_spectral(
    beta1: float = 0.9,
    nesterov: bool = True,
    graft: str = "rmsprop",
    graft_beta2: float = 0.99,
    graft_epsilon: float = 1e-8,
    ns_steps: int = 5,
    ns_coeffs: tuple[float, float, float] = MUON_COEFFS,
) -> optax.GradientTransformation:
    """Memoryless Shampoo (the polar factor of the momentum, Muon's update) with Adam-norm grafting; see the module.

    Arguments:
        beta1: momentum EMA decay, in ``[0, 1)``.
        nesterov: Nesterov form ``beta1 m + (1 - beta1) g`` of the momentum.
        graft: ``"rmsprop"`` (per leaf, the step length of RMSprop-with-momentum, so one learning rate serves
            matrices and vectors as with Adam) or ``"none"`` (Muon's ``sqrt(max(1, rows/cols))`` scaling).
        graft_beta2: decay of the diagonal second moment (graft and vector leaves), in ``(0, 1]``.
        graft_epsilon: epsilon of the diagonal method.
        ns_steps: Newton-Schulz iterations (static, ``>= 1``).
        ns_coeffs: ``(a, b, c)`` of the odd polynomial ``a x + b x^3 + c x^5``.
    """
    C.unit_interval("beta1", beta1, closed_high=False)
    C.unit_interval("graft_beta2", graft_beta2, closed_low=False)
    C.positive_float("graft_epsilon", graft_epsilon)
    graft = C.choice("graft", graft, SPECTRAL_GRAFTS)
    ns_steps = C.static_int("ns_steps", ns_steps)
    if not (isinstance(ns_coeffs, tuple) and len(ns_coeffs) == 3):
        raise TypeError(f"`ns_coeffs` must be a tuple of 3 floats (a, b, c), got {ns_coeffs!r}.")
    if not isinstance(nesterov, bool):
        raise TypeError(f"`nesterov` must be a Python bool, got {nesterov!r}.")

    def needs_nu(x) -> bool:
        return graft == "rmsprop" or _as_matrix(x) is None

    def init_fn(params):
        C.check_params(params, "scale_by_spectral (params)")
        leaves = jax.tree_util.tree_leaves(params)
        dt = lambda x: C.compute_dtype(x.dtype)  # noqa: E731
        return SpectralState(
            count=jnp.zeros((), jnp.int32),
            skipped=jnp.zeros((), jnp.int32),
            mu=tuple(jnp.zeros(x.shape, dt(x)) for x in leaves),
            nu=tuple(jnp.zeros(x.shape, dt(x)) if needs_nu(x) else jnp.zeros((0,), dt(x)) for x in leaves),
        )

    def update_fn(updates, state, params=None):
        del params
        C.check_params(updates, "scale_by_spectral (updates)")
        C.check_state("scale_by_spectral", updates, state, SpectralState, init_fn, ("mu", "nu"))
        leaves, treedef = jax.tree_util.tree_flatten(updates)
        finite = C.tree_all_finite(leaves)
        outs, mus, nus = [], [], []
        for g0, mu, nu in zip(leaves, state.mu, state.nu):
            g = jnp.where(finite, g0, 0).astype(mu.dtype)
            mu = beta1 * mu + (1.0 - beta1) * g
            n = beta1 * mu + (1.0 - beta1) * g if nesterov else mu
            if nu.size:
                nu = graft_beta2 * nu + (1.0 - graft_beta2) * g * g
            mat = _as_matrix(n)
            if mat is None:
                outs.append(n / (jnp.sqrt(nu) + graft_epsilon))
            else:
                o = newton_schulz(mat, ns_steps, ns_coeffs)
                if graft == "rmsprop":
                    na = jnp.linalg.norm(n / (jnp.sqrt(nu) + graft_epsilon))
                    no = jnp.linalg.norm(o)
                    o = o * jnp.where(no > 0, na / jnp.where(no > 0, no, 1.0), 0.0)
                else:
                    o = o * jnp.sqrt(jnp.maximum(1.0, mat.shape[0] / mat.shape[1]))
                outs.append(o.reshape(n.shape))
            mus.append(mu)
            nus.append(nu)
        keep = lambda n, o: jnp.where(finite, n, o)  # noqa: E731
        new_state = SpectralState(
            count=state.count + finite.astype(jnp.int32),
            skipped=state.skipped + (~finite).astype(jnp.int32),
            mu=jax.tree_util.tree_map(keep, tuple(mus), state.mu),
            nu=jax.tree_util.tree_map(keep, tuple(nus), state.nu),
        )
        outs = [jnp.where(finite, u, 0).astype(g.dtype) for u, g in zip(outs, leaves)]
        return jax.tree_util.tree_unflatten(treedef, outs), new_state

    return optax.GradientTransformation(init_fn, update_fn)


def spectral(
    learning_rate: optax.ScalarOrSchedule,
    beta1: float = 0.9,
    nesterov: bool = True,
    graft: str = "rmsprop",
    graft_beta2: float = 0.99,
    graft_epsilon: float = 1e-8,
    ns_steps: int = 5,
    ns_coeffs: tuple[float, float, float] = MUON_COEFFS,
    weight_decay: float = 0.0,
    weight_decay_mask: Any = None,
) -> optax.GradientTransformation:
    """Memoryless Shampoo / spectral descent: :func:`scale_by_spectral`, decoupled weight decay, ``-learning_rate``."""
    C.positive_float("weight_decay", weight_decay, allow_zero=True)
    if not callable(learning_rate):
        C.positive_float("learning_rate", learning_rate, allow_zero=True)
    parts = [
        scale_by_spectral(
            beta1=beta1,
            nesterov=nesterov,
            graft=graft,
            graft_beta2=graft_beta2,
            graft_epsilon=graft_epsilon,
            ns_steps=ns_steps,
            ns_coeffs=ns_coeffs,
        )
    ]
    if not C.is_static_zero(weight_decay):
        parts.append(optax.add_decayed_weights(weight_decay, weight_decay_mask))
    parts.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*parts)
