"""One release of grace for ``slmops.distill(...)``, ``slmops.finetune(...)``,
``slmops.evaluate(...)`` and ``slmops.export(...)``. Until 0.2 the package root bound those
names to functions, which shadowed the packages (``import slmops.export.gguf`` then left
``slmops.export.gguf`` unreachable). The names are the packages now and the functions are
``slmops.distill_model`` and its siblings; the package modules stay callable, warn and
forward, so code written against 0.1 keeps running until 0.3."""

from __future__ import annotations

import types
import warnings
from typing import Any

REMOVED_IN = "0.3"


class _CallablePackage(types.ModuleType):
    """A package whose module object forwards a call to one of its functions, with a warning."""

    _function: str  # the function's name inside the package
    _new_name: str  # what to call instead

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        warnings.warn(
            f"calling {self.__name__}(...) is deprecated and stops working in slmops {REMOVED_IN}: "
            f"call {self._new_name}(...) instead (the same function; {self.__name__} is the package)",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(self, self._function)(*args, **kwargs)


def callable_package(module: types.ModuleType, function: str, new_name: str) -> None:
    """Makes ``module(...)`` call ``module.<function>(...)`` after a DeprecationWarning that
    names ``new_name``. The module stays a plain package otherwise (its attributes, its
    submodules, ``isinstance(module, types.ModuleType)``)."""
    cls = type(
        f"CallablePackage[{module.__name__}]",
        (_CallablePackage,),
        {"_function": function, "_new_name": new_name, "__module__": __name__},
    )
    module.__class__ = cls
