"""The reference models shipped inside the package and their held-out evaluation text.
Finding and loading a model (by name, or any Hugging Face folder) is ``slmops.models``'s;
the zoo keeps its names for it: ``slmops.zoo.load``, ``path``, ``list_models``."""

from __future__ import annotations

from pathlib import Path

from ..models import REFERENCE_MODELS_DIR as MODELS_DIR
from ..models import check_tokenizer
from ..models import load_model as load
from ..models import model_folder as path
from ..models import reference_models as list_models

ZOO_DIR = Path(__file__).parent
EVAL_SLICE = ZOO_DIR / "data" / "kjv-test-slice.txt"
DEFAULT_MODEL = "kjv-teacher"

__all__ = [
    "DEFAULT_MODEL",
    "EVAL_SLICE",
    "MODELS_DIR",
    "check_tokenizer",
    "eval_text",
    "list_models",
    "load",
    "path",
]


def eval_text() -> str:
    """The held-out evaluation slice shipped with slmops (12 chapters of the test split)."""
    return EVAL_SLICE.read_text(encoding="utf-8")
