"""slmops checkpoints, their format and their reader (``slmops.export.save_checkpoint``
writes them): a Hugging Face model folder whose linear layers may be slmops modules.

The folder is what ``save_pretrained`` writes (config, tokenizer, generation config), with
every tensor of the model's state in ``model.safetensors``: float parameters as they are,
a ``QuantLinear`` as its quantized buffers (``<layer>.qweight_data``, ``..._scales``, ...),
a ``SparseLinear`` as its sparse ones (``<layer>.sparse_values``, ``..._indices``, ...).
``config.json`` gains ``quantization_config = {"quant_method": "slmops", "layers": {name:
layout options}}``, so the loader can rebuild those modules before loading the tensors.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

QUANT_METHOD = "slmops"


def quant_method(folder: str | os.PathLike[str]) -> str | None:
    """The ``quantization_config.quant_method`` of a model folder's config, if any."""
    cfg = Path(folder) / "config.json"
    if not cfg.is_file():
        return None
    qc = json.loads(cfg.read_text()).get("quantization_config") or {}
    return qc.get("quant_method")


def is_checkpoint(folder: str | os.PathLike[str]) -> bool:
    """True if the folder's config names slmops as its quantization method."""
    return quant_method(folder) == QUANT_METHOD


def empty_model(folder: str | os.PathLike[str], dtype: Any = None) -> tuple[Any, dict]:
    """A model built from ``folder``'s config with its parameters on the meta device (no
    memory: the loader assigns the stored tensors, so a quantized checkpoint never holds
    its float weights) and the config's ``quantization_config``, removed from the config so
    that transformers does not look for a quantizer of that name."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    qc = getattr(config, "quantization_config", None) or {}
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    stored = _stored_tensor_shapes(Path(folder))
    layers = getattr(config, "num_hidden_layers", 0) or 0
    if stored is not None and layers > len(stored):  # before building: 10^9 layers take forever even on meta
        raise ValueError(f"{folder}: config.json has {layers} layers; the weights hold {len(stored)} tensors")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype or torch.float32)
    if stored is not None:
        _check_config_fits_weights(Path(folder), model, stored)
    _materialize_buffers(model)
    return model, (qc if isinstance(qc, dict) else qc.to_dict())


def _materialize_buffers(model: Any) -> None:
    """The meta model's buffers made real and computed by transformers' own initializer
    (the rotary tables: non-persistent, so no checkpoint stores them)."""
    import torch

    owners = {}
    for name, buffer in list(model.named_buffers()):
        owner_name, _, attr = name.rpartition(".")
        if buffer.is_meta:
            owner = model.get_submodule(owner_name)
            owner._buffers[attr] = torch.empty_like(buffer, device="cpu")
            owners[owner_name] = owner
    for owner in owners.values():
        model._init_weights(owner)


def _stored_tensor_shapes(folder: Path) -> list[list[int]] | None:
    """The shapes in ``model.safetensors``'s header (None without the file: the loader
    names it)."""
    from safetensors import safe_open

    weights = folder / "model.safetensors"
    if not weights.is_file():
        return None
    with safe_open(str(weights), framework="pt") as f:
        return [f.get_slice(k).get_shape() for k in f.keys()]


def _check_config_fits_weights(folder: Path, model: Any, shapes: list[list[int]]) -> None:
    """A config.json describing a far larger model than the weight file holds (a damaged or
    hostile one: vocab_size 10^9) is refused before anything is allocated for it: the
    parameter count of the meta-device model against the values in the file's header."""
    stored = sum(math.prod(shape) for shape in shapes)
    wanted = sum(p.numel() for p in model.parameters())
    if wanted > 16 * stored + (1 << 20):  # 4-bit codes hold 8 weights a byte; ample slack above that
        raise ValueError(
            f"{folder}: config.json describes {wanted:,} parameters; the weights hold {stored:,} values"
        )


def load_state(model: Any, state: dict, src: Path, complete: tuple[str, ...] = ()) -> None:
    """Loads ``state`` into ``model``, ties the weights, and raises on missing or unexpected
    tensors (a tied lm_head, the slmops extra state and the tensors of the modules named in
    ``complete``, already built with their weights, are not missing). A tensor's kind must
    match: integer codes stay integers of their exact dtype (load_state_dict would cast a
    BOOL or F8 file tensor silently), and float tensors float (any width: dtype converts).
    The tensors are assigned, not copied: the model may be on the meta device
    (``empty_model``), and nothing is held twice."""
    import torch

    expected = model.state_dict()
    for name, t in state.items():
        want = expected.get(name)
        if not isinstance(want, torch.Tensor):
            continue
        same_kind = t.dtype.is_floating_point and want.dtype.is_floating_point
        if not same_kind and t.dtype != want.dtype:
            raise ValueError(f"checkpoint {src}: tensor {name} is {t.dtype}, the model needs {want.dtype}")
        if same_kind and t.dtype != want.dtype:  # assign keeps the file's dtype: convert first
            state[name] = t.to(want.dtype)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if k.rsplit(".", 1)[0] not in complete]
    model.tie_weights()
    tied = {n for n, _ in model.named_parameters(remove_duplicate=False)} - {
        n for n, _ in model.named_parameters()
    }
    missing = [k for k in missing if not k.endswith("_extra_state") and k not in tied]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {src} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    still_empty = [n for n, t in model.state_dict().items() if isinstance(t, torch.Tensor) and t.is_meta]
    if still_empty:
        raise ValueError(f"checkpoint {src} does not match its config: missing {still_empty[:5]}")


def set_module(model: Any, name: str, module: Any) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def load_checkpoint(folder: str | os.PathLike[str], dtype: Any = None) -> Any:
    """The model of an slmops checkpoint (float parameters in ``dtype``, default float32)."""
    import torch
    from safetensors.torch import load_file

    from ..nn import QuantLinear, SparseLinear
    from ..ops import FORMATS

    src = Path(folder)
    model, qc = empty_model(src, dtype)
    layers = qc.get("layers", {})
    for name, spec in layers.items():
        out_features, in_features = spec["shape"]
        if spec.get("module") == "SparseLinear":
            options = {k: spec[k] for k in ("pattern", "values", "symmetric")}
            group_size = spec["group_size"] or None
            layer = SparseLinear(in_features, out_features, spec["bias"], group_size=group_size, **options)
            set_module(model, name, layer)
            continue
        set_module(
            model,
            name,
            QuantLinear(
                in_features,
                out_features,
                bias=spec["bias"],
                format=spec["format"],
                group_size=(spec["group_size"] or None)
                if FORMATS[spec["format"]]["has_group_size"]
                else None,
                symmetric=spec["symmetric"] if FORMATS[spec["format"]]["has_symmetric_option"] else None,
                double_quant=spec["double_quant"],
                activation=spec["activation"],
                dtype=getattr(torch, spec["dtype"]),
            ),
        )
    load_state(model, load_file(str(src / "model.safetensors")), src)
    for name, spec in layers.items():  # the extra state (activation mode) is not a tensor
        model.get_submodule(name).set_extra_state(spec)
    model.eval()
    return model
