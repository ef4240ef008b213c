"""The frozen base of QLoRA: linear layers quantized to 4 bits (nf4 or int4, our kernels),
and the embedding (with a tied output head) stored in bfloat16, as QLoRA keeps every
weight it does not quantize in 16 bits. Activations stay float32."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

# defined with the other options of fine-tuning
from .options import FROZEN_DTYPES, QLORA_FORMATS, QLoRAOptions  # noqa: F401


class FrozenEmbedding(nn.Module):
    """An embedding stored in 16 bits that returns float32 rows."""

    def __init__(self, weight: torch.Tensor, padding_idx: int | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.padding_idx = padding_idx

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight, self.padding_idx).float()


class FrozenHead(nn.Module):
    """A bias-free output head over a 16-bit weight (shared with a FrozenEmbedding when tied),
    computing in the input's dtype."""

    def __init__(self, weight: nn.Parameter) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype))


def quantize_base(model: nn.Module, options: QLoRAOptions | None = None) -> dict[str, Any]:
    """Makes ``model`` a QLoRA base in place: its float linear layers (not the head) become
    QuantLinear, its embedding is stored in ``frozen_dtype``. Returns what was done."""
    from ..quantize import quantize_model

    opts = options or QLoRAOptions()
    quant = {"group_size": opts.group_size} if opts.group_size is not None else {}
    if opts.double_quant:
        quant["double_quant"] = True
    summary = quantize_model(model, "rtn", format=opts.format, progress=False, **quant)
    if summary.skipped and not summary.replaced:
        raise ValueError(f"no linear layer could be quantized to {opts.format}: {summary.skipped}")
    info = {"quantized_layers": len(summary.replaced), "skipped": summary.skipped, "format": opts.format}
    if opts.frozen_dtype != "float32":
        dtype = getattr(torch, opts.frozen_dtype)
        emb, head = model.get_input_embeddings(), model.get_output_embeddings()
        tied = head is not None and getattr(head, "weight", None) is emb.weight
        new = FrozenEmbedding(emb.weight.detach().to(dtype), emb.padding_idx)
        model.set_input_embeddings(new)
        if tied:
            model.set_output_embeddings(FrozenHead(new.weight))
        info["frozen_dtype"] = opts.frozen_dtype
    return info


def restore_float_storage(model: nn.Module) -> None:
    """Back to float32 ``nn.Embedding`` / ``nn.Linear`` (the 16-bit values, widened), so a
    merged model is a plain Hugging Face model again."""
    emb = model.get_input_embeddings()
    if not isinstance(emb, FrozenEmbedding):
        return
    weight = emb.weight.detach().float()
    new = nn.Embedding(weight.shape[0], weight.shape[1], padding_idx=emb.padding_idx)
    new.weight = nn.Parameter(weight)
    model.set_input_embeddings(new)
    head = model.get_output_embeddings()
    if isinstance(head, FrozenHead):
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        linear.weight = new.weight  # tied again
        model.set_output_embeddings(linear)
