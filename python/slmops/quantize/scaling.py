"""Per-channel scales folded across a decoder layer (AWQ, SmoothQuant): which linears read
the output of which op, and dividing that op's output by s while the linears' weights are
multiplied by s, so the float model computes the same function."""

from __future__ import annotations

import torch
from torch import nn


def scale_groups(layer: nn.Module) -> list[tuple[nn.Module, list[nn.Linear]]]:
    """(previous op, linears that read its output) for a Llama-style decoder layer."""
    try:
        attn, mlp = layer.self_attn, layer.mlp
        groups = [
            (layer.input_layernorm, [attn.q_proj, attn.k_proj, attn.v_proj]),
            (layer.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj]),
            (mlp.up_proj, [mlp.down_proj]),
        ]
    except AttributeError as e:
        raise ValueError(
            f"AWQ folds its scales into Llama-style decoder layers (input_layernorm, self_attn.q/k/v/o_proj, "
            f"post_attention_layernorm, mlp.gate/up/down_proj: Llama, Qwen2, Mistral, Gemma); "
            f"{type(layer).__name__} has no {e.name}"
        ) from e
    if attn.v_proj.weight.shape == attn.o_proj.weight.shape:
        groups.insert(1, (attn.v_proj, [attn.o_proj]))
    return groups


@torch.no_grad()
def fold_scales(prev: nn.Module, linears: list[nn.Linear], s: torch.Tensor) -> None:
    """prev's output / s, the linears' weights * s: the float function is unchanged."""
    for linear in linears:
        linear.weight.mul_(s.to(linear.weight.dtype))
    if isinstance(prev, nn.Linear):
        prev.weight.div_(s.to(prev.weight.dtype).unsqueeze(1))
        if prev.bias is not None:
            prev.bias.div_(s.to(prev.bias.dtype))
    elif "Gemma" in type(prev).__name__:  # Gemma's RMSNorm scales by 1 + weight
        prev.weight.copy_((1.0 + prev.weight.float()) / s - 1.0)
    else:
        prev.weight.div_(s.to(prev.weight.dtype))
