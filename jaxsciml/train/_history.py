"""``fit``'s history: names of the recorded scalars and the host-side `Recorder` (private)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from ..optim import health as optim_health

_RESERVED = ("step", "loss", "time", "eval_step")


def named_scalars(tree: Any, prefix: str) -> list[tuple[str, Any]]:
    """``(name, leaf)`` for the one-element array (or number) leaves of ``tree``; works on tracers too."""
    if tree is None:
        return []
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if not (isinstance(leaf, jax.Array | np.ndarray | float | int) and np.size(leaf) == 1):
            continue
        parts = []
        for k in path:
            if isinstance(k, jax.tree_util.DictKey):
                parts.append(str(k.key))
            elif isinstance(k, jax.tree_util.GetAttrKey):
                parts.append(k.name)
            elif isinstance(k, jax.tree_util.SequenceKey):
                parts.append(str(k.idx))
            else:
                parts.append(str(k))
        name = "/".join(parts)
        if prefix == "aux":
            name = name or "aux"
            if name in _RESERVED or name.startswith("eval") or name == "nonfinite_steps":
                name = "aux/" + name
        else:
            name = f"{prefix}_{name}" if name else prefix
        out.append((name, leaf))
    return out


def scalar_items(tree: Any, prefix: str) -> list[tuple[str, float]]:
    """Named Python floats for the scalar array leaves of ``tree`` (non-scalar leaves are not recorded)."""
    return [(name, float(np.asarray(leaf).item())) for name, leaf in named_scalars(tree, prefix)]


class Recorder:
    """``fit``'s host-side bookkeeping: the history dict, per-step times, non-finite steps, the optimiser's health
    counters and the progress bar. Knows nothing of how steps are run."""

    def __init__(self, history: dict[str, list[Any]], nonfinite: str, bar: Any, progress: bool) -> None:
        self.history = history
        for name in ("step", "loss", "time", "nonfinite_steps"):
            history.setdefault(name, [])
        self.nonfinite = nonfinite
        self.bar = bar
        self.progress = progress
        self.step_times: list[float] = []
        self._last_health: dict[str, int] = {}

    def record(self, first: int, losses: Any, oks: Any, auxs: dict[str, Any], seconds: float, stacklevel: int) -> None:
        """Append ``len(losses)`` steps starting at ``first``; warn about (or, with ``nonfinite="raise"``, raise on)
        the non-finite ones. Warnings point ``stacklevel`` frames up from here."""
        count = len(losses)
        history = self.history
        for j in np.flatnonzero(~np.asarray(oks, bool)):
            s, value = first + int(j), float(losses[j])
            if self.nonfinite == "raise":
                raise FloatingPointError(
                    f"non-finite loss, gradient or update at step {s} (loss={value}); "
                    "the update was not applied and nothing was checkpointed"
                )
            warnings.warn(
                f"non-finite loss, gradient or update at step {s} (loss={value}); update skipped",
                RuntimeWarning,
                stacklevel=stacklevel,
            )
            history["nonfinite_steps"].append(s)
        if not count:
            return
        per_step = seconds / count
        history["step"].extend(range(first, first + count))
        history["loss"].extend(np.asarray(losses, np.float64).tolist())
        history["time"].extend([per_step] * count)
        self.step_times.extend([per_step] * count)
        for name, col in auxs.items():
            history.setdefault(name, []).extend(np.asarray(col).tolist())
        self.bar.update(count)
        if self.progress:
            self.bar.set_postfix(loss=f"{float(losses[-1]):.4g}", refresh=False)

    def evaluate(self, eval_fn: Callable[[Any], Any], model: Any, step: int) -> None:
        self.history.setdefault("eval_step", []).append(step)
        for name, value in scalar_items(eval_fn(model), "eval"):
            self.history.setdefault(name, []).append(value)

    def last_eval(self) -> int | None:
        steps = self.history.get("eval_step")
        return steps[-1] if steps else None

    def note_health(self, opt_state: Any, step: int, stacklevel: int) -> None:
        """Record the optimiser's own health counters (Shampoo/SOAP root fallbacks, non-finite statistics; see
        `jaxsciml.optim.health`) and warn when one has grown since the last record."""
        counters = {k: int(v) for k, v in jax.device_get(optim_health(opt_state)).items()}
        if not counters:
            return
        self.history.setdefault("health_step", []).append(step)
        for name, value in counters.items():
            self.history.setdefault(name, []).append(value)
            grown = value - self._last_health.get(name, 0)
            if grown > 0:
                warnings.warn(
                    f"the optimiser reports {grown} new {name.replace('_', ' ')} by step {step} ({value} in all): "
                    "a statistic overflowed or an inverse root failed, so the previous root is being kept",
                    RuntimeWarning,
                    stacklevel=stacklevel,
                )
        self._last_health.update(counters)

    def health_recorded_at(self, step: int) -> bool:
        steps = self.history.get("health_step", [])
        return bool(steps) and steps[-1] == step
