"""Layer 2: kernels over numpy arrays and torch tensors, with the packed formats."""

from .gptq import (
    GPTQResult,
    SparseGPTResult,
    cholesky_inverse_upper,
    gptq_grid_params,
    gptq_quantize,
    hessian_accumulate,
    sparsegpt_prune,
)
from .kd import TeacherHidden, TeacherTopK, fused_linear_kd_loss, kd_loss
from .qmatmul import qmatmul
from .quant import FORMATS, QuantizedTensor, dequantize, quantize
from .sparse import SparseTensor, sparsify, spmm

__all__ = [
    "FORMATS",
    "GPTQResult",
    "SparseGPTResult",
    "QuantizedTensor",
    "TeacherHidden",
    "TeacherTopK",
    "cholesky_inverse_upper",
    "dequantize",
    "fused_linear_kd_loss",
    "gptq_grid_params",
    "gptq_quantize",
    "hessian_accumulate",
    "kd_loss",
    "qmatmul",
    "quantize",
    "sparsegpt_prune",
    "SparseTensor",
    "sparsify",
    "spmm",
]
