"""The pass registry: a pass is a class with a ``type`` name, a pydantic ``Options`` model
and a ``run`` method; ``@register_pass`` makes it usable in configs. The engine knows
passes only through this interface."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from .._options import one_of  # noqa: F401 - the passes' option checks


class PassOptions(BaseModel):
    """Base of every pass's options: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class PassContext:
    """What a pass may use besides the model: named datasets (as text), a folder for its
    artifacts, the run's seed and logger."""

    data: Callable[[str], str]
    artifacts_dir: Path
    seed: int
    log: logging.Logger


@dataclass
class PassOutput:
    model: Any
    tokenizer: Any
    info: dict[str, Any] = field(default_factory=dict)  # what the pass did, for the report
    artifacts: dict[str, str] = field(default_factory=dict)  # name -> path inside artifacts_dir


class Pass:
    type: ClassVar[str]
    Options: ClassVar[type[PassOptions]] = PassOptions
    # Part of the cache key: bump it when the pass computes something different.
    version: ClassVar[int] = 1

    def normalize(self, options: PassOptions) -> dict[str, Any]:
        """The options that determine the result (the cache key); drops those that do not
        apply, so equivalent candidates share one cached output."""
        return options.model_dump()

    def run(self, model: Any, tokenizer: Any, options: PassOptions, ctx: PassContext) -> PassOutput:
        """Transforms the model (in place or not) and returns it; every pass overrides this."""
        raise NotImplementedError(f"pass {type(self).__name__} does not implement run()")


_PASSES: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: makes ``cls`` available as ``type: <cls.type>`` in run configs."""
    name = getattr(cls, "type", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} must set a class attribute type = '<pass name>'")
    if name in _PASSES and _PASSES[name] is not cls:
        raise ValueError(f"a pass of type {name!r} is already registered ({_PASSES[name].__name__})")
    _PASSES[name] = cls
    return cls


def get_pass(name: str) -> type[Pass]:
    if name not in _PASSES:
        raise KeyError(f"unknown pass type {name!r}; available: {sorted(_PASSES)}")
    return _PASSES[name]


def available_passes() -> list[str]:
    return sorted(_PASSES)
