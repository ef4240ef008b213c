"""Layer 4: whole-model quantization."""

from .model import QuantizationSummary, quantize_model

__all__ = ["QuantizationSummary", "quantize_model"]
