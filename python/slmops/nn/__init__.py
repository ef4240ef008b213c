"""Layer 3: torch modules on slmops kernels."""

from .kd_loss import FusedLinearKDLoss, KDLoss, TeacherHidden, TeacherTopK
from .lora import LoRALinear
from .quant_linear import QuantLinear
from .sparse_linear import SparseLinear

__all__ = [
    "FusedLinearKDLoss", "KDLoss", "LoRALinear", "QuantLinear", "SparseLinear", "TeacherHidden",
    "TeacherTopK",
]  # fmt: skip
