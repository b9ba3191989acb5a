"""Compile-time accounting shared by the training loop (private)."""

from __future__ import annotations

import threading
from typing import Any

import jax

_COMPILE_EVENTS = frozenset(
    {
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "/jax/core/compile/backend_compile_duration",
    }
)
_compile_lock = threading.Lock()
_compile_total = [0.0]


def _on_duration_event(event: str, duration_secs: float, **kwargs: Any) -> None:
    if event in _COMPILE_EVENTS:
        with _compile_lock:
            _compile_total[0] += duration_secs


jax.monitoring.register_event_duration_secs_listener(_on_duration_event)


def compile_seconds() -> float:
    """Seconds spent tracing/lowering/compiling in this process so far (any thread)."""
    with _compile_lock:
        return _compile_total[0]
