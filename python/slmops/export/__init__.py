"""Layer 4: writers of model files: slmops checkpoints (Hugging Face folders whose linears
may be quantized slmops modules)."""

from .checkpoint import is_checkpoint, load_checkpoint, save_checkpoint

__all__ = ["is_checkpoint", "load_checkpoint", "save_checkpoint"]
