"""Loading a model with its tokenizer: a reference model by name, a Hugging Face folder
(float or GPTQ layout), an slmops checkpoint or a GGUF file. The one loader that the zoo, export,
distillation, fine-tuning and the workflow engine use."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .checkpoint import is_checkpoint, load_checkpoint
from .downloads import resolve
from .folders import model_folder
from .gguf import is_gguf_file, load_gguf
from .gptq import is_gptq_checkpoint, load_gptq


def load_model(
    name_or_dir: str | os.PathLike[str], dtype: Any = None, verify: bool = True
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a shipped model, a Hugging Face folder (float or GPTQ
    layout), an slmops checkpoint (``slmops.export.save_checkpoint``) or a GGUF file
    (dequantized to float, :mod:`slmops.models.gguf`), in eval mode.

    ``dtype`` defaults to float32 (the weights may be stored in float16 or bfloat16; the
    CPU computes in fp32). A tokenizer whose ids do not fit the model's embedding is an
    error, not a silent garbage result; so is any tensor the model expects and the file
    lacks, or the file holds and the model does not expect. A folder slmops wrote is
    first checked against the checksums of its manifest (``verify=False`` skips that).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .._io import verify_folder

    name_or_dir = resolve(name_or_dir)  # a downloaded model's file
    if is_gguf_file(name_or_dir):
        if verify:  # a GGUF slmops exported sits beside its manifest
            verify_folder(Path(name_or_dir).parent)
        model, tokenizer = load_gguf(name_or_dir, dtype)
        check_tokenizer(model, tokenizer)
        return model, tokenizer
    folder = model_folder(name_or_dir)
    if verify:
        verify_folder(folder)
    info = None  # transformers' loading report, for a plain folder
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        if is_checkpoint(folder):  # linears quantized by slmops
            model = load_checkpoint(folder, dtype)
        elif is_gptq_checkpoint(folder):  # GPTQ layout: our QuantLinear, no GPTQ library needed
            model = load_gptq(folder, dtype)
        else:
            model, info = AutoModelForCausalLM.from_pretrained(
                folder, dtype=dtype or torch.float32, output_loading_info=True
            )
    except (ValueError, OSError, KeyError):
        raise
    except Exception as e:  # transformers and tokenizers raise TypeError or bare Exception on bad files
        raise ValueError(f"{folder}: its files do not load: {type(e).__name__}: {e}") from e
    if info is not None:
        # transformers initialises what it does not find: a model of random weights
        wrong = {k: sorted(map(str, v))[:5] for k, v in info.items() if k != "error_msgs" and v}
        if wrong or info.get("error_msgs"):
            raise ValueError(
                f"{folder} does not load as a plain transformers model ({wrong or info['error_msgs']}); "
                "if it was quantized, its config.json's quantization_config is missing or damaged"
            )
    check_tokenizer(model, tokenizer)
    model.eval()
    return model, tokenizer


def model_and_tokenizer(model: Any, what: str = "model") -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a reference model's name or a model folder (loaded with
    :func:`load_model`), or a ``(model, tokenizer)`` pair as given. ``what`` names the
    argument in the error."""
    if isinstance(model, (str, os.PathLike)):
        return load_model(model)
    if isinstance(model, tuple) and len(model) == 2:
        return model
    raise TypeError(
        f"{what} must be a zoo name, a Hugging Face folder, a GGUF file, or a (model, tokenizer) pair"
    )


def check_tokenizer(model: Any, tokenizer: Any) -> None:
    """Raises if the tokenizer can produce ids beyond the model's vocabulary."""
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary is {vocab}: "
            "they do not belong together"
        )
