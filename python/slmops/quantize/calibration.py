"""Calibration for the compression algorithms that look at activations (GPTQ, and the
ones that come after it): token windows from text, and a layer-by-layer driver.

The driver captures the inputs of the first decoder layer for all calibration samples,
then for each layer in turn lets the algorithm observe the layer (hooks on its linears
see their inputs), compress it, and runs the samples through the *compressed* layer to get
the next layer's inputs ("true sequential"). Peak memory is one layer's work plus the
calibration activations: n_samples x seq_len x hidden_size float32 values, twice (the
inputs and outputs of the current layer); 128 x 512 x 4096 is 1 GiB each.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn


def calibration_text(source: str | os.PathLike[str] | Sequence[str] | None = None) -> str:
    """The text to calibrate on: ``None`` for the reference corpus (KJV training split), a
    path to a .txt or .jsonl file (a ``"text"`` field per line), or a list of strings."""
    from .. import zoo

    if source is None:
        return zoo.kjv_split("train")
    if isinstance(source, (list, tuple)):
        return "\n\n".join(map(str, source))
    path = Path(source)
    if not path.is_file():
        raise ValueError(
            f"calibration data {str(source)!r} is not a file (give a .txt/.jsonl path or a list of texts)"
        )
    if path.suffix == ".jsonl":
        texts = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            if line.strip():
                try:
                    texts.append(str(json.loads(line)["text"]))
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise ValueError(
                        f"{path} line {i + 1}: expected a JSON object with a 'text' field"
                    ) from e
        return "\n\n".join(texts)
    return path.read_text(encoding="utf-8")


def calibration_batches(
    tokenizer: Any,
    source: str | os.PathLike[str] | Sequence[str] | None = None,
    *,
    n_samples: int = 128,
    seq_len: int = 512,
    vocab_size: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """``n_samples`` windows of ``seq_len`` tokens [n_samples, seq_len], at random offsets
    (seeded) in the tokenized text. Raises for empty or too short text, and for token ids
    beyond ``vocab_size`` (a tokenizer that is not the model's)."""
    if n_samples <= 0 or seq_len <= 0:
        raise ValueError(f"n_samples and seq_len must be positive, got {n_samples} and {seq_len}")
    text = calibration_text(source)
    if not text.strip():
        raise ValueError("the calibration text is empty")
    ids = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
    if ids.numel() < seq_len:
        raise ValueError(
            f"the calibration text has {ids.numel()} tokens, fewer than one window of seq_len={seq_len}; "
            "give more text or a shorter seq_len"
        )
    if vocab_size is not None and int(ids.max()) >= vocab_size:
        raise ValueError(
            f"the tokenizer produced id {int(ids.max())} but the model's vocabulary has {vocab_size} "
            "entries: this tokenizer does not belong to the model"
        )
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seq_len + 1, (n_samples,), generator=gen)
    return torch.stack([ids[s : s + seq_len] for s in starts.tolist()])


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder layers of a Hugging Face causal LM (``model.model.layers``)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        raise ValueError(
            f"{type(model).__name__} has no decoder layer list at model.layers; calibrated compression "
            "handles Hugging Face causal LMs built as a list of decoder layers "
            "(Llama, Qwen2, Mistral, Phi-3, Gemma)"
        )
    if not any(isinstance(m, nn.Linear) for m in layers[0].modules()):
        raise ValueError("the decoder layers hold no nn.Linear modules; nothing to compress")
    return layers


class _Captured(Exception):
    pass


@torch.no_grad()
def run_layerwise(
    model: nn.Module,
    batches: torch.Tensor,
    compress_layer: Callable[[int, nn.Module, Callable[[], None]], None],
    *,
    batch_size: int = 8,
    progress: bool = True,
) -> None:
    """For each decoder layer: ``compress_layer(index, layer, forward)`` where ``forward()``
    runs every calibration sample through the layer (so hooks the callback registers see
    the inputs); then the samples go through the compressed layer to the next one."""
    from tqdm.auto import tqdm

    layers = decoder_layers(model)
    device = next(model.parameters()).device
    inputs: list[tuple[torch.Tensor, dict]] = []

    def capture(module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs.pop("hidden_states")
        inputs.append((hidden, {k: v for k, v in kwargs.items() if k != "hidden_states"}))
        raise _Captured

    handle = layers[0].register_forward_pre_hook(capture, with_kwargs=True)
    try:
        for chunk in batches.split(batch_size):
            try:
                model(chunk.to(device), use_cache=False)
            except _Captured:
                pass
    finally:
        handle.remove()

    def run_through(layer: nn.Module) -> list[torch.Tensor]:
        outs = []
        for hidden, kwargs in inputs:
            out = layer(hidden, **kwargs)
            outs.append(out[0] if isinstance(out, tuple) else out)
        return outs

    for i, layer in enumerate(
        tqdm(layers, desc="calibrated compression", unit="layer", disable=not progress)
    ):
        compress_layer(i, layer, lambda layer=layer: run_through(layer))
        outs = run_through(layer)
        inputs = [(o, kw) for o, (_, kw) in zip(outs, inputs, strict=True)]
