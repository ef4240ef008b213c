"""The options of every quantization algorithm, written once: ``quantize_model`` checks its
arguments with them, the workflow's ``quantize`` pass and the ``slmops quantize`` flags are
derived from them.

``CalibrationOptions`` (and ``HessianOptions``) are shared with the calibrated pruning
methods (``slmops.prune``): every algorithm that reads activations takes the same number
of windows of the same length by default.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from .._options import Options, choice, one_of

MAX_GROUP_SIZE = 1 << 16  # larger groups than any layer's row: a typo, not a choice
DEFAULT_SKIP = ("lm_head", "*.lm_head")  # the output head stays float (embeddings are not linears)
GPTQ_BITS = (2, 3, 4, 8)  # 2-4 stored as int4, 8 as int8
DEFAULT_ALGORITHM = "rtn"


def _formats() -> list[str]:
    from ..ops import FORMATS

    return sorted(FORMATS)


def _activations() -> tuple[str, ...]:
    from ..ops.qmatmul import ACTIVATIONS

    return ACTIVATIONS


class CalibrationOptions(Options):
    """How much text the calibrated algorithms (GPTQ, AWQ, SmoothQuant, Wanda, SparseGPT) read."""

    n_samples: int = Field(128, ge=1, description="calibrated algorithms: token windows read")
    seq_len: int = Field(512, ge=1, description="calibrated algorithms: tokens per window")
    # SmolLM2, GPTQ 4-bit g128, 128 x 512 tokens, 2 threads: one pass 145 s at a peak of 2.9x
    # the float model's bytes, chunk by chunk 297 s at 2.1x (benchmarks/README.md).
    memory_budget: int | None = Field(
        None,
        ge=0,
        description="gptq, wanda, sparsegpt: bytes a decoder layer's activations for all samples may "
        "take to run it in one pass; above that, one pass per group of linears over one chunk of "
        "samples at a time (about 2x the time, less memory); default: a quarter of RAM, at most 8 GiB",
    )


class HessianOptions(Options):
    """The Hessian-based algorithms (GPTQ, SparseGPT)."""

    damp: float = Field(0.01, description="gptq, sparsegpt: Hessian dampening, a share of its mean diagonal")
    # A window's first token is where decoders park attention (the "attention sink"): every
    # later token attends to its key, but it is one row in seq_len of the Hessian, so GPTQ
    # moves error into its direction. SmolLM2, layer 15's k_proj, relative error on first
    # tokens: RTN 0.11, GPTQ 0.32, GPTQ with the first token counted 16 times 0.10 (others:
    # 0.032 -> 0.033); GPTQ 4-bit g128 perplexity +28.7% -> +13.8% (x1: +28.7%, x64:
    # +14.0%, x256: +15.2%; RTN +36.3%). docs/quantization.md has the study.
    sink_weight: float = Field(
        16.0, ge=1.0, description="gptq, sparsegpt: times each window's first token counts in the Hessian"
    )

    @model_validator(mode="after")
    def _damp(self):
        check_damp(self.damp)
        return self


def check_damp(damp: float) -> None:
    if not 0.0 <= damp < 1.0:
        raise ValueError(f"damp must be in [0, 1), got {damp}")


class WeightOptions(Options):
    """What every algorithm writes: the weight format, which layers, the matmul's activations."""

    algorithm: str = DEFAULT_ALGORITHM
    format: choice(_formats) = Field("int4", description="weight format")  # type: ignore[valid-type]
    group_size: int | None = Field(None, description="weights per scale (default: the format's)")
    symmetric: bool | None = Field(None, description="int4: False adds zero points (default: the format's)")
    double_quant: bool = Field(False, description="nf4: quantize the block scales too")
    activation: choice(_activations) = Field(  # type: ignore[valid-type]
        "float", description="activation mode of the quantized matmul"
    )
    skip: list[str] = Field(list(DEFAULT_SKIP), description="fnmatch patterns of layers kept float")
    include: list[str] | None = Field(None, description="fnmatch patterns: only these layers")

    @model_validator(mode="after")
    def _group_size(self):
        """A group size the format cannot take fails here, before any work: one row of a
        group's length goes through the kernels' own checks."""
        from ..ops import FORMATS, quantize

        g = self.group_size
        if not g or not FORMATS[self.format]["has_group_size"]:  # 0: per row, GPTQ's int8 choice
            return self
        if not 0 <= g <= MAX_GROUP_SIZE:
            raise ValueError(f"group_size must be in [0, {MAX_GROUP_SIZE}], got {g}")
        import numpy as np

        quantize(np.zeros((1, max(g, 256)), np.float32), self.format, group_size=g, symmetric=self.symmetric)
        return self

    def format_options(self) -> dict:
        """The options of ``slmops.ops.quantize`` given (the others: the format's defaults)."""
        out: dict = {k: getattr(self, k) for k in ("group_size", "symmetric") if getattr(self, k) is not None}
        if self.double_quant:
            out["double_quant"] = True
        return out

    def result_options(self) -> dict:
        """The options that can change the result (a workflow's cache key): those the format
        and the algorithm read."""
        from ..ops import FORMATS

        out = self.model_dump()
        info = FORMATS[self.format]
        if not info["has_group_size"]:
            out.pop("group_size")
        if not info["has_symmetric_option"]:
            out.pop("symmetric")
        if self.format != "nf4":
            out.pop("double_quant")
        out.pop("memory_budget", None)  # a schedule: both give the same model
        return out


class RTNOptions(WeightOptions):
    """Round to nearest: each weight to its nearest code, no data."""

    algorithm: Literal["rtn"] = "rtn"


class GPTQOptions(WeightOptions, CalibrationOptions, HessianOptions):
    """GPTQ: column by column, the error of each rounded weight goes to the columns not yet
    rounded, weighted by the calibration Hessian (``slmops.quantize.gptq``)."""

    algorithm: Literal["gptq"] = "gptq"
    bits: int | None = Field(None, description="gptq: 2, 3, 4 (stored as int4) or 8 (default: from format)")
    # On SmolLM2 (4-bit g128 sym, KJV calibration) act-order takes GPTQ from 0.38 to 0.26 of
    # RTN's perplexity increase on the KJV slice and from 0.97 to 0.73 on modern English; with
    # static groups it costs nothing at run time (docs/quantization.md).
    act_order: bool = Field(True, description="gptq: columns by decreasing Hessian diagonal (static groups)")
    mse: bool = Field(False, description="gptq: search each group's clipping range (best at 3 bits)")

    @model_validator(mode="after")
    def _bits(self):
        if self.bits is not None:
            one_of("bits", self.bits, GPTQ_BITS)
        return self


class AWQOptions(WeightOptions, CalibrationOptions):
    """AWQ: per-channel scales from the activations, folded into the previous module, and
    clipping, then round to nearest (``slmops.quantize.awq``)."""

    algorithm: Literal["awq"] = "awq"
    duo_scaling: bool = Field(
        True, description="awq: scales from activations and weights (off: the paper's activations only)"
    )
    # Each window's first token (the attention sink, see HessianOptions.sink_weight) is kept
    # apart from the sampled rows. SmolLM2-135M, AWQ 4-bit g128 sym, 64 windows: share of
    # RTN's perplexity increase 0.94 at 16, 0.81 at about 73 (what the row sample gave before,
    # by accident: 1 row in 8). docs/quantization.md has the study.
    awq_sink_weight: float = Field(
        64.0, ge=0.0, description="awq: times each window's first token counts in the scale and clip searches"
    )
    block_loss: bool = Field(
        False,
        description="awq: q/k/v and gate/up scales judged on the attention / MLP output (AutoAWQ) "
        "instead of the linears' own outputs",
    )
    # SmolLM2-135M, 4-bit g128 sym, 128 windows, share of RTN's perplexity increase (KJV slice /
    # modern English): q/k/v scaled 0.97 / 0.71, unscaled 0.69 / 0.74. The q/k/v scales fit
    # the linears' outputs but make v_proj's damage to attention 10x RTN's (docs/quantization.md).
    scale_qkv: bool = Field(
        True,
        description="awq: fold scales into q/k/v (from the input norm); off: q/k/v get clipping only",
    )


class SmoothQuantOptions(WeightOptions, CalibrationOptions):
    """SmoothQuant: W8A8, activation outliers moved into the weights (``slmops.quantize.smoothquant``)."""

    algorithm: Literal["smoothquant"] = "smoothquant"
    alpha: float = Field(0.5, description="smoothquant: migration strength, in [0, 1]")
    through_linears: bool = Field(
        True,
        description="smoothquant: also smooth the inputs another linear writes (down_proj through up_proj, "
        "o_proj through v_proj without GQA); off: only those after a norm, as the paper",
    )

    @model_validator(mode="after")
    def _alpha(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        return self


# algorithm -> its options; quantize_model's table of functions has the same keys
ALGORITHMS: dict[str, type[WeightOptions]] = {
    "rtn": RTNOptions,
    "gptq": GPTQOptions,
    "awq": AWQOptions,
    "smoothquant": SmoothQuantOptions,
}
QuantizeOptions = Annotated[
    RTNOptions | GPTQOptions | AWQOptions | SmoothQuantOptions, Field(discriminator="algorithm")
]


def quantize_options(algorithm: str = DEFAULT_ALGORITHM, **values) -> WeightOptions:
    """The options of ``algorithm`` from keyword values: checked, defaults filled in."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"method must be one of {tuple(ALGORITHMS)}, got {algorithm!r}")
    return ALGORITHMS[algorithm](**values)
