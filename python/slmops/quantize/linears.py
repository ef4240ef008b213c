"""The linears an algorithm replaces: which ones (fnmatch patterns on module names), the
replacement, and the summary of what was done. Shared by every quantization algorithm and
by pruning."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn

from ..nn import QuantLinear


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
