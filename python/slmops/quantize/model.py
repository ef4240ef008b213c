"""``quantize_model``: replace the linear layers of a torch model by ``QuantLinear``, with the
algorithm whose options model (``slmops.quantize.options``) checks the arguments."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..nn import QuantLinear
from .awq import awq_quantize_model
from .gptq_model import gptq_quantize_model
from .linears import QuantizationSummary, replace_linear, select_linears
from .options import ALGORITHMS, DEFAULT_ALGORITHM, WeightOptions, quantize_options
from .smoothquant import smoothquant_model

METHODS = tuple(ALGORITHMS)


def rtn_quantize_model(
    model: nn.Module, targets: list[str], summary: QuantizationSummary, options: WeightOptions, **_: Any
) -> QuantizationSummary:
    """Round to nearest (reads no calibration data)."""
    for name in targets:
        linear = model.get_submodule(name)
        try:
            q = QuantLinear.from_linear(
                linear, options.format, activation=options.activation, **options.format_options()
            )
        except ValueError as e:  # shapes the format cannot take
            summary.skipped[name] = str(e)
            continue
        replace_linear(model, name, q, summary)
    return summary


# algorithm -> the function that runs it on that algorithm's options (options.ALGORITHMS)
QUANTIZERS = {
    "rtn": rtn_quantize_model,
    "gptq": gptq_quantize_model,
    "awq": awq_quantize_model,
    "smoothquant": smoothquant_model,
}
assert QUANTIZERS.keys() == ALGORITHMS.keys(), "every algorithm needs its options and its function"


def quantize_model(
    model: nn.Module,
    method: str = DEFAULT_ALGORITHM,
    *,
    tokenizer: Any = None,
    calibration: Any = None,
    progress: bool = True,
    **options: Any,
) -> QuantizationSummary:
    """Replaces, in place, every ``nn.Linear`` of ``model`` by a ``QuantLinear``.

    ``options`` are the fields of the method's model in ``slmops.quantize.options``, whose
    defaults apply; an option the method does not take is an error.

    ``method``: 'rtn' (round to nearest), 'gptq' (calibrated, see ``slmops.quantize.gptq``)
    or 'awq' (activation-aware scales and clipping, then RTN; ``slmops.quantize.awq``;
    int4 defaults to group 128 with zero points, the paper's setting; option
    ``duo_scaling``, AutoAWQ's scales from activations and weights) or 'smoothquant'
    (format 'int8' with int8 per-token activations, option ``alpha``;
    ``slmops.quantize.smoothquant``). ``format``, ``group_size``, ``symmetric`` and
    ``double_quant`` as for ``slmops.ops.quantize``.
    ``skip`` and ``include`` are fnmatch patterns on module names
    (``model.layers.0.mlp.down_proj``); by default the ``lm_head`` stays float (embeddings
    are not linear layers). A layer whose shape the format cannot take (e.g. in_features
    not a multiple of 256 for q4_k) is kept float and reported in the summary's
    ``skipped``, never silently dropped.

    GPTQ options: ``bits`` (2, 3, 4 stored as int4; 8 as int8; default from ``format``),
    ``group_size`` (default 128; 0 = per row, int8 only), ``symmetric``, ``act_order``,
    ``damp``, ``mse`` (search each group's clipping range; recommended, most at 3 bits).
    The calibrated methods read ``calibration`` (None = the reference corpus, a .txt/.jsonl
    path or a list of texts) tokenized with ``tokenizer`` into ``n_samples`` windows of
    ``seq_len`` tokens (or ``calibration`` as a LongTensor [n, seq_len] of token ids).
    """
    from ..ops import FORMATS

    format = options.get("format", WeightOptions.model_fields["format"].default)
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected one of {sorted(FORMATS)}")
    opts = quantize_options(method, **options)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    summary = QuantizationSummary(format=opts.format)
    targets = select_linears(model, opts.skip, opts.include, summary.skipped)
    summary = QUANTIZERS[method](
        model, targets, summary, opts, tokenizer=tokenizer, calibration=calibration, progress=progress
    )
    if targets and not summary.replaced:  # options no layer can take: an error, not a float model
        reasons = sorted({summary.skipped[t] for t in targets if t in summary.skipped})
        raise ValueError(f"no layer could be quantized to {opts.format!r}: {'; '.join(reasons[:3])}")
    return summary
