"""Layer 4: writers of model files for the runtimes people deploy on: ONNX Runtime GenAI
folders (Foundry Local), GGUF (llama.cpp, Ollama), Hugging Face folders (float, or GPTQ
layout when quantized), and slmops checkpoints (Hugging Face folders whose linears are
stored as slmops quantized codes and scales). Their readers are in ``slmops.models``
(re-exported here).

    slmops.export_model(model, "gguf", "out/gguf", tokenizer)  # = slmops.export.export
"""

import sys

from .._deprecation import callable_package
from ..models import is_checkpoint, is_gptq_checkpoint, load_checkpoint, load_gptq
from .api import TARGETS, export
from .checkpoint import save_checkpoint
from .errors import UnsupportedFormatError

__all__ = [
    "TARGETS",
    "UnsupportedFormatError",
    "export",
    "is_checkpoint",
    "is_gptq_checkpoint",
    "load_checkpoint",
    "load_gptq",
    "save_checkpoint",
]

# slmops.export was this function until 0.2; calling the package still works, for one release.
callable_package(sys.modules[__name__], "export", "slmops.export_model")
