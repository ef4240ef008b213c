"""slmops: make small language models small and fast, on our own C++/CUDA kernels.

Layers (see DESIGN.md): ``slmops.ops`` (kernels over numpy arrays and torch tensors:
quantize, qmatmul, KD losses), ``slmops.nn`` (QuantLinear, LoRALinear, KD losses),
``slmops.quantize`` (quantize_model), ``slmops.prune`` (prune_model), ``slmops.distill``
(teacher to student), ``slmops.finetune`` (LoRA, QLoRA), ``slmops.evaluate`` (perplexity,
speed, memory), ``slmops.export``;
``slmops.zoo`` holds the reference models trained by the project; ``slmops.workflow`` and
the ``slmops`` CLI run configs of passes.
"""

from __future__ import annotations

from typing import Any

from . import _C, nn, ops, zoo

# After the submodule import: the name slmops.evaluate is the function (DESIGN's public API);
# its package stays reachable as slmops.evaluate.metrics through sys.modules.
from .distill import distill  # noqa: E402 - likewise: slmops.distill is the function
from .evaluate import evaluate  # noqa: E402
from .export import export  # noqa: E402 - likewise: slmops.export is the function
from .finetune import finetune  # noqa: E402 - likewise: slmops.finetune is the function
from .ops import QuantizedTensor
from .prune import PruningSummary, prune_model
from .quantize import QuantizationSummary, quantize_model  # slmops.quantize is the layer-4 package

__version__: str = _C.build_info()["version"]


def build_info() -> dict[str, Any]:
    """Version, CPU ISA detected and used, OpenMP threads, oneDNN and CUDA status."""
    info = _C.build_info()
    info["cpu_isas_available"] = _C.available_cpu_isas()
    return info


def set_num_threads(n: int) -> None:
    """Threads used by the CPU kernels (OpenMP). Overrides OMP_NUM_THREADS."""
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    _C.set_num_threads(n)


def get_num_threads() -> int:
    return _C.get_num_threads()


__all__ = [
    "QuantizationSummary",
    "QuantizedTensor",
    "build_info",
    "distill",
    "evaluate",
    "export",
    "finetune",
    "get_num_threads",
    "nn",
    "ops",
    "quantize_model",
    "prune_model",
    "PruningSummary",
    "set_num_threads",
    "zoo",
]
