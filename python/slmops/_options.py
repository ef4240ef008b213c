"""Typed options: the base every algorithm's options model derives from, and the views
derived from those models instead of being written again: the options of a workflow pass
(the fields of several models side by side) and command-line flags.

A field is written once, in the layer that implements the algorithm, with its default,
its constraint and its one-line description (``Field(default, ge=..., description=...)``;
see ``slmops.quantize.options.CalibrationOptions``).

Lists of choices are ``choice(allowed)`` fields: checked with the lower layer's list (so a
new format is accepted the day it lands) and offered as ``choices`` on the command line.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, create_model
from pydantic.fields import FieldInfo


class Options(BaseModel):
    """Base of every options model: unknown keys are errors, instances are immutable, and
    defaults are validated like given values."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump()


def one_of(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """``value`` if it is in ``allowed`` (a list a lower layer owns), else a ValueError
    that names the option and the choices."""
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def choice(allowed: Callable[[], Iterable[Any]] | Iterable[Any]) -> Any:
    """A string option whose value must be one of ``allowed`` (or of what the callable
    returns: the list is read when the option is checked, from the layer that owns it)."""

    def read() -> list[Any]:
        return list(allowed() if callable(allowed) else allowed)

    def check(value: Any, info: ValidationInfo) -> Any:
        return one_of(info.field_name or "value", value, read())

    # The list is read when asked for (choices_of), not frozen into the schema at import:
    # pydantic types json_schema_extra's values as JSON, which a callable is not.
    return Annotated[str, AfterValidator(check), Field(json_schema_extra={"choices": read})]  # type: ignore[dict-item]


def choices_of(field: FieldInfo) -> list[Any] | None:
    extra = field.json_schema_extra
    read = extra.get("choices") if isinstance(extra, dict) else None
    return list(read()) if callable(read) else None


def side_by_side(
    name: str, models: Sequence[type[BaseModel]], base: type[BaseModel], **extra: Any
) -> type[BaseModel]:
    """A model with the fields of all ``models`` (as a workflow pass takes them: one config
    may search over several algorithms), on ``base``, plus ``extra`` fields given as
    ``name=(type, FieldInfo or default)``, which replace the models' fields of that name.
    A field in several models must be the same in each (one default, one constraint)."""
    fields: dict[str, tuple[Any, FieldInfo]] = {}
    for model in models:
        for key, info in model.model_fields.items():
            if key in extra:
                continue
            if key in fields and repr(fields[key][1]) != repr(info):
                raise TypeError(f"{name}: field {key!r} differs between the models it merges")
            fields[key] = (info.annotation, info)  # the FieldInfo carries the constraints
    # mypy checks a **mapping against every keyword of create_model (__config__, __doc__, ...),
    # which a tuple value does not fit; the keys here are field names only.
    return create_model(name, __base__=base, **typing.cast("dict[str, Any]", fields), **extra)


def pick(model: type[BaseModel], values: dict[str, Any]) -> BaseModel:
    """``model`` built from the entries of ``values`` it has fields for."""
    return model(**{k: v for k, v in values.items() if k in model.model_fields})


# -- command-line flags --------------------------------------------------------------------


def add_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    models: type[BaseModel] | Sequence[type[BaseModel]],
    *,
    only: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    prefix: str = "",
    aliases: dict[str, Sequence[str]] | None = None,
    required: Sequence[str] = (),
    dest_prefix: str = "",
) -> list[str]:
    """Adds a ``--flag`` per field of ``models`` (one model or several side by side; ``only``
    these fields, in that order, or all but ``exclude``): ``--group-size`` for
    ``group_size``, with the type, choices, default and description of the field. Flags left
    out of a command line are absent from the parsed namespace (see ``given``), so the
    defaults stay the model's. Returns the fields added."""
    models = [models] if isinstance(models, type) else list(models)
    fields: dict[str, FieldInfo] = {}
    for model in models:
        for key, info in model.model_fields.items():
            fields.setdefault(key, info)
    aliases = aliases or {}
    names = list(only) if only is not None else [k for k in fields if k not in exclude]
    for key in names:
        info = fields[key]
        flags = [f"--{prefix}{key.replace('_', '-')}", *aliases.get(key, ())]
        kwargs: dict[str, Any] = {"dest": dest_prefix + key}
        if key in required:
            kwargs["required"] = True
        else:
            kwargs["default"] = argparse.SUPPRESS
        help_text = info.description or ""
        default = info.get_default(call_default_factory=True)
        kind = _scalar_type(info.annotation)
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind is list:
            kwargs.update(nargs="+", type=str)
        else:
            kwargs["type"] = kind
            choices = choices_of(info)
            if choices is not None:
                kwargs["choices"] = choices
        if default not in (None, False, "", []) and key not in required:
            help_text += f" (default: {_show(default)})"
        help_text = help_text.strip().replace("%", "%%")  # argparse %-formats help texts
        parser.add_argument(*flags, help=help_text or None, **kwargs)
    return names


def given(args: argparse.Namespace, names: Iterable[str], dest_prefix: str = "") -> dict[str, Any]:
    """The options among ``names`` that the command line set."""
    return {k: getattr(args, dest_prefix + k) for k in names if hasattr(args, dest_prefix + k)}


def _scalar_type(annotation: Any) -> Any:
    """What a flag parses: bool, int, float, str, or list (of strings), from a field's type
    (``X | None`` reads as X; ``str | list[str]`` as a string)."""
    args: Sequence[Any] = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    args = [a for a in args if a is not type(None)]
    for kind in (bool, int, float, str):
        if kind in args:
            return kind
    if any(typing.get_origin(a) is list for a in args):
        return list
    return str


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return str(value)
