"""Writing slmops checkpoints (``slmops.models.checkpoint`` holds the format and the reader).
Writes go to a temporary sibling folder that is renamed into place: an interrupted save
never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .._io import atomic_dir
from ..models.checkpoint import QUANT_METHOD


def _slmops_layers(model: Any) -> dict[str, dict]:
    from ..nn import QuantLinear, SparseLinear

    layers = {}
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear):
            layers[name] = {**m.get_extra_state(), "bias": m.bias is not None}
            layers[name]["double_quant"] = m.qweight.double_quant
        elif isinstance(m, SparseLinear):
            layers[name] = {"module": "SparseLinear", **m.get_extra_state(), "bias": m.bias is not None}
    return layers


def _unique_tensors(model: Any) -> dict[str, Any]:
    """The state's tensors, each storage once: a tied lm_head is the embedding, and the
    extra state of slmops modules (format options) goes to config.json instead."""
    import torch

    out, seen = {}, set()
    for name, t in model.state_dict().items():
        if not isinstance(t, torch.Tensor):
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.shape, t.dtype)
        if key in seen:
            continue
        seen.add(key)
        out[name] = t.detach().contiguous()
    return out


def save_checkpoint(
    model: Any, tokenizer: Any, folder: str | os.PathLike[str], overwrite: bool = False
) -> Path:
    """Writes ``model`` (any transformers model, slmops modules included) and ``tokenizer``;
    an existing ``folder`` is replaced only if slmops wrote it (or with ``overwrite``)."""
    from safetensors.torch import save_file

    dst = Path(folder)
    with atomic_dir(dst, overwrite=overwrite) as tmp:
        layers = _slmops_layers(model)
        model.config.save_pretrained(tmp)
        cfg = json.loads((tmp / "config.json").read_text())
        if layers:
            cfg["quantization_config"] = {"quant_method": QUANT_METHOD, "layers": layers}
        else:
            cfg.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        save_file(_unique_tensors(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
    return dst
