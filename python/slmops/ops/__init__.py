"""Layer 2: kernels over numpy arrays and torch tensors, with the packed formats."""

from .kd import TeacherHidden, TeacherTopK, fused_linear_kd_loss, kd_loss
from .qmatmul import qmatmul
from .quant import FORMATS, QuantizedTensor, dequantize, quantize
from .sparse import SparseTensor, sparsify, spmm

__all__ = [
    "FORMATS",
    "QuantizedTensor",
    "TeacherHidden",
    "TeacherTopK",
    "dequantize",
    "fused_linear_kd_loss",
    "kd_loss",
    "qmatmul",
    "quantize",
    "SparseTensor",
    "sparsify",
    "spmm",
]
