"""``type: quantize``: every linear layer (but the lm_head) to a weight format, by round to
nearest or, with ``algorithm: gptq|awq|smoothquant``, calibrated on a dataset of the run
config (``calibration: <data name>``; the reference corpus when absent)."""

from __future__ import annotations

from typing import Any

from pydantic import field_validator, model_validator

from ...ops import FORMATS
from ...ops.qmatmul import ACTIVATIONS
from ...quantize.model import METHODS, quantize_model
from ..registry import Pass, PassContext, PassOptions, PassOutput, one_of, register_pass

CALIBRATION = ("calibration", "n_samples", "seq_len")
MAX_GROUP_SIZE = 1 << 16  # larger groups than any layer's row: a typo, not a choice
GPTQ_ONLY = ("bits", "act_order", "damp", "mse")
AWQ_ONLY = ("duo_scaling",)


class QuantizeOptions(PassOptions):
    algorithm: str = "rtn"
    format: str = "int4"
    group_size: int | None = None
    symmetric: bool | None = None
    double_quant: bool = False
    activation: str = "float"
    skip: list[str] = ["lm_head", "*.lm_head"]
    include: list[str] | None = None
    # the calibrated algorithms (all but rtn)
    calibration: str | None = None  # a dataset name of the run config
    n_samples: int = 128
    seq_len: int = 512
    # gptq only
    bits: int | None = None
    act_order: bool = False
    damp: float = 0.01
    mse: bool = False  # search each group's clipping range (see slmops.quantize.gptq)
    # awq only
    duo_scaling: bool = True  # s from activations and weights (False: the paper's activations only)
    # smoothquant only
    alpha: float = 0.5

    # Checked against the lists the lower layers own, so a new format or algorithm is
    # accepted here the day it lands.
    @field_validator("algorithm")
    @classmethod
    def _algorithm(cls, v: str) -> str:
        return one_of("algorithm", v, METHODS)

    @field_validator("format")
    @classmethod
    def _format(cls, v: str) -> str:
        return one_of("format", v, tuple(FORMATS))

    @field_validator("activation")
    @classmethod
    def _activation(cls, v: str) -> str:
        return one_of("activation", v, ACTIVATIONS)

    @model_validator(mode="after")
    def _group_size(self) -> QuantizeOptions:
        """A group size the format cannot take fails here, before any work: one row of a
        group's length goes through the kernels' own checks."""
        import numpy as np

        from ...ops import quantize

        g = self.group_size
        if not g or not FORMATS[self.format]["has_group_size"]:  # 0: per row, GPTQ's int8 choice
            return self
        if not 0 <= g <= MAX_GROUP_SIZE:
            raise ValueError(f"group_size must be in [0, {MAX_GROUP_SIZE}], got {g}")
        quantize(np.zeros((1, max(g, 256)), np.float32), self.format, group_size=g, symmetric=self.symmetric)
        return self


@register_pass
class QuantizePass(Pass):
    type = "quantize"
    Options = QuantizeOptions

    def normalize(self, options: QuantizeOptions) -> dict[str, Any]:
        opts = options.model_dump()
        info = FORMATS[options.format]
        if not info["has_group_size"]:
            opts.pop("group_size")
        if not info["has_symmetric_option"]:
            opts.pop("symmetric")
        if options.format != "nf4":
            opts.pop("double_quant")
        unused = set(GPTQ_ONLY) if options.algorithm != "gptq" else set()
        if options.algorithm != "awq":
            unused |= set(AWQ_ONLY)
        if options.algorithm != "smoothquant":
            unused.add("alpha")
        if options.algorithm == "rtn":  # the calibration options mean nothing to RTN
            unused |= set(CALIBRATION)
        for k in unused:
            opts.pop(k)
        return opts

    def run(self, model: Any, tokenizer: Any, options: QuantizeOptions, ctx: PassContext) -> PassOutput:
        opts = self.normalize(options)
        quant_options = {
            k: opts[k] for k in ("group_size", "symmetric", "double_quant") if opts.get(k) is not None
        }
        if opts["algorithm"] != "rtn":
            name = opts["calibration"]
            quant_options.update(
                tokenizer=tokenizer,
                calibration=[ctx.data(name)] if name else None,
                progress=False,
                **{k: opts[k] for k in (*GPTQ_ONLY, *AWQ_ONLY, "alpha", "n_samples", "seq_len") if k in opts},
            )
        summary = quantize_model(
            model,
            opts["algorithm"],
            format=opts["format"],
            skip=opts["skip"],
            include=opts["include"],
            activation=opts["activation"],
            **quant_options,
        )
        ctx.log.info("%s", summary)
        info = {
            "summary": str(summary),
            "layers_quantized": len(summary.replaced),
            "layers_kept": summary.skipped,
            "bytes_before": summary.bytes_before,
            "bytes_after": summary.bytes_after,
            "seconds": round(summary.seconds, 2),
        }
        return PassOutput(model, tokenizer, info=info)
