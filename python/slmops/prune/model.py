"""``prune_model``: zero a share of the weights of every linear layer of a model.

Three methods:

* ``magnitude``: the smallest |w| of the layer (one threshold per layer, the baseline of
  the Wanda and SparseGPT papers; for n:m within each set); needs no data.
* ``wanda`` (Sun et al., 2023): the smallest |w_ij| * ||x_j||, the weight times the norm of
  its input channel over the calibration tokens, within each output row (every row keeps
  the same share, the comparison group the paper found best for LLMs); no weight update.
* ``sparsegpt`` (Frantar & Alistarh, 2023): the smallest w^2 / [H^-1]_jj^2 chosen block by
  block while GPTQ's column loop (C++, ``slmops.ops.sparsegpt_prune``) updates the weights
  still to come to make up for each removed one; with ``quantize=`` the kept weights are
  quantized in the same pass (int4/int8 ``QuantLinear`` out).

Patterns: ``unstructured`` (``sparsity`` of each row) or ``n:m`` (``2:4``, ``4:8``: n of
every m consecutive weights of a row kept, 50%; what sparse tensor cores and the sparse
kernels of slmops take). The calibrated methods run layer by layer as GPTQ does
(``slmops.quantize.calibration``): each layer is pruned, and the calibration samples run
through the pruned layer to give the next layer its inputs.

The pruned weights stay in the dense ``nn.Linear`` as zeros, or with ``sparse=True`` each
pruned layer becomes a ``SparseLinear`` (n:m patterns in their n:m format, unstructured in
CSR) whose forward runs on the sparse kernels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .._options import one_of
from ..nn import QuantLinear, SparseLinear
from ..ops import cholesky_inverse_upper, sparsegpt_prune
from ..quantize.calibration import calibration_tokens, linears_by_layer, run_linear_sequential
from ..quantize.gptq import check_options, damped, to_quantized
from ..quantize.linears import QuantizationSummary, matches, replace_linear, select_linears
from .options import METHODS, PATTERNS, PruneOptions


@dataclass
class PruningSummary:
    """What ``prune_model`` did: per pruned layer the share of zero weights; per kept layer why."""

    method: str
    pattern: str
    sparsity: float  # the share asked for (n:m: 1 - n/m)
    per_layer: dict[str, float] | None = None  # the per-layer shares asked for (fnmatch pattern: share)
    seconds: float = 0.0
    pruned: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    zeros: int = 0  # weights that are zero in the pruned layers
    total: int = 0  # weights in the pruned layers
    quantized: str | None = None  # the format of the kept weights with SparseGPT's joint quantization
    sparse_format: str | None = None  # with sparse=True: the SparseLinear layout (2:4, 4:8 or csr)
    bytes_dense: int = 0  # with sparse=True: weight bytes of the pruned layers before and after
    bytes_sparse: int = 0

    @property
    def achieved(self) -> float:
        return self.zeros / self.total if self.total else 0.0

    def __str__(self) -> str:
        what = f"{self.pattern} {self.sparsity:.0%}" if self.pattern == "unstructured" else self.pattern
        if self.per_layer is not None:
            what = f"{self.pattern}, per layer"
        joint = f", kept weights in {self.quantized}" if self.quantized else ""
        lines = [
            f"pruned {len(self.pruned)} linear layers ({self.method}, {what}{joint}): "
            f"{self.achieved:.1%} of {self.total:,} weights are zero"
        ]
        if self.sparse_format:
            lines.append(
                f"  stored as SparseLinear ({self.sparse_format}): {self.bytes_sparse:,} bytes "
                f"for {self.bytes_dense:,} dense ({self.bytes_sparse / max(self.bytes_dense, 1):.2f}x)"
            )
        lines += [f"  kept {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)


def parse_pattern(pattern: str, sparsity: float) -> tuple[int, int, float]:
    """(n, m, sparsity): m = 0 for unstructured."""
    if pattern == "unstructured":
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
        return 0, 0, float(sparsity)
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
    n, m = (int(v) for v in pattern.split(":"))
    return n, m, 1.0 - n / m


def keep_mask(scores: torch.Tensor, n: int, m: int, sparsity: float, per_row: bool = True) -> torch.Tensor:
    """Keep-mask [N, K] (bool): the lowest-scoring ``sparsity`` share of each row (of the
    whole matrix when not ``per_row``) is dropped, or with m > 0 all but the n highest of
    every m consecutive scores of a row."""
    rows, k = scores.shape
    if not m and not per_row:
        return keep_mask(scores.reshape(1, -1), n, m, sparsity).reshape(rows, k)
    if m:
        sets = scores.reshape(rows, k // m, m)
        keep = torch.zeros_like(sets, dtype=torch.bool)
        keep.scatter_(2, sets.topk(n, dim=2).indices, True)
        return keep.reshape(rows, k)
    drop = int(round(sparsity * k))
    keep = torch.ones_like(scores, dtype=torch.bool)
    if drop:
        keep.scatter_(1, scores.topk(drop, dim=1, largest=False).indices, False)
    return keep


def prune_model(
    model: nn.Module,
    method: str = "wanda",
    *,
    tokenizer: Any = None,
    calibration: Any = None,
    progress: bool = True,
    **options: Any,
) -> PruningSummary:
    """Prunes, in place, every ``nn.Linear`` of ``model`` (but ``skip``; only ``include``
    when given; fnmatch patterns on module names, lm_head kept by default).

    ``method``: 'magnitude', 'wanda' or 'sparsegpt'; ``sparsity`` the share of each layer
    to zero for ``pattern='unstructured'`` (per row for Wanda, per block of 128 columns for
    SparseGPT, per layer for magnitude, as each is published), or per layer a mapping of fnmatch
    patterns to shares (the first match wins; layers no pattern matches are kept), or
    ``pattern`` '2:4' / '4:8'. ``sparse=True`` replaces each pruned layer by a
    ``SparseLinear`` (n:m layout, or CSR for unstructured; ``sparse_values`` 'float32',
    'bfloat16', 'int8' or 'int4' for n:m; with int8/int4 values, ``activation='int8'`` runs
    them on integer products). Calibration
    (wanda, sparsegpt) as for ``quantize_model``: ``calibration`` None for the reference
    corpus, a .txt/.jsonl path, a list of texts (tokenized with ``tokenizer``), or token
    ids [n, seq_len]. SparseGPT only: ``damp``, and ``quantize=dict(bits=4,
    group_size=128, symmetric=True, mse=False)`` to quantize the kept weights in the same pass
    (``QuantLinear`` layers with ``activation`` out).
    """
    one_of("method", method, METHODS)
    o = PruneOptions(**options)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    per_layer = dict(o.sparsity) if isinstance(o.sparsity, dict) else None
    n, m, share = parse_pattern(o.pattern, 0.5 if per_layer is not None else o.sparsity)
    pattern, damp, activation, sparse_values = o.pattern, o.damp, o.activation, o.sparse_values
    grid = None
    if o.quantize is not None:
        if method != "sparsegpt":
            raise ValueError("quantize= (prune and quantize in one pass) is SparseGPT's: method='sparsegpt'")
        grid = {"bits": 4, "group_size": 128, "symmetric": True, "mse": False} | o.quantize
        check_options(grid["bits"], grid["group_size"], grid["symmetric"])
    summary = PruningSummary(method=method, pattern=pattern, sparsity=share, per_layer=per_layer)
    targets, shares = [], {}
    for name in select_linears(model, o.skip, o.include, summary.skipped):
        k = model.get_submodule(name).in_features
        layer_share = share
        if per_layer is not None:
            layer_share = next((v for key, v in per_layer.items() if matches(name, [key])), None)
        if m and k % m:
            summary.skipped[name] = f"in_features {k} is not a multiple of {m} ({pattern})"
        elif layer_share is None:
            summary.skipped[name] = "no sparsity given for it"
        else:
            targets.append(name)
            shares[name] = float(layer_share)

    start = time.perf_counter()
    if method == "magnitude":
        for name in targets:
            weight = model.get_submodule(name).weight
            scores = weight.detach().abs().float()
            _apply(model, name, keep_mask(scores, n, m, shares[name], per_row=False), summary)
    else:
        batches = calibration_tokens(
            model, tokenizer, calibration, n_samples=o.n_samples, seq_len=o.seq_len, method=method
        )  # fmt: skip
        by_layer, outside = linears_by_layer(model, targets)
        for name in outside:
            summary.skipped[name] = f"outside the decoder layers ({method} calibrates the layers' linears)"
        joint: dict[str, Any] = {}

        def compress(name: str, stats: Any) -> None:
            weight = model.get_submodule(name).weight
            if method == "wanda":
                norms = torch.from_numpy(np.sqrt(stats.sq_sum)).float()
                scores = weight.detach().abs().float() * norms
                _apply(model, name, keep_mask(scores, n, m, shares[name]), summary)
            else:
                q = _sparsegpt(model, name, stats.hessian, n, m, shares[name], damp, grid, summary)
                if q is not None:
                    joint[name] = q

        run_linear_sequential(
            model, batches, by_layer, compress, hessian=method == "sparsegpt", sink_weight=o.sink_weight,
            moments=method == "wanda", progress=progress, memory_budget=o.memory_budget,
        )  # fmt: skip
        if grid is not None:
            replaced = QuantizationSummary(format="int8" if grid["bits"] == 8 else "int4")
            for name, q in joint.items():
                layer = QuantLinear.from_quantized(q, model.get_submodule(name).bias, activation=activation)
                replace_linear(model, name, layer, replaced)
            summary.quantized = f"{replaced.format} ({grid['bits']}-bit, group {grid['group_size']})"
    if o.sparse:
        summary.sparse_format = pattern if m else "csr"
        for name in summary.pruned:
            _to_sparse(model, name, summary.sparse_format, sparse_values, activation, summary)
    summary.seconds = time.perf_counter() - start
    return summary


def _apply(model: nn.Module, name: str, keep: torch.Tensor, summary: PruningSummary) -> None:
    weight = model.get_submodule(name).weight
    with torch.no_grad():
        weight.mul_(keep.to(weight.dtype))
    _count(name, weight, summary)


def _to_sparse(
    model: nn.Module, name: str, layout: str, values: str, activation: str, summary: PruningSummary
) -> None:
    linear = model.get_submodule(name)
    layer = SparseLinear.from_linear(linear, layout, values=values, activation=activation).to(
        linear.weight.device
    )
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
    summary.bytes_dense += linear.weight.numel() * linear.weight.element_size()
    summary.bytes_sparse += layer.sparse_weight.nbytes


def _count(name: str, weight: torch.Tensor, summary: PruningSummary) -> None:
    zeros = int((weight == 0).sum())
    summary.pruned[name] = zeros / weight.numel()
    summary.zeros += zeros
    summary.total += weight.numel()


def _sparsegpt(
    model: nn.Module, name: str, hessian: np.ndarray, n: int, m: int, share: float, damp: float,
    grid: dict[str, Any] | None, summary: PruningSummary,
) -> Any:  # fmt: skip
    """SparseGPT on one linear: its weight becomes the pruned (and with ``grid``
    quantized-dequantized) values; returns the QuantizedTensor with ``grid``."""
    linear = model.get_submodule(name)
    W, U = damped(linear.weight.detach().float().cpu().numpy(), hessian, damp)
    U = cholesky_inverse_upper(U, inplace=True)
    if grid is None:
        sparsegpt_prune(W, U, sparsity=share, n=n, m=m)
        q = None
    else:
        bits, gs, sym = grid["bits"], grid["group_size"], grid["symmetric"]
        r = sparsegpt_prune(
            W, U, sparsity=share, n=n, m=m, bits=bits, symmetric=sym, group_size=gs, mse=bool(grid["mse"])
        )
        q = to_quantized(r.codes, r.scales, r.zeros, bits, gs, sym)
    with torch.no_grad():  # the layer runs on the pruned values for the next layer's inputs
        linear.weight.copy_(torch.from_numpy(W))
    _count(name, linear.weight, summary)
    return q
