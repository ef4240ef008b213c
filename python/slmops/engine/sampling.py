"""How the engine picks each next token (light: no torch, so the CLI reads the options for
its flags without loading a model library)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import _C


@dataclass(frozen=True)
class SamplingOptions:
    """How the next token is chosen. ``temperature`` 0 is greedy. Applied in this order:
    penalties (``repetition_penalty`` over prompt and output, as transformers'; OpenAI's
    ``presence_penalty`` and ``frequency_penalty`` over the output), temperature, ``top_k``,
    ``top_p``, ``min_p``, then one draw from a generator seeded with ``seed``."""

    temperature: float = field(default=0.0, metadata={"help": "0: greedy"})
    top_k: int = field(default=0, metadata={"help": "keep the k most likely tokens (0: all)"})
    top_p: float = field(default=1.0, metadata={"help": "keep the most likely tokens holding this mass"})
    min_p: float = field(default=0.0, metadata={"help": "drop tokens below min_p times the top probability"})
    repetition_penalty: float = field(default=1.0, metadata={"help": "divide seen tokens' logits (1: off)"})
    presence_penalty: float = field(default=0.0, metadata={"help": "subtract from generated tokens' logits"})
    frequency_penalty: float = field(default=0.0, metadata={"help": "subtract per occurrence in the output"})
    seed: int = field(default=0, metadata={"help": "the same seed gives the same tokens"})

    def sampler(self) -> Any:
        return _C.Sampler(
            self.temperature, self.top_k, self.top_p, self.min_p,
            self.repetition_penalty, self.presence_penalty, self.frequency_penalty, self.seed,
        )  # fmt: skip
