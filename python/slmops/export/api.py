"""``slmops.export_model(model, target, out_dir)`` (``slmops.export.export``): one entry point
for every target; each writes into a temporary sibling folder that is renamed at the end,
with ``manifest.json`` listing every file with its size and SHA-256 (see ``slmops._io``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .._io import atomic_dir, check_writable, read_manifest

TARGETS = ("onnx-genai", "gguf", "hf", "slmops", "container")


def export(
    model: Any,
    target: str,
    out_dir: str | os.PathLike[str],
    tokenizer: Any = None,
    overwrite: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Writes ``model`` for a runtime and returns the manifest.

    ``model``: a transformers causal LM (slmops ``QuantLinear`` layers included) with its
    ``tokenizer``, or a zoo name / model folder (loaded with its tokenizer). Targets:

    - ``"onnx-genai"``: an ONNX Runtime GenAI folder as Foundry Local loads it (model.onnx
      + model.onnx.data, genai_config.json, tokenizer with chat template,
      inference_model.json). Quantized linears (int4, int8, q4_0, q8_0) become MatMulNBits
      with their own codes. Options: ``accuracy_level`` (4 = int8 activations, the fast
      CPU path, default; 1 = float32, our torch model's math), ``lm_head`` and
      ``embedding`` ("int8" default, "int4", "float": the vocabulary tables quantized at
      export), ``fuse_projections`` (q/k/v and gate/up as one node each, default True),
      ``name`` (Foundry's model name).
    - ``"gguf"``: ``model.gguf`` and an Ollama ``Modelfile`` for llama.cpp / Ollama.
      Options: ``tensor_types`` (fnmatch pattern on GGUF names -> f32, f16, q8_0, q4_0,
      q4_k, q6_k, tq2_0; for float tensors), ``default_type`` (default f16).
    - ``"hf"``: a Hugging Face folder: float models as they are; quantized ones (int4,
      int8, q4_0, q8_0 linears) in the GPTQ layout (qweight, qzeros, scales, g_idx) that
      transformers, vLLM and onnxruntime-genai's builder read. Option: ``scale_dtype``
      (float16, the default GPU kernels take, rounds the scales; float32 keeps them exact).
    - ``"slmops"``: an slmops checkpoint (quantized linears as their codes and scales).
    - ``"container"``: a build context that serves the model with ``slmops serve``: the
      slmops checkpoint in ``model/``, a ``Dockerfile`` and ``k8s.yaml`` (a Deployment and
      Service with liveness / readiness probes on /health and /ready and Prometheus scrape
      annotations). Options: ``name`` (the served model name, default the folder's name),
      ``port`` (default 8080).

    Unsupported architectures or formats raise ``ValueError`` before anything is written.
    An existing ``out_dir`` is replaced only when slmops wrote it or it is empty, or with
    ``overwrite=True``; otherwise ``OutputExistsError``, before any work.
    """
    from ..models import check_tokenizer, load_model
    from ..nn import QuantLinear
    from .checkpoint import save_checkpoint
    from .container import MODEL_DIR, write_container
    from .gguf import check_gguf_exportable, ollama_modelfile, write_gguf
    from .gptq import check_gptq_exportable, save_gptq
    from .onnx_genai import check_onnx_genai_exportable, write_onnx_genai

    if target not in TARGETS:
        raise ValueError(f"unknown export target {target!r}; expected one of {TARGETS}")
    check_writable(out_dir, overwrite)
    if isinstance(model, (str, os.PathLike)):
        model, loaded_tok = load_model(model)
        tokenizer = tokenizer or loaded_tok
    if tokenizer is None:
        raise ValueError("export needs the model's tokenizer: pass tokenizer=...")
    check_tokenizer(model, tokenizer)
    allowed = {
        "onnx-genai": {"accuracy_level", "fuse_projections", "lm_head", "embedding", "name"},
        "gguf": {"tensor_types", "default_type", "name"},
        "hf": {"scale_dtype"},
        "slmops": set(),
        "container": {"name", "port"},
    }[target]
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(
            f"unknown options for target {target!r}: {sorted(unknown)}; allowed: {sorted(allowed)}"
        )
    if target == "onnx-genai":
        check_onnx_genai_exportable(
            model, **{k: options[k] for k in ("accuracy_level", "lm_head", "embedding") if k in options}
        )
    if target == "gguf":
        check_gguf_exportable(model, options.get("tensor_types") or {})
    if target == "container":
        port = options.get("port", 8080)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise ValueError(f"port must be an int in 1..65535, got {port!r}")
    quantized = any(isinstance(m, QuantLinear) for m in model.modules())
    if target == "hf" and quantized:
        check_gptq_exportable(model)
    elif target == "hf" and options:
        raise ValueError(f"option(s) {sorted(options)} apply to quantized models; this one is float")

    details: dict[str, Any] = {"target": target}
    with atomic_dir(out_dir, overwrite=overwrite, details=details) as tmp:
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
        elif target == "container":
            save_checkpoint(model, tokenizer, tmp / MODEL_DIR)
            model_bytes = sum(f.stat().st_size for f in (tmp / MODEL_DIR).rglob("*") if f.is_file())
            details.update(
                write_container(
                    tmp,
                    str(options.get("name") or Path(out_dir).name),
                    options.get("port", 8080),
                    model_bytes,
                )
            )
        else:
            save_checkpoint(model, tokenizer, tmp)
        details["options"] = options
    manifest = read_manifest(Path(out_dir))
    assert manifest is not None  # atomic_dir wrote it
    return manifest
