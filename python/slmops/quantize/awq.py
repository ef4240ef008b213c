"""AWQ (Lin et al., 2023): activation-aware weight quantization, on slmops's RTN formats.

A few input channels carry much larger activations than the rest, and the weights they
multiply matter most. AWQ scales those weights up by s_j before rounding (so they round
with less relative error) and divides the layer's inputs by s_j, folding 1/s into the op
before the linear so the float model is unchanged:

* ``input_layernorm`` -> q/k/v_proj, ``post_attention_layernorm`` -> gate/up_proj
  (the norm's weight is divided by s; Gemma's norm multiplies by 1 + weight),
* ``v_proj`` -> ``o_proj`` when their shapes match (no grouped-query attention),
* ``up_proj`` -> ``down_proj`` (the product act(gate) * up is linear in up).

s_j = mean|x_j|^alpha / mean_j(w)^(1 - alpha), where mean_j(w) is the mean over the
group's output rows of |w| relative to its quantization group's absmax (AutoAWQ's
default "duo scaling": a channel whose weights are already large in their groups needs
less help); ``duo_scaling=False`` gives the paper's s_j = mean|x_j|^alpha. On the
reference teacher duo scaling cuts AWQ's perplexity increase by a third to a half
(README). alpha is searched on a grid of 20 in [0, 1) per group of linears, minimizing
the error of their outputs on calibration inputs; then each linear but q/k gets its
weights clipped per quantization group at the ratio (of 1.0 .. 0.55) that minimizes that group's output
error. The layer's linears are then quantized round-to-nearest (any int4/int8 option of
``slmops.ops.quantize``), so the output is in the formats every kernel and exporter takes.

The search's loss is the output of the linears themselves on a sample of rows, each
window's first token (the attention sink) kept apart and counted ``awq_sink_weight`` times
as another token (default 64). ``block_loss=True`` judges the q/k/v scales on the
self-attention output of the first calibration batch's first two windows and the gate/up
scales on the MLP output of the rows, as AutoAWQ does. On SmolLM2-135M neither changed
much: AWQ's residual error there is in v_proj and q_proj (docs/quantization.md).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from ..nn import QuantLinear
from ..ops import quantize
from .calibration import (
    InputStats,
    _output,
    calibration_tokens,
    linears_by_layer,
    observe_inputs,
    run_layerwise,
)
from .linears import QuantizationSummary, replace_linear
from .options import AWQOptions
from .scaling import fold_scales, scale_groups

GRID = 20
SAMPLE_ROWS = 64  # input rows kept per calibration batch for the searches (16 batches: 1024)
CLIP_ROWS = 512  # of which the clipping search uses this many


def _fake_quant(w: torch.Tensor, format: str, options: dict[str, Any]) -> torch.Tensor:
    return quantize(w.contiguous(), format, **options).dequantize()  # a torch tensor for a torch input


def _weight_mean(weights: list[torch.Tensor], group_size: int) -> torch.Tensor:
    """Per input channel, the mean over all rows of |w| / (absmax of its quantization group)."""
    w = torch.cat(weights).abs()
    k = w.shape[1]
    g = group_size if group_size and k % group_size == 0 else k
    grouped = w.reshape(-1, k // g, g)
    return (grouped / (grouped.amax(-1, keepdim=True) + 1e-6)).reshape(-1, k).mean(0)


def _sink_share(stats: InputStats, sink_weight: float) -> float:
    """The share of the loss that goes to the windows' first tokens when each counts
    ``sink_weight`` times as one of the other tokens."""
    windows = sum(len(f) for f in stats.first)
    if not windows:
        return 0.0
    return sink_weight * windows / (stats.rows - windows + sink_weight * windows)


def _loss(x: torch.Tensor, first: torch.Tensor | None, share: float, f: Any) -> float:
    """(1 - share) * mean(f(x)) + share * mean(f(first)): f gives squared errors per row."""
    loss = (1.0 - share) * float(f(x).mean()) if share < 1.0 else 0.0
    if first is not None and share > 0.0:
        loss += share * float(f(first).mean())
    return loss


@torch.no_grad()
def _search_scale(
    linears: list[nn.Linear],
    stats: InputStats,
    format: str,
    options: dict[str, Any],
    duo_scaling: bool,
    sink_weight: float = 1.0,
    block: Any = None,
) -> torch.Tensor:
    x = torch.cat(stats.sample)
    first = torch.cat(stats.first) if stats.first else None
    share = _sink_share(stats, sink_weight)
    weights = [linear.weight.detach().float() for linear in linears]
    if block is not None:
        reference_out = block(weights)
    mean_abs = torch.from_numpy(stats.abs_sum / max(stats.rows, 1)).float().clamp(min=1e-8)
    w_mean = _weight_mean(weights, options.get("group_size", 0)) if duo_scaling else None
    best, best_s = float("inf"), torch.ones_like(mean_abs)
    for i in range(GRID):
        alpha = i / GRID
        s = mean_abs.pow(alpha)
        if w_mean is not None:  # AutoAWQ's constants
            s = (s / (w_mean.pow(1 - alpha) + 1e-4)).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()  # centred around 1, as the paper's code does
        if block is not None:
            loss = float(
                (block([_fake_quant(w * s, format, options) / s for w in weights]) - reference_out)
                .square()
                .mean()
            )
        else:
            deltas = [(_fake_quant(w * s, format, options) / s - w).t() for w in weights]
            loss = sum(_loss(x, first, share, lambda rows, d=d: (rows @ d).square()) for d in deltas)
        if loss < best:
            best, best_s = loss, s
    return best_s


@torch.no_grad()
def _clip(
    linear: nn.Linear,
    x: torch.Tensor,
    group: int,
    format: str,
    options: dict[str, Any],
    first: torch.Tensor | None = None,
    share: float = 0.0,
) -> None:
    """Clips each quantization group of ``linear``'s weight at the ratio of its absmax that
    minimizes the group's share of the output error on ``x`` (and on the first tokens
    ``first`` with weight ``share``, as ``_search_scale``)."""
    w = linear.weight.detach().float()
    n, k = w.shape
    g = group if group and k % group == 0 else k
    xg = x[:CLIP_ROWS].reshape(-1, k // g, g)
    fg = None if first is None else first.reshape(-1, k // g, g)
    absmax = w.reshape(n, k // g, g).abs().amax(-1, keepdim=True)
    best_err = torch.full((n, k // g), float("inf"))
    best_max = absmax.clone()
    for i in range(GRID // 2):
        limit = absmax * (1.0 - i / GRID)
        clipped = torch.maximum(torch.minimum(w.reshape(n, k // g, g), limit), -limit)
        delta = (_fake_quant(clipped.reshape(n, k), format, options) - w).reshape(n, k // g, g)
        err = (1.0 - share) * torch.einsum("tcg,ncg->tnc", xg, delta).square().mean(0)  # [n, groups]
        if fg is not None and share > 0.0:
            err = err + share * torch.einsum("tcg,ncg->tnc", fg, delta).square().mean(0)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_max = torch.where(better.unsqueeze(-1), limit, best_max)
    clipped = torch.maximum(torch.minimum(w.reshape(n, k // g, g), best_max), -best_max).reshape(n, k)
    linear.weight.copy_(clipped.to(linear.weight.dtype))


BLOCK_WINDOWS = 2  # windows of the first calibration batch the attention block loss runs on


def _first_windows(args: tuple, kwargs: dict, n: int) -> tuple[tuple, dict]:
    """The first ``n`` windows of a batch's call arguments (tensors sliced on their batch dim)."""
    hidden = args[0] if args else kwargs["hidden_states"]
    batch = hidden.shape[0]

    def cut(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v[:n].clone() if v.dim() and v.shape[0] == batch else v
        if isinstance(v, tuple):
            return tuple(cut(e) for e in v)
        return v

    caches = ("cache", "past_key_values", "past_key_value")  # the search runs it repeatedly: no cache
    return tuple(cut(a) for a in args), {k: None if k in caches else cut(v) for k, v in kwargs.items()}


def _block(module: nn.Module, linears: list[nn.Linear], run: Any) -> Any:
    """A function of candidate weights for ``linears``: ``module``'s output with them."""

    def output(weights: list[torch.Tensor]) -> torch.Tensor:
        saved = [linear.weight.data for linear in linears]
        try:
            for linear, w in zip(linears, weights, strict=True):
                linear.weight.data = w.to(linear.weight.dtype)
            return run(module).float()
        finally:
            for linear, w in zip(linears, saved, strict=True):
                linear.weight.data = w

    return output


def awq_quantize_model(
    model: nn.Module,
    targets: list[str],
    summary: QuantizationSummary,
    options: AWQOptions,
    *,
    tokenizer: Any,
    calibration: Any,
    progress: bool,
) -> QuantizationSummary:
    format, activation, duo_scaling = options.format, options.activation, options.duo_scaling
    sink_weight, block_loss = options.awq_sink_weight, options.block_loss
    if format not in ("int4", "int8"):
        raise ValueError(f"AWQ writes int4 or int8; format {format!r} is neither")
    quant = options.format_options()
    if format == "int4":
        quant = {"group_size": 128, "symmetric": False} | quant  # the paper's setting: g128 with zeros
    _fake_quant(torch.zeros(1, max(quant.get("group_size") or 32, 32)), format, quant)  # bad options: now
    batches = calibration_tokens(
        model, tokenizer, calibration, n_samples=options.n_samples, seq_len=options.seq_len, method="AWQ"
    )  # fmt: skip
    _, outside = linears_by_layer(model, targets)
    for name in outside:
        summary.skipped[name] = "outside the decoder layers (AWQ calibrates the layers' linears)"
    names = {id(m): name for name, m in model.named_modules()}
    quantized = set(targets) - set(outside)
    start = time.perf_counter()

    def compress(i: int, layer: nn.Module, forward: Any) -> None:
        groups = scale_groups(layer)
        linears = {names[id(m)]: m for _, ls in groups for m in ls} | {
            names[id(layer.self_attn.o_proj)]: layer.self_attn.o_proj
        }
        if not options.scale_qkv:  # observed and clipped all the same
            groups = [g for g in groups if g[1][0] is not layer.self_attn.q_proj]
        kept: list = []

        def grab(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if not kept:
                kept.append(_first_windows(args, kwargs, BLOCK_WINDOWS))

        handle = layer.self_attn.register_forward_pre_hook(grab, with_kwargs=True) if block_loss else None
        try:
            stats = observe_inputs(model, list(linears), forward, moments=True, keep=SAMPLE_ROWS)
        finally:
            if handle is not None:
                handle.remove()
        for prev, group in groups:
            st = stats[names[id(group[0])]]
            block = None
            if block_loss and group[0] is layer.self_attn.q_proj:
                block = _block(layer.self_attn, group, lambda m: _output(m(*kept[0][0], **kept[0][1])))
            elif block_loss and group[0] is layer.mlp.gate_proj:
                x = torch.cat(st.sample)
                block = _block(layer.mlp, group, lambda m, x=x: m(x))
            s = _search_scale(group, st, format, quant, duo_scaling, sink_weight, block)
            fold_scales(prev, group, s)
            st.sample = [x / s for x in st.sample]  # the linears now read x / s
            st.first = [x / s for x in st.first]
        for name, linear in linears.items():
            if name in quantized and not name.endswith(("q_proj", "k_proj")):  # AutoAWQ leaves q/k unclipped
                st = stats[name]
                first = torch.cat(st.first) if st.first else None
                share = _sink_share(st, sink_weight)
                _clip(linear, torch.cat(st.sample), quant.get("group_size", 0), format, quant, first, share)

    run_layerwise(model, batches, compress, progress=progress)
    for name in sorted(quantized, key=targets.index):
        q = QuantLinear.from_linear(model.get_submodule(name), format, activation=activation, **quant)
        replace_linear(model, name, q, summary)
    summary.method = "awq"
    summary.seconds = time.perf_counter() - start
    return summary
