"""slmops: make small language models small and fast, on our own C++/CUDA kernels.

Layers (see DESIGN.md): ``slmops.ops`` (kernels over numpy arrays and torch tensors:
quantize, qmatmul, KD losses), ``slmops.nn`` (QuantLinear, LoRALinear, KD losses),
``slmops.quantize``, ``slmops.prune``, ``slmops.distill`` (teacher to student),
``slmops.finetune`` (LoRA, QLoRA), ``slmops.evaluate`` (perplexity, speed, memory),
``slmops.export``, over ``slmops.models`` (loading a model by name, folder or checkpoint);
``slmops.zoo`` holds the reference models trained by the project; ``slmops.workflow`` and
the ``slmops`` CLI run configs of passes.

Each package keeps its name; the root names its functions for what they do to a model:
``quantize_model``, ``prune_model``, ``distill_model``, ``finetune_model``,
``evaluate_model``, ``export_model``.

The root is a face, not a hub: ``import slmops`` loads only the C++ extension; every other
name is imported on first use (PEP 562), so ``import slmops.ops`` does not bring in the
model-level layers.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import _C

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


# The subpackages reachable as attributes of the root without importing them first.
_SUBPACKAGES = (
    "distill",
    "engine",
    "evaluate",
    "export",
    "finetune",
    "models",
    "nn",
    "ops",
    "prune",
    "quantize",
    "workflow",
    "zoo",
)

# Public name -> (module, attribute), imported on first access.
_LAZY: dict[str, tuple[str, str]] = {
    "QuantizedTensor": ("ops", "QuantizedTensor"),
    "QuantizationSummary": ("quantize", "QuantizationSummary"),
    "PruningSummary": ("prune", "PruningSummary"),
    "quantize_model": ("quantize", "quantize_model"),
    "prune_model": ("prune", "prune_model"),
    "distill_model": ("distill", "distill"),
    "finetune_model": ("finetune", "finetune"),
    "evaluate_model": ("evaluate", "evaluate"),
    "export_model": ("export", "export"),
}

__all__ = [
    "__version__",
    "build_info",
    "get_num_threads",
    "set_num_threads",
    *_LAZY,
    *_SUBPACKAGES,
]


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        # importing a submodule binds it as an attribute of the root: __getattr__ runs once
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
