"""``slmops.export(model, target, out_dir)``: one entry point for every target; each writes
into a temporary sibling folder that is renamed at the end, with ``manifest.json`` listing
every file with its size and SHA-256."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .._io import atomic_dir

TARGETS = ("onnx-genai", "gguf", "hf", "slmops")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export(
    model: Any,
    target: str,
    out_dir: str | os.PathLike[str],
    tokenizer: Any = None,
    **options: Any,
) -> dict[str, Any]:
    """Writes ``model`` for a runtime and returns the manifest.

    ``model``: a transformers causal LM (slmops ``QuantLinear`` layers included) with its
    ``tokenizer``, or a zoo name / model folder (loaded with its tokenizer). Targets:

    - ``"onnx-genai"``: an ONNX Runtime GenAI folder as Foundry Local loads it (model.onnx
      + model.onnx.data, genai_config.json, tokenizer with chat template,
      inference_model.json). Quantized linears (int4, int8, q4_0, q8_0) become MatMulNBits
      with their own codes. Options: ``accuracy_level`` (4 = int8 activations, the fast
      CPU path, default; 1 = float32, our torch model's math), ``name`` (Foundry's model
      name).
    - ``"gguf"``: ``model.gguf`` and an Ollama ``Modelfile`` for llama.cpp / Ollama.
      Options: ``tensor_types`` (fnmatch pattern on GGUF names -> f32, f16, q8_0, q4_0,
      q4_k, q6_k, tq2_0; for float tensors), ``default_type`` (default f16).
    - ``"hf"``: a Hugging Face folder: float models as they are; quantized ones (int4,
      int8, q4_0, q8_0 linears) in the GPTQ layout (qweight, qzeros, scales, g_idx) that
      transformers, vLLM and onnxruntime-genai's builder read. Option: ``scale_dtype``
      (float16, the default GPU kernels take, rounds the scales; float32 keeps them exact).
    - ``"slmops"``: an slmops checkpoint (quantized linears as their codes and scales).

    Unsupported architectures or formats raise ``ValueError`` before anything is written.
    """
    from .. import zoo
    from ..nn import QuantLinear
    from .checkpoint import save_checkpoint
    from .gguf import check_gguf_exportable, ollama_modelfile, write_gguf
    from .gptq import check_gptq_exportable, save_gptq
    from .onnx_genai import check_onnx_genai_exportable, write_onnx_genai

    if target not in TARGETS:
        raise ValueError(f"unknown export target {target!r}; expected one of {TARGETS}")
    if isinstance(model, (str, os.PathLike)):
        model, loaded_tok = zoo.load(model)
        tokenizer = tokenizer or loaded_tok
    if tokenizer is None:
        raise ValueError("export needs the model's tokenizer: pass tokenizer=...")
    zoo.check_tokenizer(model, tokenizer)
    allowed = {
        "onnx-genai": {"accuracy_level", "name"},
        "gguf": {"tensor_types", "default_type", "name"},
        "hf": {"scale_dtype"},
        "slmops": set(),
    }[target]
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(
            f"unknown options for target {target!r}: {sorted(unknown)}; allowed: {sorted(allowed)}"
        )
    if target == "onnx-genai":
        check_onnx_genai_exportable(model, options.get("accuracy_level", 4))
    if target == "gguf":
        check_gguf_exportable(model, options.get("tensor_types") or {})
    quantized = any(isinstance(m, QuantLinear) for m in model.modules())
    if target == "hf" and quantized:
        check_gptq_exportable(model)
    elif target == "hf" and options:
        raise ValueError(f"option(s) {sorted(options)} apply to quantized models; this one is float")

    with atomic_dir(out_dir) as tmp:
        details: dict[str, Any] = {}
        if target == "onnx-genai":
            options = {"name": Path(out_dir).name, **options}  # Foundry lists the model by it
            details.update(write_onnx_genai(model, tokenizer, tmp, **options))
        elif target == "gguf":
            details["tensors"] = write_gguf(model, tokenizer, tmp / "model.gguf", **options)
            (tmp / "Modelfile").write_text(
                ollama_modelfile("model.gguf", tokenizer, model.config.max_position_embeddings)
            )
        elif target == "hf" and quantized:
            details.update(save_gptq(model, tokenizer, tmp, **options))
        elif target == "hf":
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        else:
            save_checkpoint(model, tokenizer, tmp)
        files = [
            {"path": p.relative_to(tmp).as_posix(), "bytes": p.stat().st_size, "sha256": _sha256(p)}
            for p in sorted(tmp.rglob("*"))
            if p.is_file()
        ]
        manifest = {"target": target, "options": options, "files": files, **details}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return manifest
