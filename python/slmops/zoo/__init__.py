"""The project's own small reference models, their corpus and tokenizer."""

from .corpus import SPLITS, kjv_chapters, kjv_split
from .tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS, train_tokenizer

__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "SPLITS", "kjv_chapters", "kjv_split", "train_tokenizer"]
