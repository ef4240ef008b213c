"""Layer 4: whole-model quantization (RTN, GPTQ, AWQ, SmoothQuant).

``slmops.quantize.options`` (the options of every algorithm) imports without torch, so the
CLI reads it cheaply; the other names load on first use (PEP 562)."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"QuantizationSummary": "linears", "quantize_model": "model"}
__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
