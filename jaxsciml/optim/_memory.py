"""Optimizer-state memory accounting (bytes of the arrays held in a state pytree)."""

from __future__ import annotations

from typing import Any, cast

import jax
import numpy as np

from ._shampoo import ShampooState
from ._soap import SoapState

_PRECOND = {ShampooState: ("stats", "roots", "eigvals", "eigvecs"), SoapState: ("stats", "bases")}


def _nbytes(tree: Any) -> int:
    total = 0
    for x in jax.tree_util.tree_leaves(tree):
        if hasattr(x, "dtype") and hasattr(x, "shape"):
            total += int(np.prod(x.shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize
    return total


def memory_breakdown(state: Any) -> dict[str, int]:
    """Bytes of an optimizer state, split by role.

    Walks any optax state (``chain`` tuples, ``inject_hyperparams``, ``MultiSteps``, masking, ...) and, for every
    :class:`ShampooState` / :class:`SoapState` found, counts its fields. Returns a dict with

    - ``"preconditioner"``: Kronecker statistics, roots, eigenvalues, (quantized) eigenvectors, SOAP bases;
    - ``"first_order"``: momentum, graft / Adam accumulators;
    - ``"other"``: everything else (counters, other transformations' states);
    - ``"total"``; and one entry per Shampoo/SOAP field name (``"stats"``, ``"roots"``, ``"eigvecs"``, ...).
    """
    out: dict[str, int] = {"preconditioner": 0, "first_order": 0, "other": 0}

    def visit(node: Any) -> None:
        for cls, pre in _PRECOND.items():
            if isinstance(node, cls):
                for name in cast(Any, node)._fields:  # a NamedTuple state
                    b = _nbytes(getattr(node, name))
                    out[name] = out.get(name, 0) + b
                    if name in pre:
                        out["preconditioner"] += b
                    elif name in ("count", "skipped", "root_fallbacks", "nonfinite_statistics"):
                        out["other"] += b
                    else:
                        out["first_order"] += b
                return
        if isinstance(node, tuple | list):
            for x in node:
                visit(x)
        elif isinstance(node, dict):
            for x in node.values():
                visit(x)
        else:
            out["other"] += _nbytes(node)

    visit(state)
    out["total"] = out["preconditioner"] + out["first_order"] + out["other"]
    return out


def state_memory_bytes(state: Any) -> int:
    """Total bytes of all arrays in an optimizer state (any optax state)."""
    return _nbytes(state)


def preconditioner_memory_bytes(state: Any) -> int:
    """Bytes of the Shampoo/SOAP preconditioner parts of ``state`` (see :func:`memory_breakdown`)."""
    return memory_breakdown(state)["preconditioner"]
