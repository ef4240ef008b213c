"""LoRA adapters in the peft format: ``adapter_config.json`` (written by peft's
``LoraConfig``) and ``adapter_model.safetensors`` with the weights under peft's names,
``base_model.model.<module path>.lora_A.weight`` / ``lora_B.weight``. The folder loads
with ``peft.PeftModel.from_pretrained(base, folder)``, and adapters peft wrote load here,
onto a float base or a quantized one (QLoRA)."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .lora import LoRAOptions, _replace, add_lora, linear_layers, lora_layers

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_SUFFIXES = (".lora_A.weight", ".lora_B.weight")


def _target_modules(model: nn.Module, adapted: list[str]) -> list[str]:
    """The short names (``q_proj``) when they select exactly the adapted layers, else the
    full paths: peft re-applies the adapter to what these select."""
    short = sorted({n.rsplit(".", 1)[-1] for n in adapted})
    selected = [n for n in linear_layers(model) if n.rsplit(".", 1)[-1] in short]
    return short if sorted(selected) == sorted(adapted) else sorted(adapted)


def save_adapter(
    model: nn.Module,
    folder: str | os.PathLike[str],
    adapter_name: str | None = None,
    *,
    base_model_name_or_path: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes adapter ``adapter_name`` (default: the active one) of ``model`` to ``folder``
    in the peft format, atomically (an existing folder only if slmops wrote it, or with
    ``overwrite``). Returns the folder."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    from .._io import atomic_dir

    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers (add_lora or finetune first)")
    if adapter_name is None:
        active = {m.active_adapter for m in layers.values()} - {None}
        if len(active) != 1:
            raise ValueError(
                f"name the adapter to save; the model's LoRA layers have {sorted(active)} active"
            )
        adapter_name = active.pop()
    mine = {name: m for name, m in layers.items() if adapter_name in m.adapters}
    if not mine:
        have = sorted({a for m in layers.values() for a in m.adapters})
        raise KeyError(f"the model has no adapter named {adapter_name!r}; it has {have}")
    shapes = {
        (m.r[adapter_name], m.lora_alpha[adapter_name], m.use_rslora[adapter_name]) for m in mine.values()
    }
    if len(shapes) != 1:
        raise ValueError(f"adapter {adapter_name!r} has layers of different r/alpha/rsLoRA: {sorted(shapes)}")
    r, alpha, rslora = shapes.pop()
    first = next(iter(mine.values()))
    dropout = getattr(first.lora_dropout[adapter_name], "p", 0.0)
    tensors = {}
    for name, m in mine.items():
        tensors[f"{_PREFIX}{name}.lora_A.weight"] = m.lora_A[adapter_name].weight.detach().contiguous().cpu()
        tensors[f"{_PREFIX}{name}.lora_B.weight"] = m.lora_B[adapter_name].weight.detach().contiguous().cpu()
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, use_rslora=rslora, bias="none", task_type="CAUSAL_LM",
        target_modules=_target_modules(model, list(mine)), base_model_name_or_path=base_model_name_or_path,
    )  # fmt: skip
    with atomic_dir(folder, overwrite=overwrite) as tmp:
        config.save_pretrained(str(tmp))
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
    return Path(folder)


_UNSUPPORTED = {  # adapter_config keys whose non-default values this loader cannot honor
    "use_dora": False,
    "bias": "none",
    "fan_in_fan_out": False,
    "lora_bias": False,
}


def read_adapter_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} holds no {CONFIG_FILE}: not a peft adapter folder")
    config = json.loads(path.read_text())
    if not isinstance(config, dict):
        raise ValueError(f"{path}: not a JSON object")
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{path}: peft_type {config.get('peft_type')!r}; slmops loads LORA adapters")
    for key, default in _UNSUPPORTED.items():
        if config.get(key, default) != default:
            raise ValueError(f"{path}: {key}={config[key]!r} is not supported (slmops loads plain LoRA)")
    for key in ("rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform"):
        if config.get(key):
            raise ValueError(f"{path}: {key} is not supported (one rank and alpha for every layer)")
    r = config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ValueError(f"{path}: r must be an integer >= 1, got {r!r}")
    _check_number(path, config, "lora_alpha", required=True)
    _check_number(path, config, "lora_dropout", required=False)
    if not isinstance(config.get("use_rslora", False), bool):
        raise ValueError(f"{path}: use_rslora must be true or false, got {config['use_rslora']!r}")
    return config


def _check_number(path: Path, config: dict[str, Any], key: str, required: bool) -> None:
    """A finite JSON number (null counts as absent where the key is optional, as peft writes)."""
    value = config.get(key)
    if value is None and not required:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{path}: {key} must be a finite number, got {value!r}")


def load_adapter(
    model: nn.Module, folder: str | os.PathLike[str], adapter_name: str = "default", verify: bool = True
) -> list[str]:
    """Adds the peft-format adapter in ``folder`` to ``model`` as ``adapter_name`` (the
    active one from now on) and returns the adapted layers' paths. The layers are those the
    weights file names; each must exist in the model with the adapter's shapes. All or
    nothing: every tensor is checked before the model changes, and a failure while adding
    leaves the model as it was. A folder slmops wrote is first checked against its manifest
    (``verify=False`` skips that)."""
    from safetensors.torch import load_file

    from .._io import verify_folder

    config = read_adapter_config(folder)
    weights_path = Path(folder) / WEIGHTS_FILE
    if not weights_path.is_file():
        raise FileNotFoundError(f"{folder} holds no {WEIGHTS_FILE}")
    if verify:
        verify_folder(folder)
    tensors = load_file(str(weights_path))
    paths = []
    for key in tensors:
        suffix = next((s for s in _SUFFIXES if key.endswith(s)), None)
        if not key.startswith(_PREFIX) or suffix is None:
            raise ValueError(f"{weights_path}: unexpected tensor {key!r} (not a LoRA A or B weight)")
        path = key[len(_PREFIX) : -len(suffix)]
        if path not in paths:
            paths.append(path)
    known = set(linear_layers(model))
    missing = [p for p in paths if p not in known]
    if missing:
        raise ValueError(
            f"{weights_path} adapts layers the model does not have as linear layers: {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''} (an adapter for another architecture?)"
        )
    r = config["r"]
    for path in paths:  # before anything is allocated or changed
        layer = model.get_submodule(path)
        if adapter_name in getattr(layer, "adapters", ()):
            raise ValueError(f"layer {path} already has an adapter named {adapter_name!r}")
        for key, shape in (
            (".lora_A.weight", (r, layer.in_features)),
            (".lora_B.weight", (layer.out_features, r)),
        ):
            t = tensors.get(_PREFIX + path + key)
            if t is None or tuple(t.shape) != shape or not t.dtype.is_floating_point:
                got = None if t is None else f"{tuple(t.shape)} {t.dtype}"
                raise ValueError(
                    f"{weights_path}: {path}{key} is {got}; the model needs {shape} floating point"
                )
    # the exact paths as one regex: the names in a peft config may select more layers
    options = LoRAOptions(
        r=r, alpha=float(config["lora_alpha"]),
        dropout=float(config.get("lora_dropout") or 0.0), use_rslora=config.get("use_rslora", False),
        target_modules="|".join(map(re.escape, paths)),
    )  # fmt: skip
    originals = {path: model.get_submodule(path) for path in paths}
    trainable = {p: p.requires_grad for p in model.parameters()}
    active = {name: m.active_adapter for name, m in lora_layers(model).items()}
    try:
        add_lora(model, options, adapter_name)
        layers = lora_layers(model)
        with torch.no_grad():
            for path in paths:
                for part, key in (("lora_A", ".lora_A.weight"), ("lora_B", ".lora_B.weight")):
                    dst = getattr(layers[path], part)[adapter_name].weight
                    dst.copy_(tensors[_PREFIX + path + key].to(dst.dtype))
    except BaseException:
        _restore(model, originals, adapter_name, trainable, active)
        raise
    return paths


def _restore(
    model: nn.Module, originals: dict[str, nn.Module], adapter_name: str, trainable: dict, active: dict
) -> None:
    """Undoes a partly added adapter: the wrapped layers, the flags, the active adapters."""
    for path, module in originals.items():
        if model.get_submodule(path) is not module:
            _replace(model, path, module)
        elif adapter_name in getattr(module, "adapters", ()):
            module.delete_adapter(adapter_name)
    for p, flag in trainable.items():
        p.requires_grad_(flag)
    for name, m in lora_layers(model).items():
        m.set_adapter(active.get(name))
