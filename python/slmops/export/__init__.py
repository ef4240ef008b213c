"""Layer 4: writers of model files for the runtimes people deploy on: GGUF (llama.cpp,
Ollama), Hugging Face folders, and slmops checkpoints (Hugging Face folders whose linears
are stored as slmops quantized codes and scales)."""

from .api import TARGETS, export
from .checkpoint import is_checkpoint, load_checkpoint, save_checkpoint

__all__ = ["TARGETS", "export", "is_checkpoint", "load_checkpoint", "save_checkpoint"]
