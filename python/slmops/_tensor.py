"""Framework helpers shared by the ops: numpy and torch in, the same framework out."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

FLOAT_DTYPES = ("float32", "float16", "bfloat16")


def is_torch(x: Any) -> bool:
    # No tensor exists before torch is imported: numpy-only callers never import it (1 s).
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def dtype_name(x: Any) -> str:
    """'float32', 'float16', 'bfloat16', 'uint8', ... for a numpy array or torch tensor."""
    if is_torch(x):
        return str(x.dtype).removeprefix("torch.")
    return np.dtype(x.dtype).name


def check_array(x: Any, name: str) -> None:
    if not (isinstance(x, np.ndarray) or is_torch(x)):
        raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")


def kernel_input(x: Any) -> Any:
    """A C-contiguous view (or copy, when strided) that the kernels can read zero-copy."""
    if is_torch(x):
        return x.detach().contiguous()
    return np.ascontiguousarray(x)


def empty(like: Any, shape: tuple[int, ...], dtype: str) -> Any:
    """An uninitialized array in like's framework and device."""
    if is_torch(like):
        import torch

        return torch.empty(shape, dtype=getattr(torch, dtype), device=like.device)
    if dtype == "bfloat16":
        raise TypeError("numpy has no bfloat16; use torch tensors for bfloat16, or dtype='float32'")
    return np.empty(shape, dtype=dtype)


def to_numpy(x: Any) -> np.ndarray:
    if is_torch(x):
        if str(x.dtype) == "torch.bfloat16":
            raise TypeError("numpy has no bfloat16")
        return x.detach().cpu().numpy()
    return np.asarray(x)


def from_numpy(x: np.ndarray, framework: str) -> Any:
    if framework == "torch":
        import torch

        return torch.from_numpy(np.ascontiguousarray(x))
    return x


def check_linear_input(x: Any, in_features: int, op: str) -> str:
    """Validates the activations of a CPU matmul ``x [..., in_features]``; returns x's dtype."""
    check_array(x, "x")
    if len(x.shape) == 0 or x.shape[-1] != in_features:
        raise ValueError(f"x must be [..., in_features={in_features}], got shape {tuple(x.shape)}")
    dtype = dtype_name(x)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"x must be float32, float16 or bfloat16, got {dtype}")
    if is_torch(x) and x.device.type != "cpu":
        raise ValueError(f"{op} runs on the CPU; x is on {x.device}")
    return dtype


def float32_bias(bias: Any, out_features: int) -> Any:
    """A matmul's optional bias ``[out_features]`` as contiguous float32 (None stays None)."""
    if bias is None:
        return None
    check_array(bias, "bias")
    if tuple(bias.shape) != (out_features,):
        raise ValueError(f"bias must have shape ({out_features},), got {tuple(bias.shape)}")
    return kernel_input(bias.float() if is_torch(bias) else bias.astype("float32", copy=False))
