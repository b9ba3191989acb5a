"""Health counters of the Shampoo-family states inside any optax state tree."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Int

from ._shampoo import ShampooState
from ._soap import SoapState

HEALTH_KEYS = ("root_fallbacks", "nonfinite_statistics")


def _is_ours(x: Any) -> bool:
    return isinstance(x, ShampooState | SoapState)


def health(opt_state: Any) -> dict[str, Int[Array, ""]]:
    """Summed health counters of every :class:`ShampooState` / :class:`SoapState` in ``opt_state``.

    ``opt_state`` is any optax state (``chain`` tuples, ``masked``, ``MultiSteps``, ``inject_hyperparams``, dicts of
    states, ...); the states are found by walking the pytree. Returns ``{}`` when there is none, else int32 scalars:

    - ``"root_fallbacks"``: matrices whose new inverse root / eigenbasis / 4-bit eigendecomposition failed (statistic
      with ``lambda_max <= 0`` or not finite, non-finite result, unconverged Newton iteration) so that the previous one
      was kept, summed over refreshes;
    - ``"nonfinite_statistics"``: steps after which some Kronecker statistic held inf/NaN (e.g. ``G G^T`` overflowed
      for a huge but finite gradient); later refreshes of those matrices then fall back every time.

    Both are zero in a healthy run. Pure and jit-safe (the counters are arrays of the state).
    """
    found = [x for x in jax.tree_util.tree_leaves(opt_state, is_leaf=_is_ours) if _is_ours(x)]
    if not found:
        return {}
    return {
        k: sum((jnp.asarray(getattr(s, k), jnp.int32) for s in found), jnp.zeros((), jnp.int32)) for k in HEALTH_KEYS
    }
