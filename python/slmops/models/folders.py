"""Model folders: the reference models shipped inside the package (by name) and any Hugging
Face model folder (by path)."""

from __future__ import annotations

import os
import re
from pathlib import Path

# The reference models are package data of slmops.zoo (zoo/models/<name>/). They are found
# by path, not by importing slmops.zoo: the zoo re-exports the loading below, so it sits
# above this package.
REFERENCE_MODELS_DIR = Path(__file__).resolve().parent.parent / "zoo" / "models"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")  # org/name, when no such local path exists
HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model"]  # what a model folder needs


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
    if not candidate.exists() and isinstance(name_or_dir, str) and HUB_ID.fullmatch(name_or_dir):
        candidate = hub_folder(name_or_dir)
    if not candidate.is_dir():
        raise FileNotFoundError(f"model folder {candidate} does not exist")
    missing = [f for f in REQUIRED_FILES if not (candidate / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"model folder {candidate} lacks {', '.join(missing)}; slmops reads Hugging Face folders "
            "with safetensors weights and a fast tokenizer (save_pretrained writes both)"
        )
    return candidate


def hub_folder(repo_id: str) -> Path:
    """The local snapshot of Hugging Face Hub model ``repo_id`` (downloaded with
    huggingface_hub, or found in its cache). Offline, or for an id the Hub does not know, a
    FileNotFoundError that says so and names the local alternatives; it never hangs (the
    Hub client fails at once when the name does not resolve)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except Exception as e:  # offline, unknown or gated repo: huggingface_hub's many kinds
        from .downloads import DOWNLOADS

        raise FileNotFoundError(
            f"model folder {repo_id} does not exist, and as a Hugging Face Hub id it could not be "
            f"downloaded ({type(e).__name__}: {str(e).splitlines()[0][:160]}); is this machine offline? "
            f"Local alternatives: a model folder (`huggingface-cli download {repo_id} --local-dir DIR` "
            f"where a network exists, then -m DIR), a GGUF file, the reference models {reference_models()} "
            f"or the downloadable ones {sorted(DOWNLOADS)} (slmops zoo fetch NAME)"
        ) from e
