"""Layer 4, its base: where a model comes from. One loader for a reference model by name,
a Hugging Face folder (float or GPTQ layout), an slmops checkpoint and a GGUF file, used by the zoo,
export, distillation, fine-tuning and the workflow engine; the readers of the checkpoint
formats that ``slmops.export`` writes.

    model, tokenizer = slmops.models.load_model("kjv-teacher")       # or a model folder
    model, tokenizer = slmops.models.model_and_tokenizer(x, "teacher")  # a name, folder or pair
"""

from __future__ import annotations

from .checkpoint import is_checkpoint, load_checkpoint
from .downloads import DOWNLOADS, cache_dir, downloaded_path, fetch, resolve
from .folders import REFERENCE_MODELS_DIR, model_folder, reference_models
from .gguf import gguf_folder, is_gguf_file, load_gguf
from .gptq import is_gptq_checkpoint, load_gptq
from .loading import check_tokenizer, load_model, model_and_tokenizer

__all__ = [
    "DOWNLOADS",
    "REFERENCE_MODELS_DIR",
    "cache_dir",
    "downloaded_path",
    "fetch",
    "resolve",
    "check_tokenizer",
    "gguf_folder",
    "is_gguf_file",
    "load_gguf",
    "is_checkpoint",
    "is_gptq_checkpoint",
    "load_checkpoint",
    "load_gptq",
    "load_model",
    "model_and_tokenizer",
    "model_folder",
    "reference_models",
]
