"""GGUF files in: a llama.cpp model file (llama, mistral, qwen2 and the other architectures
transformers' GGUF loader knows) as a float transformers model with its tokenizer and chat
template. transformers dequantizes every ggml block format with the gguf package; a GGUF
that slmops exported loads back to the logits of the model it came from (float: exactly).

The workflow engine works on model folders: it converts a GGUF input once into a folder in
its cache (``gguf_folder``), keyed by the file's content."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

GGUF_MAGIC = b"GGUF"


def is_gguf_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a GGUF file (by its suffix; the magic is checked on load)."""
    p = Path(path)
    return p.suffix.lower() == ".gguf" and p.is_file()


def load_gguf(path: str | os.PathLike[str], dtype: Any = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of the GGUF file ``path``, the model dequantized to ``dtype``
    (float32 by default), in eval mode. A file that is not GGUF, or whose architecture or
    tokenizer transformers cannot read, is a ValueError naming the file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path)
    with open(p, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ValueError(f"{p} is not a GGUF file (it does not start with the GGUF magic)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
        model = AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=dtype or torch.float32)
    except OSError:
        raise
    except Exception as e:  # the gguf package and transformers raise many kinds on bad files
        raise ValueError(
            f"{p} does not load as a transformers model ({type(e).__name__}: {e}); slmops reads the GGUF "
            "architectures of transformers' GGUF loader (llama, mistral, qwen2, ...)"
        ) from e
    # The weights are float now; transformers still tags the model as GGUF-quantized, which
    # would stop save_pretrained and make peft and our passes treat it as quantized.
    model.hf_quantizer, model.is_quantized, model.quantization_method = None, False, None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model.eval(), tokenizer


def gguf_folder(path: str | os.PathLike[str], cache: Path, key: str) -> Path:
    """A Hugging Face folder in ``cache`` holding the GGUF file ``path`` as float weights
    (``key``: the file's content hash), written once."""
    from .._io import atomic_dir

    folder = cache / f"gguf-{key}"
    if not (folder / "config.json").is_file():
        model, tokenizer = load_gguf(path)
        with atomic_dir(folder, overwrite=True) as tmp:  # the cache is slmops's alone
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    return folder
