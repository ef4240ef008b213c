"""ONNX Runtime GenAI model folders, as Foundry Local loads them.

We write the decoder graph ourselves with the ``onnx`` package rather than feeding a
checkpoint to ``onnxruntime_genai.models.builder``: our quantized codes go into
``MatMulNBits`` unchanged (int4 with its group size and zero points, int8, q4_0, q8_0), so
the ONNX model computes with exactly the weights we measured; and one graph serves every
Llama-family layout (Llama, Mistral, Qwen2 with its q/k/v biases, Phi-3's fused
projections) and any static RoPE variant, because the rotary tables come from the model's
own rotary module instead of a per-architecture reimplementation.

The graph uses the ops ONNX Runtime's CPU provider fuses for decoders:
``SimplifiedLayerNormalization`` / ``SkipSimplifiedLayerNormalization`` (RMSNorm with the
residual add), ``GroupQueryAttention`` with rotary embedding inside (``do_rotary``) and a
KV cache shared between past and present (``past_present_share_buffer``), ``MatMulNBits``
for quantized linears and ``MatMul`` for float ones. Inputs ``input_ids``,
``attention_mask``, ``past_key_values.N.key/value``; outputs ``logits``,
``present.N.key/value``; float32 activations (ORT's CPU kernels for these ops are fp32).

``accuracy_level`` (MatMulNBits): 4 (default) quantizes each activation block to int8 and
runs integer dot products, the fast CPU path that Olive and the GenAI builder use for
deployment; 1 computes in float32, the same math as our torch model with
``activation="float"``, at lower speed. Both are measured in ``benchmarks/README.md``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UnsupportedFormatError

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "phi3")
ACCURACY_LEVELS = (1, 2, 3, 4)
# RoPE variants whose tables do not depend on the sequence length (dynamic and longrope do).
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
VOCAB_FORMATS = ("float", "int8", "int4")  # the lm_head and embedding tables at export
# Blocks of an lm_head / embedding quantized at export, per format. int8 in blocks of 128:
# ORT's 8-bit MatMulNBits decodes SmolLM2 1.12x faster than in blocks of 32, for +0.00-0.29%
# perplexity (docs/export.md); int4 in blocks of 32 (the builder's), as larger blocks cost
# perplexity at 4 bits.
VOCAB_QUANT_OPTIONS = {"int8": {"group_size": 128}, "int4": {"group_size": 32, "symmetric": False}}
DEFAULT_ACCURACY_LEVEL = 4
DEFAULT_FUSE_PROJECTIONS = True
DEFAULT_LM_HEAD = "int8"
DEFAULT_EMBEDDING = "int8"
IR_VERSION = 10  # onnxruntime-genai's bundled runtimes read IR <= 10
OPSET = 21


def _linears(model: Any, layer: Any) -> dict[str, list[tuple[str, Any]]]:
    """Per layer the projections as (name, module): 'qkv' (one fused module or q, k, v),
    'o', 'gate_up' (one fused or gate, up) and 'down'."""
    attn, mlp = layer.self_attn, layer.mlp
    fused_qkv = hasattr(attn, "qkv_proj")
    return {
        "qkv": [("qkv_proj", attn.qkv_proj)]
        if fused_qkv
        else [("q_proj", attn.q_proj), ("k_proj", attn.k_proj), ("v_proj", attn.v_proj)],
        "o": [("o_proj", attn.o_proj)],
        "gate_up": [("gate_up_proj", mlp.gate_up_proj)]
        if hasattr(mlp, "gate_up_proj")
        else [("gate_proj", mlp.gate_proj), ("up_proj", mlp.up_proj)],
        "down": [("down_proj", mlp.down_proj)],
    }


def check_onnx_genai_exportable(
    model: Any,
    accuracy_level: int = DEFAULT_ACCURACY_LEVEL,
    lm_head: str = DEFAULT_LM_HEAD,
    embedding: str = DEFAULT_EMBEDDING,
) -> None:
    """Raises, before any work, for what this graph cannot express."""
    from ..nn import QuantLinear

    cfg = model.config
    if cfg.model_type not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"onnx-genai export supports {SUPPORTED_ARCHITECTURES} decoders; this model is {cfg.model_type!r}"
        )
    if accuracy_level not in ACCURACY_LEVELS:
        raise ValueError(f"accuracy_level must be one of {ACCURACY_LEVELS}, got {accuracy_level!r}")
    for option, value in (("lm_head", lm_head), ("embedding", embedding)):
        if value not in VOCAB_FORMATS:
            raise ValueError(f"{option} must be one of {VOCAB_FORMATS}, got {value!r}")
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise ValueError(f"the graph's MLP is SiLU-gated; this model uses {cfg.hidden_act!r}")
    rope = model.model.rotary_emb
    if rope.rope_type not in STATIC_ROPE_TYPES:
        raise ValueError(
            f"RoPE type {rope.rope_type!r} changes with the sequence length; the graph takes fixed "
            f"tables ({STATIC_ROPE_TYPES})"
        )
    if float(getattr(cfg, "partial_rotary_factor", 1.0) or 1.0) != 1.0:
        raise ValueError("partial rotary embeddings are not supported by this exporter")
    if getattr(cfg, "use_sliding_window", False) and cfg.model_type == "qwen2":
        raise ValueError("Qwen2 with per-layer sliding windows (use_sliding_window) is not supported")
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear):
            try:
                m.qweight.matmulnbits_spec()
            except ValueError as e:
                raise UnsupportedFormatError(
                    f"{name}: {e}. Quantize to int4, int8, q4_0 or q8_0 for onnx-genai, or export as 'gguf'"
                ) from None


def _matmulnbits(module: Any) -> dict[str, Any] | None:
    """A QuantLinear's MatMulNBits tensors (zero points as [N, bytes]); None for a float one."""
    from ..nn import QuantLinear

    if not isinstance(module, QuantLinear):
        return None
    m = module.qweight.to_matmulnbits()
    if m["zero_points"] is not None:
        m["zero_points"] = m["zero_points"].reshape(m["N"], -1)
    return m


def _stack_matmulnbits(parts: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Several MatMulNBits weights over one input stacked along N, codes unchanged: one node
    reads the activations once and ORT launches one kernel instead of several. None when
    their K, bits or block size differ. Symmetric parts get ORT's default zero point written
    out when a sibling has zero points (2^(bits-1), packed), so the math is unchanged."""
    first = parts[0]
    if any(p["K"] != first["K"] or p["bits"] != first["bits"] or p["block_size"] != first["block_size"]
           for p in parts):  # fmt: skip
        return None
    zps = None
    if any(p["zero_points"] is not None for p in parts):
        default = 0x88 if first["bits"] == 4 else 0x80
        kb = -(-first["K"] // first["block_size"])
        width = (kb + 1) // 2 if first["bits"] == 4 else kb
        zps = np.concatenate([
            p["zero_points"] if p["zero_points"] is not None else np.full((p["N"], width), default, np.uint8)
            for p in parts
        ])  # fmt: skip
    return {
        **first,
        "B": np.concatenate([p["B"] for p in parts]),
        "scales": np.concatenate([p["scales"] for p in parts]),
        "zero_points": zps,
        "N": sum(p["N"] for p in parts),
    }


def _quantize_at_export(weight: Any, format: str) -> dict[str, Any]:
    """A float lm_head or embedding quantized for MatMulNBits / GatherBlockQuantized at
    export (round to nearest with VOCAB_QUANT_OPTIONS[format]; a last block past the
    table's width is padded): int4 asymmetric or int8 symmetric."""
    from ..ops.quant import quantize

    w = weight.detach().float().cpu().numpy()
    qt = quantize(w, format, **VOCAB_QUANT_OPTIONS[format])
    m = qt.to_matmulnbits()
    if m["zero_points"] is not None:
        m["zero_points"] = m["zero_points"].reshape(m["N"], -1)
    return m


class _Graph:
    """Nodes, initializers and unique names for one ONNX graph."""

    def __init__(self, accuracy_level: int) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.accuracy_level = accuracy_level

    def init(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, n_out: int = 1, domain: str = "", **attrs: Any):
        from onnx import helper

        outputs = [f"{name}/output_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain, **attrs))
        return outputs[0] if n_out == 1 else outputs

    def matmulnbits(self, x: str, m: dict[str, Any], name: str, param: str, bias: Any = None) -> str:
        """Initializers ``{param}.qweight/.scales/.zero_points/.bias`` and the MatMulNBits node;
        returns the node's output."""
        inputs = [x, self.init(f"{param}.qweight", m["B"]), self.init(f"{param}.scales", m["scales"])]
        if m["zero_points"] is not None or bias is not None:
            zp = m["zero_points"]
            inputs.append(self.init(f"{param}.zero_points", zp) if zp is not None else "")
        if bias is not None:
            inputs += ["", self.init(f"{param}.bias", bias)]  # g_idx is deprecated and left empty
        return self.node(
            "MatMulNBits",
            inputs,
            f"{name}/MatMulNBits",
            domain="com.microsoft",
            K=m["K"],
            N=m["N"],
            bits=m["bits"],
            block_size=m["block_size"],
            accuracy_level=self.accuracy_level,
        )

    def gather_block_quantized(self, m: dict[str, Any], ids: str, name: str, param: str) -> str:
        """Rows of a table stored as 4- or 8-bit MatMulNBits codes (``GatherBlockQuantized``),
        sliced back to K columns where blocks padded the rows."""
        k_blocks = m["B"].shape[1]
        codes = self.init(f"{param}.qweight", m["B"].reshape(m["N"], -1))
        inputs = [codes, ids, self.init(f"{param}.scales", m["scales"].reshape(m["N"], k_blocks))]
        zp = m["zero_points"]
        if zp is None and m["bits"] == 8:  # MatMulNBits' default 128 is not GatherBlockQuantized's
            zp = np.full((m["N"], k_blocks), 128, np.uint8)
        if zp is not None:
            inputs.append(self.init(f"{param}.zero_points", zp))
        y = self.node("GatherBlockQuantized", inputs, f"{name}/GatherBlockQuantized", domain="com.microsoft",
                      bits=m["bits"], block_size=m["block_size"], gather_axis=0, quantize_axis=1)  # fmt: skip
        if k_blocks * m["block_size"] == m["K"]:
            return y
        bounds = [self.init(f"{param}.slice_{k}", np.array([v], np.int64))
                  for k, v in (("start", 0), ("end", m["K"]), ("axis", -1))]  # fmt: skip
        return self.node("Slice", [y, *bounds], f"{name}/Slice")

    def matmul(self, x: str, w: np.ndarray, name: str, param: str, bias: Any = None) -> str:
        """A float linear: MatMul with the transposed weight, then the bias."""
        y = self.node("MatMul", [x, self.init(f"{param}.weight_t", w.T)], f"{name}/MatMul")
        if bias is None:
            return y
        return self.node("Add", [y, self.init(f"{param}.bias", bias)], f"{name}/BiasAdd")

    def linears(self, x: str, mods: list[tuple[str, Any]], prefix: str, fuse: bool) -> list[str]:
        """y = x @ W.T + b for each (name, module) over the same input: QuantLinears as
        MatMulNBits with their codes as they are, nn.Linears as MatMul. With ``fuse``, several
        modules of one kind become one node over the stacked weights, and the list holds its
        one output (q|k|v or gate|up along the last axis, as GQA and the callers take it)."""
        param = prefix[1:].replace("/", ".")
        biases = [None if m.bias is None else m.bias.detach().float().cpu().numpy() for _, m in mods]
        weights = [_matmulnbits(m) for _, m in mods]
        stacked: dict[str, Any] | None = None
        if fuse and len(mods) > 1 and all(w is not None for w in weights):
            stacked = _stack_matmulnbits(weights)  # type: ignore[arg-type]
        all_float = all(w is None for w in weights)
        if not fuse or len(mods) == 1 or (stacked is None and not all_float):
            outs = []
            for (n, module), w, b in zip(mods, weights, biases, strict=True):
                name, prm = f"{prefix}/{n}", f"{param}.{n}"
                if w is None:
                    outs.append(self.matmul(x, module.weight.detach().float().cpu().numpy(), name, prm, b))
                else:
                    outs.append(self.matmulnbits(x, w, name, prm, b))
            return outs
        fused = "_".join(n.removesuffix("_proj") for n, _ in mods) + "_proj"  # q_k_v_proj, gate_up_proj
        bias = None
        if any(b is not None for b in biases):
            bias = np.concatenate(
                [
                    np.zeros(m.out_features, np.float32) if b is None else b
                    for b, (_, m) in zip(biases, mods, strict=True)
                ]
            )
        name, prm = f"{prefix}/{fused}", f"{param}.{fused}"
        if stacked is None:
            w = np.concatenate([m.weight.detach().float().cpu().numpy() for _, m in mods])
            return [self.matmul(x, w, name, prm, bias)]
        return [self.matmulnbits(x, stacked, name, prm, bias)]


def _rope_tables(model: Any, context: int, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [context, head_dim/2] from the model's own rotary module (so linear,
    llama3 and yarn scaling come with it); HF repeats each half, GQA wants one."""
    import torch

    positions = torch.arange(context).unsqueeze(0)
    dummy = torch.zeros(1, 1, head_dim, dtype=torch.float32)
    with torch.no_grad():
        cos, sin = model.model.rotary_emb(dummy, positions)
    half = head_dim // 2
    cos, sin = cos[0].float().numpy(), sin[0].float().numpy()
    if not (np.array_equal(cos[:, :half], cos[:, half:]) and np.array_equal(sin[:, :half], sin[:, half:])):
        raise ValueError("the rotary tables are not in rotate-half layout; this exporter cannot map them")
    return np.ascontiguousarray(cos[:, :half]), np.ascontiguousarray(sin[:, :half])


def build_decoder(
    model: Any,
    accuracy_level: int = DEFAULT_ACCURACY_LEVEL,
    *,
    fuse_projections: bool = DEFAULT_FUSE_PROJECTIONS,
    lm_head: str = DEFAULT_LM_HEAD,
    embedding: str = DEFAULT_EMBEDDING,
) -> Any:
    """The decoder as an ``onnx.ModelProto`` (weights inside; the caller saves them as
    external data). Options as ``write_onnx_genai``."""
    from onnx import TensorProto, helper

    from ..nn import QuantLinear

    check_onnx_genai_exportable(model, accuracy_level, lm_head, embedding)
    cfg = model.config
    n_head = cfg.num_attention_heads
    n_kv = cfg.num_key_value_heads or n_head
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    context = cfg.max_position_embeddings
    eps = float(cfg.rms_norm_eps)
    g = _Graph(accuracy_level)
    f32 = TensorProto.FLOAT

    # attention_mask -> GQA's per-batch (total length - 1) and the total length.
    mask_sum = g.node("ReduceSum", ["attention_mask", g.init("one_axis", np.array([1], np.int64))],
                      "/model/attn_mask/ReduceSum", keepdims=0)  # fmt: skip
    seqlens = g.node("Sub", [mask_sum, g.init("one_i64", np.array(1, np.int64))], "/model/attn_mask/Sub")
    seqlens_k = g.node("Cast", [seqlens], "/model/attn_mask/seqlens_k", to=TensorProto.INT32)
    shape = g.node("Shape", ["attention_mask"], "/model/attn_mask/Shape")
    index = g.init("one_scalar", np.array(1, np.int64))
    total = g.node("Gather", [shape, index], "/model/attn_mask/Gather", axis=0)
    total_len = g.node("Cast", [total], "/model/attn_mask/total_seq_len", to=TensorProto.INT32)
    cos, sin = _rope_tables(model, context, head_dim)
    cos_cache, sin_cache = g.init("cos_cache", cos), g.init("sin_cache", sin)

    head = model.get_output_embeddings()
    table = model.get_input_embeddings().weight
    tied = not isinstance(head, QuantLinear) and head.weight is table
    head_codes = None  # the lm_head's MatMulNBits tensors, when it is quantized
    if isinstance(head, QuantLinear):
        head_codes = _matmulnbits(head)
    elif lm_head != "float":
        head_codes = _quantize_at_export(head.weight, lm_head)
    embed_name = None
    if embedding == "float":
        embed_name = g.init("model.embed_tokens.weight", table.detach().float().cpu().numpy())
        residual = g.node("Gather", [embed_name, "input_ids"], "/model/embed_tokens/Gather", axis=0)
    else:  # a tied head's codes are written twice: ORT does not prepack a shared initializer
        codes = head_codes if tied and lm_head == embedding else _quantize_at_export(table, embedding)
        residual = g.gather_block_quantized(codes, "input_ids", "/model/embed_tokens", "model.embed_tokens")
    pending: str | None = None  # the last block's output, not yet added to the residual

    def norm(weight: Any, name: str) -> str:
        nonlocal residual, pending
        w = g.init(f"{name[1:].replace('/', '.')}.weight", weight.detach().float().cpu().numpy())
        if pending is None:
            return g.node("SimplifiedLayerNormalization", [residual, w], f"{name}/SimplifiedLayerNorm",
                          epsilon=eps, axis=-1, stash_type=1)  # fmt: skip
        outs = g.node("SkipSimplifiedLayerNormalization", [pending, residual, w],
                      f"{name}/SkipLayerNorm", n_out=4, domain="com.microsoft", epsilon=eps)  # fmt: skip
        g.nodes[-1].output[1] = g.nodes[-1].output[2] = ""  # mean and 1/std: not computed when unused
        residual, pending = outs[3], None
        return outs[0]

    in_names, out_names = [], []
    for i, layer in enumerate(model.model.layers):
        p = f"/model/layers.{i}"
        mods = _linears(model, layer)
        x = norm(layer.input_layernorm.weight, f"{p}/input_layernorm")
        qkv = g.linears(x, mods["qkv"], f"{p}/attn", fuse_projections)
        past_k, past_v = f"past_key_values.{i}.key", f"past_key_values.{i}.value"
        in_names += [past_k, past_v]
        present_k, present_v = f"present.{i}.key", f"present.{i}.value"
        out_names += [present_k, present_v]
        q_k_v = qkv if len(qkv) == 3 else [qkv[0], "", ""]  # a fused projection goes in packed
        window = getattr(cfg, "sliding_window", None) if cfg.model_type == "mistral" else None
        attn = g.node(
            "GroupQueryAttention",
            [*q_k_v, past_k, past_v, seqlens_k, total_len, cos_cache, sin_cache],
            f"{p}/attn/GroupQueryAttention",
            n_out=3,
            domain="com.microsoft",
            num_heads=n_head,
            kv_num_heads=n_kv,
            scale=float(layer.self_attn.scaling),
            do_rotary=1,
            rotary_interleaved=0,
            local_window_size=int(window) if window and window < context else -1,
        )
        # GQA's present outputs are the graph's outputs: rename them to the declared names.
        g.nodes[-1].output[1], g.nodes[-1].output[2] = present_k, present_v
        (pending,) = g.linears(attn[0], mods["o"], f"{p}/attn", False)
        x = norm(layer.post_attention_layernorm.weight, f"{p}/post_attention_layernorm")
        gate_up = g.linears(x, mods["gate_up"], f"{p}/mlp", fuse_projections)
        if len(gate_up) == 1:  # Phi-3: [gate; up] in one projection
            gate_up = g.node("Split", [gate_up[0]], f"{p}/mlp/gate_up_split", n_out=2, axis=-1, num_outputs=2)
        gate, up = gate_up
        act = g.node("Mul", [gate, g.node("Sigmoid", [gate], f"{p}/mlp/act/Sigmoid")], f"{p}/mlp/act/Mul")
        h = g.node("Mul", [act, up], f"{p}/mlp/Mul")
        (pending,) = g.linears(h, mods["down"], f"{p}/mlp", False)
    x = norm(model.model.norm.weight, "/model/norm")

    head_bias = None if head.bias is None else head.bias.detach().float().cpu().numpy()
    if head_codes is not None:
        g.matmulnbits(x, head_codes, "/lm_head", "lm_head", head_bias)
    elif tied and embed_name is not None:  # one copy on disk; ORT folds the transpose at load
        w_t = g.node("Transpose", [embed_name], "/lm_head/Transpose", perm=[1, 0])
        g.node("MatMul", [x, w_t], "/lm_head/MatMul")
    else:
        g.matmul(x, head.weight.detach().float().cpu().numpy(), "/lm_head", "lm_head", head_bias)
    g.nodes[-1].output[0] = "logits"  # the last node (MatMul, MatMulNBits or bias Add) is the output

    kv_shape = lambda length: ["batch_size", n_kv, length, head_dim]  # noqa: E731
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info(
            "attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]
        ),
        *(helper.make_tensor_value_info(n, f32, kv_shape("past_sequence_length")) for n in in_names),
    ]
    outputs = [
        helper.make_tensor_value_info("logits", f32, ["batch_size", "sequence_length", cfg.vocab_size]),
        *(helper.make_tensor_value_info(n, f32, kv_shape("total_sequence_length")) for n in out_names),
    ]
    graph = helper.make_graph(g.nodes, "slmops_decoder", inputs, outputs, g.initializers)
    return helper.make_model(
        graph,
        ir_version=IR_VERSION,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)],
        producer_name="slmops",
    )


def genai_config(model: Any, tokenizer: Any) -> dict[str, Any]:
    """``genai_config.json``: the key set of onnxruntime-genai's builder for a GQA model."""
    cfg = model.config
    gen = getattr(model, "generation_config", None)
    n_head = cfg.num_attention_heads
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    eos = eos if eos is not None else cfg.eos_token_id
    if eos is None and tokenizer.eos_token is not None:
        eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else (eos[0] if isinstance(eos, list) else eos)
    context = cfg.max_position_embeddings
    return {
        "model": {
            "bos_token_id": cfg.bos_token_id if cfg.bos_token_id is not None else 1,
            "context_length": context,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": "model.onnx",
                "head_size": getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head,
                "hidden_size": cfg.hidden_size,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
                "num_attention_heads": n_head,
                "num_hidden_layers": cfg.num_hidden_layers,
                "num_key_value_heads": cfg.num_key_value_heads or n_head,
            },
            "eos_token_id": eos,
            "pad_token_id": pad,
            "type": cfg.model_type,  # all of SUPPORTED_ARCHITECTURES are on GenAI's list
            "vocab_size": cfg.vocab_size,
        },
        "search": {
            "diversity_penalty": 0.0,
            "do_sample": False,
            "early_stopping": True,
            "length_penalty": 1.0,
            "max_length": context,
            "min_length": 0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": True,  # GQA writes the cache in place
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 50,
            "top_p": 1.0,
        },
    }


def inference_model(tokenizer: Any, name: str) -> dict[str, Any]:
    """Foundry Local's ``inference_model.json``: the prompt template rendered from the chat
    template with ``{Content}`` where the message goes."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("Foundry Local needs a chat template; this tokenizer has none")

    def render(role: str, generation_prompt: bool = False) -> str:
        return tokenizer.apply_chat_template(
            [{"role": role, "content": "{Content}"}], tokenize=False, add_generation_prompt=generation_prompt
        )

    return {
        "Name": name,
        "PromptTemplate": {
            "system": render("system"),
            "user": render("user"),
            "assistant": "{Content}",
            "prompt": render("user", generation_prompt=True),
        },
    }


def write_tokenizer(tokenizer: Any, folder: Path) -> None:
    """The tokenizer files, with the chat template inside tokenizer_config.json where
    GenAI's tokenizer and Foundry Local read it, and a tokenizer class they know."""
    tokenizer.save_pretrained(folder)
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    if getattr(tokenizer, "chat_template", None):
        cfg["chat_template"] = tokenizer.chat_template
    if cfg.get("tokenizer_class") in (None, "TokenizersBackend"):  # transformers 5's generic name
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")


def write_onnx_genai(
    model: Any,
    tokenizer: Any,
    folder: Path,
    *,
    accuracy_level: int = DEFAULT_ACCURACY_LEVEL,
    fuse_projections: bool = DEFAULT_FUSE_PROJECTIONS,
    lm_head: str = DEFAULT_LM_HEAD,
    embedding: str = DEFAULT_EMBEDDING,
    name: str = "model",
) -> dict[str, Any]:
    """Writes model.onnx (+ model.onnx.data), genai_config.json, the tokenizer and
    inference_model.json into ``folder``; returns what the manifest records.

    ``fuse_projections``: q/k/v and gate/up as one MatMulNBits each (the same codes, fewer
    nodes). ``lm_head`` and ``embedding``: the vocabulary tables, which slmops' quantizers
    leave float, quantized at export by round-to-nearest ("int8" symmetric in blocks of
    128, "int4" asymmetric in blocks of 32) or kept ("float"); an lm_head the model already holds
    quantized keeps its codes. The lm_head is read in full every decode step, so its
    format sets much of decode speed; the embedding (``GatherBlockQuantized``) reads one
    row per token and sets mostly the folder's size. Measured choices in docs/export.md."""
    import onnx

    proto = build_decoder(
        model,
        accuracy_level,
        fuse_projections=fuse_projections,
        lm_head=lm_head,
        embedding=embedding,
    )
    onnx.save_model(
        proto,
        str(folder / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
        size_threshold=1024,
    )
    (folder / "genai_config.json").write_text(json.dumps(genai_config(model, tokenizer), indent=4) + "\n")
    write_tokenizer(tokenizer, folder)
    (folder / "inference_model.json").write_text(
        json.dumps(inference_model(tokenizer, name), indent=2) + "\n"
    )
    ops = sorted({n.op_type for n in proto.graph.node})
    return {
        "accuracy_level": accuracy_level,
        "fuse_projections": fuse_projections,
        "lm_head": lm_head,
        "embedding": embedding,
        "ops": ops,
    }
