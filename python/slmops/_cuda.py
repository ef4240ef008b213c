"""What the ops need to run a kernel on a CUDA tensor: the caller's stream, and the CUDA
libraries the kernels open at run time (cuBLASLt) made findable first.

The C++ side opens ``libcublasLt.so.<major>`` by name instead of linking it, so that
slmops imports on machines without it. Where it comes from PyPI's ``nvidia-cublas``
wheel (``pip install slmops[cuda]``, or torch's CUDA build) it sits in site-packages,
where the dynamic loader does not look: loading it here once, globally, makes the name
resolve.
"""

from __future__ import annotations

import ctypes
import glob
import os
from typing import Any

_preloaded = False


def preload_libraries() -> None:
    global _preloaded
    if _preloaded:
        return
    _preloaded = True
    try:
        import nvidia  # the namespace package of NVIDIA's PyPI wheels
    except ImportError:
        return
    for base in list(getattr(nvidia, "__path__", [])):
        for lib in sorted(glob.glob(os.path.join(base, "*", "lib", "libcublasLt.so.*"))):
            try:
                ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
            except OSError:  # a wheel for another CUDA major: the C++ side reports what is missing
                pass


def is_cuda(x: Any) -> bool:
    return getattr(getattr(x, "device", None), "type", None) == "cuda"


def stream_of(x: Any) -> int:
    """The current CUDA stream of x's device, as the integer handle the bindings take."""
    import torch

    preload_libraries()
    return int(torch.cuda.current_stream(x.device).cuda_stream)
