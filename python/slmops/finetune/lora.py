"""LoRA on a whole model: which linear layers get adapters, adding, switching and merging them.

Target modules are given as peft takes them: ``"all-linear"`` (every linear layer but the
output head), a list of names (a module matches a name when its path is the name or ends
with ``.<name>``), or one regular expression matched against whole module paths. Unlike
peft, every name must match at least one layer: ``["q_proj", "v_proj"]`` on a Phi-3-family
model (fused ``qkv_proj``) is an error that lists the layer names the model has, not a run
that silently adapts fewer layers than asked.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from ..nn import LoRALinear, QuantLinear
from .options import ALL_LINEAR, LoRAOptions  # defined with the other options of fine-tuning


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, QuantLinear, LoRALinear))


def linear_layers(model: nn.Module) -> list[str]:
    """Paths of the layers LoRA can adapt (float or quantized linears), adapted ones included;
    the layers inside a LoRALinear are not listed separately."""
    names = []
    for name, module in model.named_modules():
        if _is_linear(module) and not (name.endswith(".base_layer") or ".lora_" in name):
            names.append(name)
    return names


def _head_names(model: nn.Module) -> set[str]:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {name for name, m in model.named_modules() if head is not None and m is head}


def _known_names(names: list[str]) -> str:
    short = sorted({n.rsplit(".", 1)[-1] for n in names})
    return f"{', '.join(short)} (full paths like {names[0]!r})" if names else "none"


def find_targets(model: nn.Module, target_modules: str | Sequence[str]) -> list[str]:
    """The paths of the linear layers ``target_modules`` selects; a name or pattern that
    selects nothing is an error listing the names the model's linear layers have."""
    names = linear_layers(model)
    if target_modules == ALL_LINEAR:
        heads = _head_names(model)
        found = [n for n in names if n not in heads]
    elif isinstance(target_modules, str):
        try:
            pattern = re.compile(target_modules)
        except re.error as e:
            raise ValueError(
                f"target_modules {target_modules!r} is not a valid regular expression: {e}"
            ) from None
        found = [n for n in names if pattern.fullmatch(n)]
        if not found:
            raise ValueError(
                f"target_modules pattern {target_modules!r} matches no linear layer of "
                f"{type(model).__name__}; its linear layers are named {_known_names(names)}"
            )
    else:
        found, missing = [], []
        for target in target_modules:
            hits = [n for n in names if n == target or n.endswith("." + target)]
            if not hits:
                missing.append(target)
            found += [n for n in hits if n not in found]
        if missing:
            raise ValueError(
                f"target module(s) {', '.join(map(repr, missing))} match no linear layer of "
                f"{type(model).__name__}; its linear layers are named {_known_names(names)}"
            )
        found = [n for n in names if n in found]  # model order
    if not found:
        raise ValueError(f"{type(model).__name__} has no linear layer to adapt")
    return found


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def add_lora(
    model: nn.Module, options: LoRAOptions | None = None, adapter_name: str = "default"
) -> list[str]:
    """Adds adapter ``adapter_name`` to the layers ``options.target_modules`` selects (wrapping
    them in :class:`LoRALinear`, or adding to one already there), makes it the active adapter
    everywhere, and leaves only its weights trainable. Returns the adapted layers' paths."""
    opts = options or LoRAOptions()
    targets = find_targets(model, opts.target_modules)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in targets:
        module = model.get_submodule(name)
        kw = dict(use_rslora=opts.use_rslora, init=opts.init)
        if isinstance(module, LoRALinear):
            module.add_adapter(adapter_name, opts.r, opts.alpha, opts.dropout, **kw)
        else:
            module = LoRALinear(module, opts.r, opts.alpha, opts.dropout, adapter_name=adapter_name, **kw)
            _replace(model, name, module)
    set_adapter(model, adapter_name)
    return targets


def set_adapter(model: nn.Module, adapter_name: str | None) -> None:
    """Switches every LoRA layer to ``adapter_name`` (None: the base alone); only the active
    adapter's weights are trainable. Layers without that adapter run their base alone."""
    layers = lora_layers(model)
    if adapter_name is not None and not any(adapter_name in m.adapters for m in layers.values()):
        have = sorted({a for m in layers.values() for a in m.adapters})
        raise KeyError(f"the model has no adapter named {adapter_name!r}; it has {have}")
    for m in layers.values():
        m.set_adapter(adapter_name if adapter_name in m.adapters else None)
        for name in m.adapters:
            for p in (*m.lora_A[name].parameters(), *m.lora_B[name].parameters()):
                p.requires_grad_(name == adapter_name)


def merge_lora(model: nn.Module, adapter_name: str | None = None) -> nn.Module:
    """Replaces, in place, every LoRA layer by a float ``nn.Linear`` of its base (dequantized
    if quantized) plus adapter ``adapter_name`` (default: the active one; layers without it
    keep their base) and a QLoRA base's 16-bit embedding becomes float32 again: a plain
    float model. Re-quantize it with ``slmops.quantize.quantize_model``."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers to merge")
    for name, m in layers.items():
        wanted = m.active_adapter if adapter_name is None else adapter_name
        if wanted in m.adapters:
            merged = m.merged(wanted)
        elif isinstance(m.base_layer, QuantLinear):  # no adapter here: still a float model out
            merged = nn.Linear(m.in_features, m.out_features, bias=m.base_layer.bias is not None)
            merged.weight.data.copy_(m.base_layer.qweight.dequantize("float32"))
            if m.base_layer.bias is not None:
                merged.bias.data.copy_(m.base_layer.bias.detach())
        else:
            merged = m.base_layer
        _replace(model, name, merged.train(m.training))
    from .qlora import restore_float_storage

    restore_float_storage(model)
    return model


@dataclass(frozen=True)
class ParameterCounts:
    trainable: int
    total: int
    frozen_bytes: int  # the frozen base as stored: parameters and buffers (quantized codes, scales)
    total_bytes: int  # every parameter and buffer


def count_parameters(model: nn.Module) -> ParameterCounts:
    """Trainable and total parameters (a tied weight once), and the bytes of the frozen rest
    and of everything."""
    trainable = total = trainable_bytes = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
            trainable_bytes += p.numel() * p.element_size()
    stored = sum(p.numel() * p.element_size() for p in model.parameters())
    stored += sum(b.numel() * b.element_size() for b in model.buffers())
    return ParameterCounts(trainable, total, stored - trainable_bytes, stored)
