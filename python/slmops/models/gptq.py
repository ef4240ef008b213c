"""Hugging Face checkpoints in the GPTQ layout, which transformers (with gptqmodel), vLLM and
onnxruntime-genai's model builder read: the layout and its reader (``slmops.export`` writes it).

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

import os
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import empty_model, load_state, quant_method, set_module

QUANT_METHOD = "gptq"


def pack_rows(values: np.ndarray, bits: int) -> np.ndarray:
    """Packs unsigned values along axis 0 into int32: 32/bits of them per word, lowest first."""
    per = 32 // bits
    v = values.astype(np.uint32).reshape(values.shape[0] // per, per, *values.shape[1:])
    shifts = (np.arange(per, dtype=np.uint32) * bits).reshape(1, per, *([1] * (values.ndim - 1)))
    return np.bitwise_or.reduce(v << shifts, axis=1).view(np.int32)


def unpack_rows(words: np.ndarray, bits: int) -> np.ndarray:
    """The inverse of :func:`pack_rows`: uint8 values, 32/bits rows per row of ``words``."""
    per = 32 // bits
    w = words.view(np.uint32)
    shifts = (np.arange(per, dtype=np.uint32) * bits).reshape(1, per, *([1] * (w.ndim - 1)))
    v = (w[:, None] >> shifts) & np.uint32((1 << bits) - 1)
    return v.reshape(w.shape[0] * per, *w.shape[1:]).astype(np.uint8)


def is_gptq_checkpoint(folder: str | os.PathLike[str]) -> bool:
    """True if the folder's config names GPTQ as its quantization method."""
    return quant_method(folder) == QUANT_METHOD


def load_gptq(folder: str | os.PathLike[str], dtype: Any = None) -> Any:
    """A GPTQ-layout checkpoint as a model whose quantized linears are ``QuantLinear``
    (4 bits -> int4, 8 bits with zero point 128 -> int8), codes and scales as stored."""
    import torch
    from safetensors.numpy import load_file

    from ..nn import QuantLinear
    from ..ops import QuantizedTensor

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
        codes = unpack_rows(qweight, bits).T  # [N, K]
        n, k = codes.shape
        g = k if group == -1 else group
        if g_idx is not None and not np.array_equal(g_idx, np.arange(k) // g):
            raise ValueError(f"{name}: act-order (a permuted g_idx) has no slmops layout")
        v1_zeros = unpack_rows(qzeros.T.copy(), bits).astype(np.int32)  # [N, groups]
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
