"""Model folders: the reference models shipped inside the package (by name) and any Hugging
Face model folder (by path)."""

from __future__ import annotations

import os
from pathlib import Path

# The reference models are package data of slmops.zoo (zoo/models/<name>/). They are found
# by path, not by importing slmops.zoo: the zoo re-exports the loading below, so it sits
# above this package.
REFERENCE_MODELS_DIR = Path(__file__).resolve().parent.parent / "zoo" / "models"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def reference_models() -> list[str]:
    """Names of the reference models shipped with slmops."""
    if not REFERENCE_MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in REFERENCE_MODELS_DIR.iterdir() if (p / "config.json").is_file())


def model_folder(name_or_dir: str | os.PathLike[str]) -> Path:
    """The folder of a shipped model (by name) or of a Hugging Face model folder (by path),
    checked to hold a config, safetensors weights and a tokenizer."""
    candidate = Path(name_or_dir)
    if isinstance(name_or_dir, str) and not candidate.exists() and os.sep not in name_or_dir:
        if name_or_dir not in reference_models():
            from .downloads import DOWNLOADS

            raise ValueError(
                f"no reference model named {name_or_dir!r}; the zoo has {reference_models()} and, after "
                f"`slmops zoo fetch NAME`, {sorted(DOWNLOADS)}; or pass the path of a Hugging Face model "
                "folder or a GGUF file"
            )
        candidate = REFERENCE_MODELS_DIR / name_or_dir
    if not candidate.is_dir():
        raise FileNotFoundError(f"model folder {candidate} does not exist")
    missing = [f for f in REQUIRED_FILES if not (candidate / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"model folder {candidate} lacks {', '.join(missing)}; slmops reads Hugging Face folders "
            "with safetensors weights and a fast tokenizer (save_pretrained writes both)"
        )
    return candidate
