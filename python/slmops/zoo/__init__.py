"""The project's own small reference models, their corpus and tokenizer.

import slmops
slmops.zoo.list()                                   # ['kjv-student', 'kjv-teacher']
model, tokenizer = slmops.zoo.load("kjv-teacher")
slmops.evaluate_model(model, tokenizer, data=slmops.zoo.eval_text())
slmops.zoo.modern_eval_text()   # a second held-out text, modern English (apt-get install jargon-text)

Loading is ``slmops.models``'s (``zoo.load`` is ``slmops.models.load_model``). Real
pretrained models are downloaded by name, once, into the user cache::

    slmops.zoo.fetch("smollm2-135m-instruct")          # slmops zoo fetch smollm2-135m-instruct
    model, tokenizer = slmops.zoo.load("smollm2-135m-instruct")
"""

from ..models.downloads import DOWNLOADS, fetch
from .corpus import SPLITS, kjv_chapters, kjv_eval_slice, kjv_split
from .jargon import modern_eval_text
from .registry import DEFAULT_MODEL, check_tokenizer, eval_text, list_models, load, path
from .tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS, train_tokenizer

list = list_models  # noqa: A001 - slmops.zoo.list() is the public name

__all__ = [
    "CHAT_TEMPLATE",
    "DOWNLOADS",
    "DEFAULT_MODEL",
    "SPECIAL_TOKENS",
    "SPLITS",
    "check_tokenizer",
    "eval_text",
    "fetch",
    "kjv_chapters",
    "kjv_eval_slice",
    "kjv_split",
    "list",
    "list_models",
    "load",
    "modern_eval_text",
    "path",
    "train_tokenizer",
]
