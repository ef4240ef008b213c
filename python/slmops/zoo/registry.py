"""The reference models shipped inside the package, and any Hugging Face model folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

ZOO_DIR = Path(__file__).parent
MODELS_DIR = ZOO_DIR / "models"
EVAL_SLICE = ZOO_DIR / "data" / "kjv-test-slice.txt"
DEFAULT_MODEL = "kjv-teacher"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def list_models() -> list[str]:
    """Names of the reference models shipped with slmops."""
    if not MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in MODELS_DIR.iterdir() if (p / "config.json").is_file())


def path(name_or_dir: str | os.PathLike[str]) -> Path:
    """The folder of a shipped model (by name) or of a Hugging Face model folder (by path),
    checked to hold a config, safetensors weights and a tokenizer."""
    candidate = Path(name_or_dir)
    if isinstance(name_or_dir, str) and not candidate.exists() and os.sep not in name_or_dir:
        if name_or_dir not in list_models():
            raise ValueError(
                f"no reference model named {name_or_dir!r}; the zoo has {list_models()}, "
                "or pass the path of a Hugging Face model folder"
            )
        candidate = MODELS_DIR / name_or_dir
    if not candidate.is_dir():
        raise FileNotFoundError(f"model folder {candidate} does not exist")
    missing = [f for f in REQUIRED_FILES if not (candidate / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"model folder {candidate} lacks {', '.join(missing)}; slmops reads Hugging Face folders "
            "with safetensors weights and a fast tokenizer (save_pretrained writes both)"
        )
    return candidate


def load(name_or_dir: str | os.PathLike[str], dtype: Any = None, verify: bool = True) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a shipped model, a Hugging Face folder (float or GPTQ
    layout) or an slmops checkpoint (``slmops.export.save_checkpoint``), in eval mode.

    ``dtype`` defaults to float32 (the weights may be stored in float16 or bfloat16; the
    CPU computes in fp32). A tokenizer whose ids do not fit the model's embedding is an
    error, not a silent garbage result; so is any tensor the model expects and the file
    lacks, or the file holds and the model does not expect. A folder slmops wrote is
    first checked against the checksums of its manifest (``verify=False`` skips that).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .._io import verify_folder
    from ..export import is_checkpoint, is_gptq_checkpoint, load_checkpoint, load_gptq

    folder = path(name_or_dir)
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


def check_tokenizer(model: Any, tokenizer: Any) -> None:
    """Raises if the tokenizer can produce ids beyond the model's vocabulary."""
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary is {vocab}: "
            "they do not belong together"
        )


def eval_text() -> str:
    """The held-out evaluation slice shipped with slmops (12 chapters of the test split)."""
    return EVAL_SLICE.read_text(encoding="utf-8")
