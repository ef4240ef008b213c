"""GPTQ over a whole model: the calibration driver (``run_linear_sequential``) gives each
linear the Hessian of its inputs, computed with the linears before it already quantized,
and each linear is replaced by the QuantLinear that ``gptq_quantize_weight`` makes of it."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from ..nn import QuantLinear
from .calibration import calibration_tokens, linears_by_layer, run_linear_sequential
from .gptq import check_options, gptq_quantize_weight
from .linears import QuantizationSummary, replace_linear
from .options import GPTQOptions

GROUP_SIZE = 128  # GPTQ's default group below 8 bits (8 bits: one group per row)


def _bits_and_format(format: str, bits: int | None) -> tuple[int, str]:
    if format not in ("int4", "int8"):
        raise ValueError(f"GPTQ writes int4 (2-4 bits) or int8 (8 bits); format {format!r} is neither")
    if bits is None:
        bits = 4 if format == "int4" else 8
    if format == "int8" and bits != 8:
        raise ValueError(f"format 'int8' holds 8-bit codes; bits={bits} needs format 'int4'")
    return bits, "int8" if bits == 8 else "int4"


def gptq_quantize_model(
    model: nn.Module,
    targets: list[str],
    summary: QuantizationSummary,
    options: GPTQOptions,
    *,
    tokenizer: Any,
    calibration: Any,
    progress: bool,
) -> QuantizationSummary:
    o = options
    bits, summary.format = _bits_and_format(o.format, o.bits)
    group_size = (0 if bits == 8 else GROUP_SIZE) if o.group_size is None else o.group_size
    symmetric = True if o.symmetric is None else o.symmetric
    check_options(bits, group_size, symmetric)
    batches = calibration_tokens(
        model, tokenizer, calibration, n_samples=o.n_samples, seq_len=o.seq_len, method="GPTQ"
    )  # fmt: skip
    by_layer, outside = linears_by_layer(model, targets)
    for name in outside:
        summary.skipped[name] = "outside the decoder layers (GPTQ calibrates the layers' linears)"
    opts = {
        "bits": bits,
        "group_size": group_size,
        "symmetric": symmetric,
        "act_order": o.act_order,
        "damp": o.damp,
        "mse": o.mse,
    }
    start = time.perf_counter()

    def compress(name: str, stats: Any) -> None:
        linear = model.get_submodule(name)
        w = linear.weight.detach().float().cpu().numpy()
        q = gptq_quantize_weight(w, stats.hessian, **opts)
        # The linears after it read its output with the quantized weights; the float product
        # of the dequantized values is faster than the int4 kernel at calibration batch
        # sizes. The QuantLinear replaces it once all layers are done.
        linear.weight.data = torch.from_numpy(q.dequantize()).to(linear.weight)
        quantized[name] = q

    quantized: dict[str, Any] = {}
    run_linear_sequential(
        model,
        batches,
        by_layer,
        compress,
        hessian=True,
        sink_weight=o.sink_weight,
        progress=progress,
        memory_budget=o.memory_budget,
    )
    for name, q in quantized.items():
        bias = model.get_submodule(name).bias
        replace_linear(model, name, QuantLinear.from_quantized(q, bias, activation=o.activation), summary)
    summary.method = "gptq"
    summary.seconds = time.perf_counter() - start
    return summary
