"""GGUF for llama.cpp and Ollama, written with the ``gguf`` package (llama.cpp's own writer).

Quantized linears whose format is a GGUF block type (q4_0, q8_0, q4_k, q6_k, tq2_0) are
written as their bytes, unchanged: our kernels produce ggml's block layout. Float tensors
are quantized with our kernels to the type asked for, or written as f16/f32. Norm weights
are f32. The Q and K projections are permuted for llama.cpp's rotary convention (adjacent
pairs) from Hugging Face's (halves); a permutation of whole rows, so it is exact on
quantized rows too. The tokenizer goes in as a GPT-2 style byte-level BPE (tokens, types,
merges, special ids, pre-tokenizer name) with its chat template; an Ollama ``Modelfile``
sits beside the file.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UnsupportedFormatError

# Our format name -> GGML type name. f32/f16 are plain arrays.
GGUF_TYPES = ("f32", "f16", "q8_0", "q4_0", "q4_k", "q6_k", "tq2_0")
_GGML_NAMES = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0", "q4_0": "Q4_0", "q4_k": "Q4_K", "q6_k": "Q6_K",
               "tq2_0": "TQ2_0"}  # fmt: skip
# llama.cpp's general.file_type (LlamaFileType) by the type of most linear weights.
_FILE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "q4_k": 15, "q6_k": 18, "tq2_0": 37}
SUPPORTED_ARCHITECTURES = ("llama", "mistral")  # both map to llama.cpp's "llama" graph

_LAYER_TENSORS = {  # HF name inside model.layers.N -> GGUF name inside blk.N
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def check_gguf_exportable(model: Any, tensor_types: dict[str, str]) -> None:
    """Raises before any work for an architecture or a format GGUF cannot hold."""
    from ..nn import QuantLinear

    cfg = model.config
    if cfg.model_type not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"GGUF export supports {SUPPORTED_ARCHITECTURES} (llama.cpp's llama graph); "
            f"this model is {cfg.model_type!r}"
        )
    for pattern, t in tensor_types.items():
        if t not in GGUF_TYPES:
            raise ValueError(f"tensor_types[{pattern!r}] = {t!r}; GGUF types are {GGUF_TYPES}")
    rope_type = _rope_parameters(cfg).get("rope_type", "default")
    if rope_type != "default":
        raise ValueError(
            f"GGUF export writes plain RoPE (a base frequency); this model's RoPE is {rope_type!r}"
        )
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        raise ValueError("llama.cpp's llama graph has no attention or MLP biases; this model has them")
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear) and m.qweight.format not in GGUF_TYPES:
            raise UnsupportedFormatError(
                f"{name} is quantized as {m.qweight.format!r}, which GGUF cannot hold exactly; "
                f"GGUF block types are {[t for t in GGUF_TYPES if t not in ('f32', 'f16')]}. Quantize "
                "to one of them (slmops quantize --format q4_k) or export the float model"
            )


def _rope_parameters(cfg: Any) -> dict[str, Any]:
    """transformers 5 keeps rope_theta and the scaling in ``rope_parameters``; 4 at the top."""
    return dict(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})


def _rope_theta(cfg: Any) -> float:
    return float(_rope_parameters(cfg).get("rope_theta") or getattr(cfg, "rope_theta", None) or 10000.0)


def _permute_rows(rows: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half order -> llama.cpp's interleaved pairs, on the rows of a [out, ...] array."""
    return (
        rows.reshape(n_head, 2, rows.shape[0] // n_head // 2, *rows.shape[1:])
        .swapaxes(1, 2)
        .reshape(rows.shape)
    )


def _pick_type(gguf_name: str, tensor_types: dict[str, str], default: str) -> str:
    for pattern, t in tensor_types.items():
        if fnmatch.fnmatchcase(gguf_name, pattern):
            return t
    return default


def _tensor_bytes(weight: Any, qtype: str) -> tuple[np.ndarray, str]:
    """A float weight as the array gguf's writer takes for ``qtype``; a q-type falls back to
    f16 only when the shape cannot hold it (reported in the manifest)."""
    from ..ops import quantize

    w = weight.detach().float().cpu().numpy()
    if qtype == "f32":
        return w.astype(np.float32), "f32"
    if qtype == "f16":
        return w.astype(np.float16), "f16"
    try:
        return np.asarray(quantize(w, qtype).tensors["data"]), qtype
    except ValueError:  # e.g. K not a multiple of 256 for the k-quants
        return w.astype(np.float16), "f16"


def write_gguf(
    model: Any,
    tokenizer: Any,
    path: Path,
    *,
    tensor_types: dict[str, str] | None = None,
    default_type: str = "f16",
    name: str = "model",
) -> list[dict[str, Any]]:
    """Writes ``path`` and returns one record per tensor (name, GGUF type, shape, bytes).

    ``tensor_types``: fnmatch patterns on GGUF tensor names -> type, for float tensors
    (for example ``{"token_embd.weight": "q6_k", "blk.*": "q4_k"}``); quantized linears
    keep their own format. Unmatched float matrices get ``default_type``; norms are f32.
    """
    import gguf
    import torch

    from ..nn import QuantLinear

    tensor_types = dict(tensor_types or {})
    check_gguf_exportable(model, tensor_types)
    cfg = model.config
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    if head_dim != cfg.hidden_size // n_head:
        raise ValueError("llama.cpp's llama graph needs head_dim = hidden_size / num_attention_heads")

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(_rope_theta(cfg))
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    writer.add_vocab_size(cfg.vocab_size)

    records: list[dict[str, Any]] = []
    linear_types: list[str] = []

    def add(gguf_name: str, arr: np.ndarray, qtype: str, permute_heads: int | None = None) -> None:
        if permute_heads is not None:
            arr = _permute_rows(arr, permute_heads)
        arr = np.ascontiguousarray(arr)
        if qtype in ("f32", "f16"):
            writer.add_tensor(gguf_name, arr)
        else:
            writer.add_tensor(gguf_name, arr, raw_dtype=gguf.GGMLQuantizationType[_GGML_NAMES[qtype]])
        records.append({"name": gguf_name, "type": qtype, "bytes": int(arr.nbytes)})

    sd = dict(model.state_dict())
    embed_type = _pick_type("token_embd.weight", tensor_types, default_type)
    add("token_embd.weight", *_tensor_bytes(model.get_input_embeddings().weight, embed_type))
    for i, layer in enumerate(model.model.layers):
        for hf_name, g_name in _LAYER_TENSORS.items():
            g_full = f"blk.{i}.{g_name}"
            module = layer.get_submodule(hf_name.rsplit(".", 1)[0])
            heads = (
                n_head if hf_name.startswith("self_attn.q_proj") else n_kv if "k_proj" in hf_name else None
            )
            if "layernorm" in hf_name:
                add(g_full, module.weight.detach().float().cpu().numpy(), "f32")
            elif isinstance(module, QuantLinear):
                q = module.qweight
                data = q.tensors["data"]
                add(g_full, np.asarray(data.cpu() if torch.is_tensor(data) else data), q.format, heads)
                linear_types.append(q.format)
            else:
                arr, qtype = _tensor_bytes(module.weight, _pick_type(g_full, tensor_types, default_type))
                add(g_full, arr, qtype, heads)
                linear_types.append(qtype)
    add("output_norm.weight", model.model.norm.weight.detach().float().cpu().numpy(), "f32")
    tied = cfg.tie_word_embeddings or "lm_head.weight" not in sd
    if not tied:  # llama.cpp uses token_embd for the output when output.weight is absent
        head = model.get_output_embeddings()
        if isinstance(head, QuantLinear):
            if head.qweight.format not in GGUF_TYPES:
                raise ValueError(f"lm_head is {head.qweight.format!r}, which GGUF cannot hold")
            add("output.weight", np.asarray(head.qweight.tensors["data"]), head.qweight.format)
        else:
            add(
                "output.weight",
                *_tensor_bytes(head.weight, _pick_type("output.weight", tensor_types, default_type)),
            )

    most = max(set(linear_types), key=linear_types.count) if linear_types else "f16"
    writer.add_file_type(_FILE_TYPES[most])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_tokenizer(writer, tokenizer, cfg.vocab_size)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return records


def _add_tokenizer(writer: Any, tokenizer: Any, vocab_size: int) -> None:
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    if model.get("type") != "BPE" or not any(
        (p or {}).get("type") == "ByteLevel" for p in _pre_tokenizers(spec.get("pre_tokenizer"))
    ):
        raise ValueError("GGUF export handles byte-level BPE tokenizers (GPT-2 style); this one is not")
    vocab: dict[str, int] = dict(model["vocab"])
    for t in spec.get("added_tokens", []):
        vocab[t["content"]] = t["id"]
    # llama.cpp wants one token per embedding row: rows past the tokenizer are unused tokens.
    tokens = [f"[PAD{i}]" for i in range(max(vocab_size, len(vocab)))]
    for tok, i in vocab.items():
        tokens[i] = tok
    special = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
    types = [
        gguf.TokenType.CONTROL
        if i in special
        else gguf.TokenType.NORMAL
        if i < len(vocab)
        else gguf.TokenType.UNUSED
        for i in range(len(tokens))
    ]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")  # ByteLevel with GPT-2's split regex
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for key, tok in (
        ("bos", tokenizer.bos_token),
        ("eos", tokenizer.eos_token),
        ("pad", tokenizer.pad_token),
    ):
        if tok is not None:
            getattr(writer, f"add_{key}_token_id")(tokenizer.convert_tokens_to_ids(tok))
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


def _pre_tokenizers(p: dict | None) -> list[dict]:
    if not p:
        return []
    return p.get("pretokenizers", [p]) if p.get("type") == "Sequence" else [p]


def ollama_modelfile(gguf_name: str, tokenizer: Any, context: int) -> str:
    """FROM, TEMPLATE (ChatML, when the chat template is ChatML) and stop/num_ctx parameters."""
    template = getattr(tokenizer, "chat_template", None) or ""
    lines = [f"FROM ./{gguf_name}"]
    if "<|im_start|>" in template:
        lines.append(
            'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n'
            '{{ end }}<|im_start|>assistant\n"""'
        )
        lines.append('PARAMETER stop "<|im_end|>"')
    if tokenizer.eos_token and tokenizer.eos_token != "<|im_end|>":
        lines.append(f'PARAMETER stop "{tokenizer.eos_token}"')
    lines.append(f"PARAMETER num_ctx {context}")
    return "\n".join(lines) + "\n"
