"""Layer 2: kernels over numpy arrays and torch tensors, with the packed formats."""

from .qmatmul import qmatmul
from .quant import FORMATS, QuantizedTensor, dequantize, quantize

__all__ = ["FORMATS", "QuantizedTensor", "dequantize", "qmatmul", "quantize"]
