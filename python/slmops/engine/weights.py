"""A transformers Llama-family model handed to the native engine: its config and every
weight as the arrays and packs ``_C.EngineModel`` borrows (no float copy of a weight is
made: dense tensors are shared, quantized and sparse ones keep their own buffers)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .. import _C
from ..nn import QuantLinear, SparseLinear
from ..ops import QuantizedTensor, quantize

# model_type -> what the engine's graph covers of it.
ARCHITECTURES = ("llama", "mistral", "qwen2", "phi3")
# Rotary variants whose frequencies do not depend on the sequence length: transformers folds
# their scaling into ``inv_freq`` (and ``attention_scaling``), which the engine takes as is.
ROPE_TYPES = ("default", "linear", "llama3", "yarn")
# What head_format="auto" (the engine's default) gives a model whose linears are quantized or
# sparse and whose head is float: an fp32 head would be most of the bytes a small model's
# decode step reads (SmolLM2: 113 MB against 61 MB of int4 g128 linears). Its activations are
# int8 whatever the layers use: with float ones the q8_0 head is no faster than fp32's at
# batch 1 (49152 x 576: 6.6 ms against 0.67 with int8).
AUTO_HEAD_FORMAT = "q8_0"


def _f32(t: torch.Tensor) -> torch.Tensor:
    """The tensor itself when it is contiguous CPU float32 (shared with the model), else a
    converted copy."""
    t = t.detach()
    if t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous():
        t = t.to("cpu", torch.float32).contiguous()
    return t


def _row_slice(qt: QuantizedTensor, a: int, b: int) -> QuantizedTensor:
    """Rows [a, b) of a quantized weight, sharing its buffers (each row's codes, scales and
    zero points are contiguous); a tensor-wide scale (ternary) stays whole."""
    scales = qt._scales()  # nf4 double quantization: the plain per-block scales
    tensors = {"data": qt.tensors["data"][a:b]}
    if scales is not None:
        tensors["scales"] = scales if qt.layout["tensor_scale"] else scales[a:b]
    if "zero_points" in qt.tensors:
        tensors["zero_points"] = qt.tensors["zero_points"][a:b]
    return QuantizedTensor(
        qt.format, (b - a, qt.shape[1]), tensors,
        group_size=qt._option_group_size, symmetric=qt.symmetric, dtype=qt.dtype,
    )  # fmt: skip


def _linear(module: nn.Module, name: str, rows: tuple[int, int] | None = None) -> dict[str, Any]:
    """The engine's description of ``module``, or of its output rows [a, b) (a fused
    projection split into its parts)."""
    a, b = rows or (0, int(module.out_features))
    out: dict[str, Any]
    if isinstance(module, QuantLinear):
        qt = module.qweight if rows is None else _row_slice(module.qweight, a, b)
        out = {"packed": qt.packed(), "activation": module.activation}
    elif isinstance(module, SparseLinear):
        if rows is not None:
            raise ValueError(f"{name}: a fused projection stored sparse is not supported by the engine")
        sw = module.sparse_weight
        out = (
            {"csr": sw.packed()}
            if sw.pattern == "csr"
            else {"nm": sw.packed(), "activation": module.activation}
        )
    elif isinstance(module, nn.Linear):
        out = {"dense": _f32(module.weight[a:b])}
    else:
        raise ValueError(
            f"{name} is a {type(module).__name__}; the engine runs nn.Linear, QuantLinear and SparseLinear"
        )
    out["N"], out["K"] = b - a, int(module.in_features)
    out["bias"] = _f32(module.bias[a:b]) if getattr(module, "bias", None) is not None else None
    return out


def _attention_and_mlp(layer: nn.Module, p: str, q_width: int, kv_width: int) -> dict[str, Any]:
    """q/k/v/o and gate/up/down of one decoder layer; Phi-3's fused qkv_proj and
    gate_up_proj are split by rows (q, then k, then v; gate, then up)."""
    a, m = layer.self_attn, layer.mlp
    if hasattr(a, "qkv_proj"):
        qkv = a.qkv_proj
        parts = {
            "q": _linear(qkv, p + "self_attn.qkv_proj", (0, q_width)),
            "k": _linear(qkv, p + "self_attn.qkv_proj", (q_width, q_width + kv_width)),
            "v": _linear(qkv, p + "self_attn.qkv_proj", (q_width + kv_width, q_width + 2 * kv_width)),
        }
    else:
        parts = {
            "q": _linear(a.q_proj, p + "self_attn.q_proj"),
            "k": _linear(a.k_proj, p + "self_attn.k_proj"),
            "v": _linear(a.v_proj, p + "self_attn.v_proj"),
        }
    parts["o"] = _linear(a.o_proj, p + "self_attn.o_proj")
    if hasattr(m, "gate_up_proj"):
        half = int(m.gate_up_proj.out_features) // 2
        parts["gate"] = _linear(m.gate_up_proj, p + "mlp.gate_up_proj", (0, half))
        parts["up"] = _linear(m.gate_up_proj, p + "mlp.gate_up_proj", (half, 2 * half))
    else:
        parts["gate"] = _linear(m.gate_proj, p + "mlp.gate_proj")
        parts["up"] = _linear(m.up_proj, p + "mlp.up_proj")
    parts["down"] = _linear(m.down_proj, p + "mlp.down_proj")
    return parts


def _quantized_table(qt: QuantizedTensor) -> dict[str, Any]:
    t = qt.tensors
    return {
        "format": qt.format,
        "group_size": qt._option_group_size,
        "symmetric": qt.symmetric,
        "data": t["data"],
        "scales": qt._scales(),
        "zero_points": t.get("zero_points"),
    }


def _sliding_window(cfg: Any) -> int:
    """The attention window every layer uses, 0 for none; mixed layer kinds are refused."""
    window = int(getattr(cfg, "sliding_window", None) or 0)
    if cfg.model_type == "qwen2" and not getattr(cfg, "use_sliding_window", False):
        window = 0
    kinds = set(getattr(cfg, "layer_types", None) or [])
    if kinds - {"full_attention", "sliding_attention"}:
        raise ValueError(
            f"layer types {sorted(kinds)}: the engine runs full and sliding-window attention only"
        )
    if kinds == {"full_attention"}:
        return 0
    if len(kinds) > 1:
        raise ValueError(
            "the engine runs one attention kind for every layer; this model mixes full and sliding"
        )
    return window


def head_quantization(model: Any, head_format: str | None) -> tuple[str, str] | None:
    """(format, activation mode) the engine quantizes the head to, or None for the model's
    own head. 'auto': AUTO_HEAD_FORMAT with int8 activations when the model has a quantized
    or sparse linear and a float head, else None. A format by name multiplies activations as
    the model's quantized and sparse linears do, int8 where they do not say (the fast path:
    products of bytes, as llama.cpp's)."""
    if head_format is None:
        return None
    acts = {m.activation for m in model.modules() if isinstance(m, (QuantLinear, SparseLinear))}
    if head_format == "auto":
        float_head = isinstance(model.get_output_embeddings(), nn.Linear)
        return (AUTO_HEAD_FORMAT, "int8") if acts and float_head else None
    return head_format, acts.pop() if len(acts) == 1 else "int8"


def engine_model_args(model: Any, *, head_format: str | None, max_context: int) -> dict[str, Any]:
    """The keyword arguments of ``_C.EngineModel`` for ``model`` (without the cache's)."""
    cfg = model.config
    if cfg.model_type not in ARCHITECTURES:
        raise ValueError(
            f"the engine runs {', '.join(ARCHITECTURES)} models; this one is {cfg.model_type!r} "
            "(run it with the transformers path: slmops.evaluate_model, or export it)"
        )
    if float(getattr(cfg, "partial_rotary_factor", None) or 1.0) != 1.0:
        raise ValueError("the engine rotates whole heads; this model's partial_rotary_factor is not 1")
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise ValueError(f"the engine's MLP is SwiGLU (silu); this model uses {cfg.hidden_act!r}")
    rotary = model.model.rotary_emb
    rope_type = getattr(rotary, "rope_type", "default")
    if rope_type not in ROPE_TYPES:
        raise ValueError(
            f"rope scaling {rope_type!r} is not supported by the engine (its frequencies change with the "
            f"sequence length); supported: {', '.join(ROPE_TYPES)}"
        )
    n_heads = int(cfg.num_attention_heads)
    n_kv = int(getattr(cfg, "num_key_value_heads", None) or n_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads)
    config = {
        "n_layers": int(cfg.num_hidden_layers),
        "hidden": int(cfg.hidden_size),
        "n_heads": n_heads,
        "n_kv_heads": n_kv,
        "head_dim": head_dim,
        "intermediate": int(cfg.intermediate_size),
        "vocab": int(cfg.vocab_size),
        "rms_eps": float(cfg.rms_norm_eps),
        "inv_freq": rotary.inv_freq.detach().float().cpu().tolist(),
        "rope_attention_scale": float(getattr(rotary, "attention_scaling", 1.0)),
        "sliding_window": _sliding_window(cfg),
        "max_context": int(max_context),
    }
    layers = []
    for i, layer in enumerate(model.model.layers):
        layers.append(
            {
                "attn_norm": _f32(layer.input_layernorm.weight),
                "mlp_norm": _f32(layer.post_attention_layernorm.weight),
                **_attention_and_mlp(layer, f"model.layers.{i}.", n_heads * head_dim, n_kv * head_dim),
            }
        )
    embed_weight = model.get_input_embeddings().weight
    head_module = model.get_output_embeddings()
    tied = getattr(head_module, "weight", None) is embed_weight
    embed: dict[str, Any] = {"dense": _f32(embed_weight)}
    quantized_head = head_quantization(model, head_format)
    if quantized_head is None:
        head = _linear(head_module, "lm_head")
    else:
        head_format, act = quantized_head
        if isinstance(head_module, (QuantLinear, SparseLinear)):
            raise ValueError(
                f"head_format={head_format!r}: the model's lm_head is already {type(head_module).__name__}"
            )
        qt = quantize(_f32(head_module.weight).numpy(), head_format)
        bias = getattr(head_module, "bias", None)
        head = {"packed": qt.packed(), "activation": act, "N": qt.shape[0], "K": qt.shape[1]}
        head["bias"] = _f32(bias) if bias is not None else None
        if tied:  # one quantized table serves both, as llama.cpp stores a tied token_embd
            embed = _quantized_table(qt)
    return {
        "config": config,
        "embed": embed,
        "layers": layers,
        "final_norm": _f32(model.model.norm.weight),
        "head": head,
    }


def cache_block_bytes(config: dict[str, Any], block_tokens: int, kv_dtype: str) -> int:
    shape = (config["n_layers"], config["n_kv_heads"], config["head_dim"])
    return int(_C.engine_cache_block_bytes(*shape, block_tokens, kv_dtype))


def token_array(tokens: Any, vocab: int) -> np.ndarray:
    """Token ids as the engine takes them (int32), each checked to lie in [0, vocab)."""
    ids = np.asarray(tokens)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError(f"tokens must be a non-empty 1-D sequence of ids, got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"token ids must be integers, got {ids.dtype}")
    bad = (ids < 0) | (ids >= vocab)
    if bad.any():
        raise ValueError(f"token id {int(ids[bad][0])} is outside the vocabulary [0, {vocab})")
    return np.ascontiguousarray(ids, dtype=np.int32)
