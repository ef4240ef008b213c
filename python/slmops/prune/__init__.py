"""Layer 4: whole-model pruning (magnitude, Wanda, SparseGPT).

``slmops.prune.options`` imports without torch (the CLI reads it); the other names load on
first use (PEP 562)."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"METHODS": "options", "PATTERNS": "options", "PruningSummary": "model", "prune_model": "model"}
__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
