"""``quantize_model``: replace the linear layers of a torch model by ``QuantLinear``."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..nn import QuantLinear

METHODS = ("rtn", "gptq", "awq", "smoothquant")
DEFAULT_SKIP = ("lm_head", "*.lm_head")


@dataclass
class QuantizationSummary:
    """What ``quantize_model`` did: per replaced layer its name; per kept layer why."""

    format: str
    method: str = "rtn"
    seconds: float = 0.0  # time to compress (calibrated methods)
    replaced: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    bytes_before: int = 0  # weights of the replaced layers, as they were
    bytes_after: int = 0  # the same weights quantized (codes, scales, zero points)

    @property
    def ratio(self) -> float:
        return self.bytes_before / self.bytes_after if self.bytes_after else 1.0

    def __str__(self) -> str:
        mib = f"{self.bytes_before / 2**20:.2f} MiB -> {self.bytes_after / 2**20:.2f} MiB"
        head = f"quantized {len(self.replaced)} linear layers to {self.format} ({self.method})"
        lines = [f"{head}: {mib} ({self.ratio:.2f}x smaller)"]
        lines += [f"  kept {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)


def matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def quantize_model(
    model: nn.Module,
    method: str = "rtn",
    *,
    format: str = "int4",
    skip: Sequence[str] = DEFAULT_SKIP,
    include: Sequence[str] | None = None,
    activation: str = "float",
    tokenizer: Any = None,
    calibration: Any = None,
    n_samples: int = 128,
    seq_len: int = 512,
    bits: int | None = None,
    act_order: bool = False,
    damp: float = 0.01,
    progress: bool = True,
    **quant_options: Any,
) -> QuantizationSummary:
    """Replaces, in place, every ``nn.Linear`` of ``model`` by a ``QuantLinear``.

    ``method``: 'rtn' (round to nearest), 'gptq' (calibrated, see ``slmops.quantize.gptq``)
    or 'awq' (activation-aware scales and clipping, then RTN; ``slmops.quantize.awq``;
    int4 defaults to group 128 with zero points, the paper's setting; option
    ``duo_scaling`` = True, AutoAWQ's scales from activations and weights) or 'smoothquant'
    (format 'int8' with int8 per-token activations, option ``alpha`` = 0.5;
    ``slmops.quantize.smoothquant``). ``format`` and
    ``quant_options`` (group_size, symmetric, double_quant) as for ``slmops.ops.quantize``.
    ``skip`` and ``include`` are fnmatch patterns on module names
    (``model.layers.0.mlp.down_proj``); by default the ``lm_head`` stays float (embeddings
    are not linear layers). A layer whose shape the format cannot take (e.g. in_features
    not a multiple of 256 for q4_k) is kept float and reported in the summary's
    ``skipped``, never silently dropped.

    GPTQ options: ``bits`` (2, 3, 4 stored as int4; 8 as int8; default from ``format``),
    ``group_size`` (default 128; 0 = per row, int8 only), ``symmetric``, ``act_order``,
    ``damp``, ``mse`` (search each group's clipping range; recommended, most at 3 bits);
    calibration text ``calibration`` (None = the reference corpus, a .txt/.jsonl
    path or a list of texts) tokenized with ``tokenizer`` into ``n_samples`` windows of
    ``seq_len`` tokens (or ``calibration`` as a LongTensor [n, seq_len] of token ids).
    """
    from ..ops import FORMATS

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected one of {sorted(FORMATS)}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    targets, summary = _targets(model, format, skip, include)
    calibrated = dict(
        format=format, activation=activation, tokenizer=tokenizer, calibration=calibration,
        n_samples=n_samples, seq_len=seq_len, progress=progress, **quant_options,
    )  # fmt: skip
    if method == "gptq":
        from .gptq_model import gptq_quantize_model

        summary = gptq_quantize_model(
            model, targets, summary, bits=bits, act_order=act_order, damp=damp, **calibrated
        )
    elif method == "awq":
        from .awq import awq_quantize_model

        summary = awq_quantize_model(model, targets, summary, **calibrated)
    elif method == "smoothquant":
        from .smoothquant import smoothquant_model

        summary = smoothquant_model(model, targets, summary, **calibrated)
    else:
        for name in targets:
            linear = model.get_submodule(name)
            try:
                q = QuantLinear.from_linear(linear, format, activation=activation, **quant_options)
            except ValueError as e:  # shapes the format cannot take
                summary.skipped[name] = str(e)
                continue
            replace_linear(model, name, q, summary)
    if targets and not summary.replaced:  # options no layer can take: an error, not a float model
        reasons = sorted({summary.skipped[t] for t in targets if t in summary.skipped})
        raise ValueError(f"no layer could be quantized to {format!r}: {'; '.join(reasons[:3])}")
    return summary


def _targets(
    model: nn.Module, format: str, skip: Sequence[str], include: Sequence[str] | None
) -> tuple[list[str], QuantizationSummary]:
    """The names of the linears to quantize, and a summary recording the ones kept."""
    summary = QuantizationSummary(format=format)
    return select_linears(model, skip, include, summary.skipped), summary


def select_linears(
    model: nn.Module, skip: Sequence[str], include: Sequence[str] | None, skipped: dict[str, str]
) -> list[str]:
    """The names of the float ``nn.Linear``s of ``model`` that ``skip`` and ``include``
    (fnmatch patterns) select; the others are recorded in ``skipped`` with the reason."""
    targets = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or isinstance(module, QuantLinear):
            continue
        if matches(name, skip):
            skipped[name] = "matches skip"
        elif include is not None and not matches(name, include):
            skipped[name] = "not in include"
        else:
            targets.append(name)
    return targets


def replace_linear(model: nn.Module, name: str, q: QuantLinear, summary: QuantizationSummary) -> None:
    linear = model.get_submodule(name)
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    q.train(linear.training)  # a new module starts in training mode; keep the model's mode
    setattr(parent, child, q)
    summary.replaced.append(name)
    summary.bytes_before += linear.weight.numel() * linear.weight.element_size()
    summary.bytes_after += q.qweight.nbytes
