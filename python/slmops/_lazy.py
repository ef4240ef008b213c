"""PEP 562 lazy names for the package ``__init__`` files: a package lists which submodule
holds each public name, and the submodule is imported on the name's first use. So
importing a package (or one light submodule of it, such as its ``options``) does not
import torch and transformers through its heavy siblings."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_getattr(package: str, names: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``names`` maps a public name to the
    submodule that defines it (``"train"``), or to ``"submodule:attribute"`` where the
    attribute is named otherwise there."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attr = names[name].partition(":")
        return getattr(importlib.import_module(f"{package}.{module}"), attr or name)

    return __getattr__
