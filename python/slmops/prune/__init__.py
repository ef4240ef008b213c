"""Layer 4: whole-model pruning (magnitude, Wanda, SparseGPT).

``slmops.prune.options`` imports without torch (the CLI reads it); the other names load on
first use (PEP 562)."""

from __future__ import annotations

from .._lazy import lazy_getattr

_LAZY = {"METHODS": "options", "PATTERNS": "options", "PruningSummary": "model", "prune_model": "model"}
__all__ = list(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY)
