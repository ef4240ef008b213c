"""The run config: a model, data, passes, evaluation with goals, a search, an output folder.

    model: kjv-teacher                      # a zoo name, a Hugging Face folder or a GGUF file
    data:
      eval: {type: eval_slice}             # the held-out slice shipped with slmops
      calib: {type: kjv, split: train, max_chars: 200000}
    passes:
      - {type: quantize, algorithm: rtn, format: int4, group_size: 32}
    evaluate:
      data: eval
      metrics: [perplexity, decode_speed, size]
      goals: {perplexity_increase_pct: 5, size_ratio: 0.3}
    search:
      space: {quantize.format: [int4, q4_k, nf4], quantize.group_size: [32, 128]}
      # or a list: candidates: [{quantize.algorithm: gptq}, {quantize.format: q4_0}]
    output_dir: runs/int4

Validation names every problem with its place (``passes[0].format``) and the allowed
values; pass options are checked against the options model the pass registered.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .registry import get_pass

DATA_OPTIONS = ("calibration", "data")  # pass options whose value is a dataset name


class ConfigError(ValueError):
    """A run config that cannot be used; the message lists every problem with its place."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    """A named dataset. ``kjv``: a split of the reference corpus (needs Debian's bible-kjv);
    ``eval_slice``: the held-out slice shipped with slmops; ``modern_slice``: held-out
    modern English, from the Jargon File (needs Debian's jargon-text); ``text``: a UTF-8
    file; ``jsonl``: one JSON object per line, text in ``field``."""

    type: Literal["kjv", "eval_slice", "modern_slice", "text", "jsonl"]
    path: str | None = None
    split: Literal["train", "validation", "test"] = "train"
    field: str = "text"
    max_chars: Annotated[int, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _path_when_needed(self) -> DataConfig:
        if self.type in ("text", "jsonl") and not self.path:
            raise ValueError(f"data of type {self.type!r} needs a path")
        return self


METRICS = ("perplexity", "decode_speed", "prefill_speed", "memory", "size")


class CustomMetric(_Strict):
    """A metric computed by ``module:function(model, tokenizer, data_text) -> float``."""

    name: str
    function: str
    higher_is_better: bool = False


class Goals(_Strict):
    """Constraints a candidate must meet, relative to the input model."""

    perplexity_increase_pct: float | None = None  # at most this % above the input's
    size_ratio: Annotated[float, Field(gt=0)] | None = None  # weight bytes at most this x the input's
    decode_speedup: Annotated[float, Field(gt=0)] | None = None  # decode tokens/s at least this x


class EvaluateConfig(_Strict):
    data: str | None = None
    metrics: list[str | CustomMetric] = ["perplexity", "decode_speed", "size"]
    seq_len: Annotated[int, Field(ge=2)] | None = None  # default: the model's context, at most 512
    stride: Annotated[int, Field(ge=1)] | None = None
    prompt_tokens: Annotated[int, Field(ge=1)] = 64
    decode_tokens: Annotated[int, Field(ge=1)] = 32
    repeats: Annotated[int, Field(ge=1)] = 5
    goals: Goals = Goals()
    # The order in which the best candidate is chosen among those meeting the goals.
    priority: list[Literal["perplexity", "size", "decode_speed"]] = ["perplexity", "size", "decode_speed"]

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, metrics: list) -> list:
        for i, m in enumerate(metrics):
            if isinstance(m, str) and m not in METRICS:
                raise ValueError(
                    f"metric [{i}] {m!r} is not one of {list(METRICS)}; a custom metric is "
                    "{name: ..., function: 'module:function'}"
                )
        return metrics


class SearchConfig(_Strict):
    """What to try, either a ``space`` of option values, ``"<pass name>.<option>": [values]``
    or ``{min, max, step}``, whose every combination is a candidate, or a list of
    ``candidates``, each ``{"<pass name>.<option>": value, ...}`` (for mixes a grid cannot
    say: GPTQ at int4 g128 beside round-to-nearest q4_0). Candidates are drawn without
    building the space: a space of any size is fine with ``max_trials``; without it, at
    most ``MAX_CANDIDATES``."""

    strategy: Literal["grid", "random"] = "grid"
    max_trials: Annotated[int, Field(ge=1)] | None = None
    seed: int = 0
    space: dict[str, list[Any] | dict[str, float]] = {}
    candidates: list[dict[str, Any]] = []

    @model_validator(mode="after")
    def _space_or_candidates(self) -> SearchConfig:
        if self.space and self.candidates:
            raise ValueError("a search has a space or a list of candidates, not both")
        return self

    def keys(self) -> list[str]:
        """Every ``<pass name>.<option>`` the search sets."""
        return list(self.space) or list(dict.fromkeys(k for c in self.candidates for k in c))


# A pass name becomes a folder name (<output_dir>/<name>-<artifact>): one plain path component.
PASS_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$"


class PassConfig(BaseModel):
    """One pass: ``type``, an optional unique ``name`` (default: the type; letters, digits,
    ``_`` and ``-``), and the pass's own options as further keys, validated by the pass."""

    model_config = ConfigDict(extra="allow")
    type: str
    name: Annotated[str, Field(pattern=PASS_NAME)] | None = None

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class RunConfig(_Strict):
    model: str
    data: dict[str, DataConfig] = {}
    passes: list[PassConfig] = []
    evaluate: EvaluateConfig = EvaluateConfig()
    search: SearchConfig | None = None
    output_dir: str = "slmops-run"
    seed: int = 0

    def pass_names(self) -> list[str]:
        return [p.name or p.type for p in self.passes]


def _where(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _format_errors(source: str, errors: list[tuple[str, str]]) -> str:
    lines = [f"{source}: {len(errors)} problem{'s' if len(errors) > 1 else ''}"]
    lines += [f"  {where}: {msg}" for where, msg in errors]
    return "\n".join(lines)


def parse_config(raw: Any, source: str = "config", base_dir: Path | None = None) -> RunConfig:
    """Validates a config (a dict, as read from YAML or JSON) and its pass options."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the config must be a mapping, got {type(raw).__name__}")
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            elif err["type"] == "literal_error":
                msg = f"{msg}, got {err['input']!r}"
            problems.append((_where(err["loc"]), msg))
        raise ConfigError(_format_errors(source, problems)) from None
    problems: list[tuple[str, str]] = []
    names = cfg.pass_names()
    for i, p in enumerate(cfg.passes):
        where = f"passes[{i}]"
        try:
            pass_cls = get_pass(p.type)
        except KeyError as e:
            problems.append((f"{where}.type", str(e.args[0])))
            continue
        try:
            pass_cls.Options.model_validate(p.options)
        except ValidationError as e:
            for err in e.errors():
                msg = "unknown option" if err["type"] == "extra_forbidden" else err["msg"]
                if err["type"] == "literal_error":
                    msg = f"{msg}, got {err['input']!r}"
                problems.append((f"{where}.{_where(err['loc'])}" if err["loc"] else where, msg))
        if names.count(names[i]) > 1:
            problems.append(
                (f"{where}.name", f"pass name {names[i]!r} is used twice; give each a unique name")
            )
        for key in DATA_OPTIONS:  # options that name a dataset of the config
            if p.options.get(key) is not None and p.options[key] not in cfg.data:
                problems.append(
                    (f"{where}.{key}", f"no dataset named {p.options[key]!r}; data has {sorted(cfg.data)}")
                )
    for key, values in (cfg.search.space if cfg.search else {}).items():
        if isinstance(values, dict) and (set(values) != {"min", "max", "step"} or not values["step"]):
            problems.append(
                (f"search.space.{key}", f"a range is {{min, max, step}} with step != 0, got {values}")
            )
    for key in cfg.search.keys() if cfg.search else []:
        where = f"search.{'space' if cfg.search and cfg.search.space else 'candidates'}.{key}"
        pass_name, _, option = key.partition(".")
        if pass_name not in names:
            problems.append((where, f"no pass named {pass_name!r}; passes are {names}"))
        elif option not in get_pass(cfg.passes[names.index(pass_name)].type).Options.model_fields:
            problems.append((where, f"pass {pass_name!r} has no option {option!r}"))
    if cfg.evaluate.data is not None and cfg.evaluate.data not in cfg.data:
        problems.append(
            ("evaluate.data", f"no dataset named {cfg.evaluate.data!r}; data has {sorted(cfg.data)}")
        )
    for name, d in cfg.data.items():
        if d.path and base_dir is not None and not Path(d.path).is_absolute():
            d.path = str(base_dir / d.path)
        if d.path and not Path(d.path).is_file():
            problems.append((f"data.{name}.path", f"file {d.path} does not exist"))
    if problems:
        raise ConfigError(_format_errors(source, problems))
    return cfg


class _NoAliasLoader(yaml.SafeLoader):
    """safe_load without anchors and aliases: a few nested aliases expand to billions of
    nodes (the "billion laughs"), and a run config has no need of them."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(
                f"aliases (*{event.anchor}) are not allowed in a run config{event.start_mark}"
            )
        return super().compose_node(parent, index)


def load_config(path: str | os.PathLike[str]) -> RunConfig:
    """Reads a YAML (.yaml, .yml) or JSON (.json) run config; relative data paths are taken
    from the config file's folder."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    text = p.read_text(encoding="utf-8")
    try:
        raw = json.loads(text) if p.suffix == ".json" else yaml.load(text, Loader=_NoAliasLoader)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{p}: not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {e}") from None
    return parse_config(raw, source=str(p), base_dir=p.parent)
