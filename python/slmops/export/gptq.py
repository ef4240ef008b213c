"""Hugging Face checkpoints in the GPTQ layout, which transformers (with gptqmodel), vLLM and
onnxruntime-genai's model builder read.

Per quantized linear ``<name>``: ``qweight`` int32 [K / (32/bits), N] (codes along K, the
lowest bits first), ``qzeros`` int32 [groups, N / (32/bits)] (zero point minus one, GPTQ's
"v1" convention, each field masked to ``bits``), ``scales`` [groups, N] and ``g_idx`` int32
[K] (``k // group_size``: no act-order). ``config.json`` gets ``quantization_config`` with
``quant_method: gptq``. Codes and zero points are ours unchanged; scales are written in
``scale_dtype`` (float16, what GPU GPTQ kernels take, rounds them; float32 keeps them
exact).

A zero point of 0 is stored as the field value 2^bits - 1 (v1 wraps): readers that mask
after adding one (onnxruntime-genai's builder, ours) read it back; some older CUDA kernels
add one without masking. The manifest counts such groups (``wrapped_zero_points``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

QUANT_METHOD = "gptq"


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


def _pack_rows(values: np.ndarray, bits: int) -> np.ndarray:
    """Packs unsigned values along axis 0 into int32: 32/bits of them per word, lowest first."""
    per = 32 // bits
    v = values.astype(np.uint32).reshape(values.shape[0] // per, per, *values.shape[1:])
    shifts = (np.arange(per, dtype=np.uint32) * bits).reshape(1, per, *([1] * (values.ndim - 1)))
    return np.bitwise_or.reduce(v << shifts, axis=1).view(np.int32)


def _unpack_rows(words: np.ndarray, bits: int) -> np.ndarray:
    per = 32 // bits
    w = words.view(np.uint32)
    shifts = (np.arange(per, dtype=np.uint32) * bits).reshape(1, per, *([1] * (w.ndim - 1)))
    v = (w[:, None] >> shifts) & np.uint32((1 << bits) - 1)
    return v.reshape(w.shape[0] * per, *w.shape[1:]).astype(np.uint8)


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
        "qweight": _pack_rows(codes.T, bits),  # packed along K
        "qzeros": _pack_rows(v1_zeros, bits).T.copy(),  # packed along N
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
                raise ValueError(f"{name}: {e}. The GPTQ layout holds int4, int8, q4_0 and q8_0") from None
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


def is_gptq_checkpoint(folder: str | os.PathLike[str]) -> bool:
    """True if the folder's config names GPTQ as its quantization method."""
    from .checkpoint import quant_method

    return quant_method(folder) == QUANT_METHOD


def load_gptq(folder: str | os.PathLike[str], dtype: Any = None) -> Any:
    """A GPTQ-layout checkpoint as a model whose quantized linears are ``QuantLinear``
    (4 bits -> int4, 8 bits with zero point 128 -> int8), codes and scales as stored."""
    import torch
    from safetensors.numpy import load_file

    from ..nn import QuantLinear
    from ..ops import QuantizedTensor
    from .checkpoint import empty_model, load_state, set_module

    src = Path(folder)
    model, qc = empty_model(src, dtype)
    bits, group = int(qc.get("bits", 4)), int(qc.get("group_size", 128))
    if bits not in (4, 8):
        raise ValueError(f"{src}: {bits}-bit GPTQ has no slmops format (4 and 8 bits do)")
    state: dict[str, np.ndarray] = {}
    for f in sorted(src.glob("*.safetensors")):
        state.update(load_file(str(f)))
    prefixes = [k[: -len(".qweight")] for k in state if k.endswith(".qweight")]
    for name in prefixes:
        qweight, qzeros = state.pop(f"{name}.qweight"), state.pop(f"{name}.qzeros")
        scales, g_idx = state.pop(f"{name}.scales"), state.pop(f"{name}.g_idx", None)
        codes = _unpack_rows(qweight, bits).T  # [N, K]
        n, k = codes.shape
        g = k if group == -1 else group
        if g_idx is not None and not np.array_equal(g_idx, np.arange(k) // g):
            raise ValueError(f"{name}: act-order (a permuted g_idx) has no slmops layout")
        v1_zeros = _unpack_rows(qzeros.T.copy(), bits).astype(np.int32)  # [N, groups]
        zp = ((v1_zeros + 1) & ((1 << bits) - 1)).astype(np.uint8)
        s = scales.astype(np.float32).T.copy()
        if bits == 4:
            B = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)
            sym = bool((zp == 8).all())
            zpk = None if sym else (zp[:, 0::2] | (np.pad(zp, ((0, 0), (0, zp.shape[1] % 2)))[:, 1::2] << 4))
            q = QuantizedTensor.from_matmulnbits(B, s, zpk, K=k, N=n, block_size=g, bits=4)
        else:
            if not (zp == 128).all():
                raise ValueError(f"{name}: 8-bit GPTQ with zero points other than 128 has no slmops format")
            if group == -1:  # one scale per row: our per-row int8
                data = (codes ^ 0x80).view(np.int8).copy()
                q = QuantizedTensor("int8", (n, k), {"data": data, "scales": s.copy()})
            else:
                q = QuantizedTensor.from_matmulnbits(codes, s, None, K=k, N=n, block_size=g, bits=8)
        bias = state.pop(f"{name}.bias", None)
        set_module(
            model, name, QuantLinear.from_quantized(q, None if bias is None else torch.from_numpy(bias))
        )
    float_dtype = dtype or torch.float32
    load_state(
        model, {k: torch.from_numpy(v).to(float_dtype) for k, v in state.items()}, src, tuple(prefixes)
    )
    model.eval()
    return model
