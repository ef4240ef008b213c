"""Writing Hugging Face checkpoints in the GPTQ layout (``slmops.models.gptq`` holds the
layout and the reader): ``qweight``/``qzeros`` packed along K/N, GPTQ's "v1" zero points
(zero point minus one, masked; a zero point of 0 wraps, counted as ``wrapped_zero_points``),
scales in ``scale_dtype``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..models.gptq import QUANT_METHOD, pack_rows
from .errors import UnsupportedFormatError


def _unsigned_codes(m: dict) -> tuple[np.ndarray, np.ndarray]:
    """Codes [N, K] and zero points [N, k_blocks], unsigned, from MatMulNBits tensors."""
    n, k, bits, block = m["N"], m["K"], m["bits"], m["block_size"]
    kb = -(-k // block)
    B = m["B"].reshape(n, -1)
    if bits == 4:
        codes = np.stack([B & 0x0F, B >> 4], axis=-1).reshape(n, -1)
        if m["zero_points"] is None:
            zp = np.full((n, kb), 8, np.uint8)
        else:
            z = m["zero_points"].reshape(n, -1)
            zp = np.stack([z & 0x0F, z >> 4], axis=-1).reshape(n, -1)[:, :kb]
    else:
        codes, zp = B, np.full((n, kb), 128, np.uint8)
    return codes[:, :k], zp


def _per_row(q: Any) -> bool:
    return q.format == "int8" and q.group_size == 0


def _layer_tensors(name: str, module: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The GPTQ tensors of one QuantLinear and its (bits, group_size, symmetric)."""
    m = module.qweight.to_matmulnbits()
    n, k, bits, group = m["N"], m["K"], m["bits"], m["block_size"]
    per = 32 // bits
    if k % group or k % per or n % per:
        raise ValueError(
            f"{name}: the GPTQ layout needs K divisible by the group size ({group}) and K, N by "
            f"{per}; this layer is [N={n}, K={k}]"
        )
    codes, zp = _unsigned_codes(m)
    scales = m["scales"].reshape(n, -1)
    if _per_row(module.qweight):  # one group of K: GPTQ's group_size -1
        group, scales, zp = k, scales[:, :1], zp[:, :1]
    v1_zeros = (zp.astype(np.int32) - 1) & ((1 << bits) - 1)  # [N, groups]
    tensors = {
        "qweight": pack_rows(codes.T, bits),  # packed along K
        "qzeros": pack_rows(v1_zeros, bits).T.copy(),  # packed along N
        "scales": scales.T.copy(),
        "g_idx": (np.arange(k) // group).astype(np.int32),
    }
    info = {"bits": bits, "group_size": -1 if group == k else group, "symmetric": module.qweight.symmetric,
            "wrapped_zero_points": int((zp == 0).sum())}  # fmt: skip
    return tensors, info


def check_gptq_exportable(model: Any) -> None:
    """Raises, before any work, if the quantized layers cannot share one GPTQ config."""
    from ..nn import QuantLinear

    specs: dict[tuple[int, int], list[str]] = {}
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear):
            try:
                bits, block = m.qweight.matmulnbits_spec()
            except ValueError as e:
                raise UnsupportedFormatError(
                    f"{name}: {e}. The GPTQ layout holds int4, int8, q4_0 and q8_0"
                ) from None
            group = -1 if _per_row(m.qweight) else block
            specs.setdefault((bits, group), []).append(name)
    if len(specs) > 1:
        found = {f"{b} bits, group {g}": names[:2] for (b, g), names in specs.items()}
        raise ValueError(f"a GPTQ checkpoint has one bit width and group size; this model mixes {found}")
    layers = getattr(getattr(model, "model", None), "layers", None)
    floats = [
        f"model.layers.{i}.{n}"
        for i, layer in enumerate(layers or [])
        for n, m in layer.named_modules()
        if type(m).__name__ == "Linear" and not isinstance(m, QuantLinear)
    ]
    if specs and floats:
        raise ValueError(
            f"GPTQ loaders expect every linear of the decoder layers quantized; float: {floats[:3]}"
        )


def save_gptq(model: Any, tokenizer: Any, folder: Path, *, scale_dtype: str = "float16") -> dict[str, Any]:
    """Writes the GPTQ-layout folder (into an existing, empty ``folder``); returns the
    quantization config and the count of wrapped zero points."""
    import torch
    from safetensors.numpy import save_file

    from ..nn import QuantLinear

    if scale_dtype not in ("float16", "float32"):
        raise ValueError(f"scale_dtype must be 'float16' or 'float32', got {scale_dtype!r}")
    check_gptq_exportable(model)
    float_dtype = getattr(np, scale_dtype)
    tensors: dict[str, np.ndarray] = {}
    infos = []
    quantized = {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    if not quantized:
        raise ValueError("the model has no quantized layers; export it as a plain 'hf' folder")
    for name, m in quantized.items():
        t, info = _layer_tensors(name, m)
        t["scales"] = t["scales"].astype(float_dtype)
        tensors.update({f"{name}.{k}": v for k, v in t.items()})
        if m.bias is not None:
            tensors[f"{name}.bias"] = m.bias.detach().float().numpy().astype(float_dtype)
        infos.append(info)
    seen = set()
    for name, t in model.state_dict().items():
        owner = name.rsplit(".", 1)[0]
        if owner in quantized or not isinstance(t, torch.Tensor):
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:  # a tied lm_head is the embedding
            continue
        seen.add(key)
        tensors[name] = t.detach().float().cpu().numpy().astype(float_dtype)
    qc = {
        "quant_method": QUANT_METHOD,
        "bits": infos[0]["bits"],
        "group_size": infos[0]["group_size"],
        "desc_act": False,
        "sym": all(i["symmetric"] for i in infos),
        "static_groups": False,
        "true_sequential": True,
        "checkpoint_format": "gptq",
        "quantizer": ["slmops"],
    }
    model.config.save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = qc
    cfg["dtype"] = cfg["torch_dtype"] = scale_dtype
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    # safetensors writes the memory of an array as it lies: make every one contiguous.
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return {"quantization_config": qc, "wrapped_zero_points": sum(i["wrapped_zero_points"] for i in infos)}
