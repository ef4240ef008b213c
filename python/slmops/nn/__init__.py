"""Layer 3: torch modules on slmops kernels."""

from .quant_linear import QuantLinear

__all__ = ["QuantLinear"]
