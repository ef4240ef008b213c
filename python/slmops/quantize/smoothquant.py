"""SmoothQuant (Xiao et al., 2023): W8A8 with the activation outliers moved into the weights.

Per-token int8 activations lose precision when a few channels are much larger than the
rest. SmoothQuant divides input channel j by s_j = max|x_j|^alpha / max|w_j|^(1 - alpha)
(alpha 0.5 by default; max|w_j| over every linear reading that input) and multiplies the
weights' column j by s_j, folding 1/s into the RMSNorm before q/k/v_proj and before
gate/up_proj as the paper does for its LayerNorms (``slmops.quantize.scaling.fold_scales``).
With ``through_linears`` (default) down_proj's input is smoothed too, 1/s folded into
up_proj's rows (and o_proj's into v_proj's where every query head has its own value head):
a row scale of the linear before costs it nothing, as its int8 weights are scaled per row.
down_proj's input holds the largest outliers of a Llama layer: on SmolLM2-135M this took the
W8A8 perplexity increase from 0.58x to 0.39x plain W8A8's on the KJV slice (0.46x -> 0.47x on
modern English; docs/quantization.md). Then every targeted linear becomes int8 per-channel
weights with int8 per-token activations (``QuantLinear`` activation 'int8_row', the W8A8
kernels: oneDNN's int8 matmul where present).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from ..nn import QuantLinear
from .calibration import calibration_tokens, linears_by_layer, observe_inputs, run_layerwise
from .linears import QuantizationSummary, replace_linear
from .options import SmoothQuantOptions
from .scaling import fold_scales, scale_groups


def smooth_scales(abs_max: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """s_j = max|x_j|^alpha / max_i |w_ij|^(1 - alpha), over all the weights reading x."""
    w_max = torch.stack([w.detach().abs().float().amax(0) for w in weights]).amax(0)
    s = abs_max.clamp(min=1e-5).pow(alpha) / w_max.clamp(min=1e-5).pow(1.0 - alpha)
    return s.clamp(min=1e-5)


def smoothquant_model(
    model: nn.Module,
    targets: list[str],
    summary: QuantizationSummary,
    options: SmoothQuantOptions,
    *,
    tokenizer: Any,
    calibration: Any,
    progress: bool,
) -> QuantizationSummary:
    if options.format != "int8":
        raise ValueError(f"SmoothQuant is W8A8: format must be 'int8', got {options.format!r}")
    # the point of smoothing: int8 activations per token
    activation = "int8_row" if options.activation == "float" else options.activation
    alpha = options.alpha
    batches = calibration_tokens(
        model, tokenizer, calibration, n_samples=options.n_samples, seq_len=options.seq_len,
        method="SmoothQuant",
    )  # fmt: skip
    _, outside = linears_by_layer(model, targets)
    for name in outside:
        summary.skipped[name] = "outside the decoder layers (SmoothQuant calibrates the layers' linears)"
    names = {id(m): name for name, m in model.named_modules()}
    start = time.perf_counter()

    def compress(i: int, layer: nn.Module, forward: Any) -> None:
        groups = [
            (prev, ls)
            for prev, ls in scale_groups(layer)
            if options.through_linears or not isinstance(prev, nn.Linear)
        ]
        stats = observe_inputs(model, [names[id(ls[0])] for _, ls in groups], forward, moments=True)
        for prev, linears in groups:
            abs_max = torch.from_numpy(stats[names[id(linears[0])]].abs_max)
            fold_scales(prev, linears, smooth_scales(abs_max, [m.weight for m in linears], alpha))

    run_layerwise(model, batches, compress, progress=progress)
    for name in targets:
        if name not in outside:
            q = QuantLinear.from_linear(model.get_submodule(name), "int8", activation=activation)
            replace_linear(model, name, q, summary)
    summary.method = "smoothquant"
    summary.seconds = time.perf_counter() - start
    return summary
