"""``type: quantize``: every linear layer (but the lm_head) to a weight format, by round to
nearest or, with ``algorithm: gptq|awq|smoothquant``, calibrated on a dataset of the run
config (``calibration: <data name>``; the reference corpus when absent). The options are
those of ``slmops.quantize.options``, side by side (a search may span algorithms); each
candidate uses those of its algorithm."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from ..._options import choice, pick, side_by_side
from ...quantize.model import quantize_model
from ...quantize.options import ALGORITHMS, DEFAULT_ALGORITHM, CalibrationOptions, WeightOptions
from ..registry import Pass, PassContext, PassOptions, PassOutput, register_pass


class QuantizeOptions(
    side_by_side(
        "QuantizeOptionsFields",
        list(ALGORITHMS.values()),
        PassOptions,
        algorithm=(choice(ALGORITHMS), Field(DEFAULT_ALGORITHM, description="rtn, gptq, awq or smoothquant")),
        calibration=(str | None, Field(None, description="calibrated: a dataset of the run config")),
    )
):
    @model_validator(mode="after")
    def _algorithm_options(self) -> QuantizeOptions:
        """The checks of the chosen algorithm's own model, when the config is read."""
        self.selected()
        return self

    def selected(self) -> WeightOptions:
        """The chosen algorithm's options (the others are left out)."""
        return pick(ALGORITHMS[self.algorithm], self.model_dump())


@register_pass
class QuantizePass(Pass):
    type = "quantize"
    Options = QuantizeOptions

    def normalize(self, options: QuantizeOptions) -> dict[str, Any]:
        opts = options.selected()
        out = opts.result_options()
        if isinstance(opts, CalibrationOptions):
            out["calibration"] = options.calibration
        return out

    def run(self, model: Any, tokenizer: Any, options: QuantizeOptions, ctx: PassContext) -> PassOutput:
        opts = self.normalize(options)  # without the options the format does not take
        name = opts.pop("calibration", None)
        summary = quantize_model(
            model, opts.pop("algorithm"), tokenizer=tokenizer, calibration=[ctx.data(name)] if name else None,
            progress=False, **opts,
        )  # fmt: skip
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
