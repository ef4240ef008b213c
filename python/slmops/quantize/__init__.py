"""Layer 4: whole-model quantization (RTN, GPTQ, AWQ, SmoothQuant).

``slmops.quantize.options`` (the options of every algorithm) imports without torch, so the
CLI reads it cheaply; the other names load on first use (PEP 562)."""

from __future__ import annotations

from .._lazy import lazy_getattr

_LAZY = {"QuantizationSummary": "linears", "quantize_model": "model"}
__all__ = list(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY)
