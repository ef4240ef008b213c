"""``type: prune``: zero a share of every linear layer's weights (but the lm_head) by
magnitude, or by Wanda or SparseGPT calibrated on a dataset of the run config
(``calibration: <data name>``; the reference corpus when absent); ``sparse: true`` stores
the pruned layers as ``SparseLinear`` (2:4/4:8 layouts, CSR for unstructured) so the
model runs on the sparse kernels."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from ..._options import choice, pick, side_by_side
from ...prune.model import prune_model
from ...prune.options import DEFAULT_METHOD, METHODS, PruneOptions
from ..registry import Pass, PassContext, PassOptions, PassOutput, register_pass


class PrunePassOptions(
    side_by_side(
        "PrunePassOptionsFields",
        [PruneOptions],
        PassOptions,
        method=(choice(METHODS), Field(DEFAULT_METHOD, description="magnitude, wanda or sparsegpt")),
        calibration=(str | None, Field(None, description="calibrated: a dataset of the run config")),
    )
):
    @model_validator(mode="after")
    def _prune_options(self) -> PrunePassOptions:
        """The checks of ``PruneOptions`` across fields, when the config is read."""
        self.selected()
        return self

    def selected(self) -> PruneOptions:
        return pick(PruneOptions, self.model_dump())


@register_pass
class PrunePass(Pass):
    type = "prune"
    Options = PrunePassOptions

    def normalize(self, options: PrunePassOptions) -> dict[str, Any]:
        opts = options.selected()
        out = {"method": options.method, **opts.result_options()}
        if options.method == "magnitude":  # the calibration options mean nothing to magnitude
            for k in ("n_samples", "seq_len"):
                out.pop(k)
        else:
            out["calibration"] = options.calibration
        if options.method != "sparsegpt":
            out.pop("damp")
        return out

    def run(self, model: Any, tokenizer: Any, options: PrunePassOptions, ctx: PassContext) -> PassOutput:
        name = options.calibration if options.method != "magnitude" else None
        summary = prune_model(
            model, options.method, tokenizer=tokenizer, calibration=[ctx.data(name)] if name else None,
            progress=False, **options.selected().model_dump(),
        )  # fmt: skip
        ctx.log.info("%s", summary)
        info = {
            "summary": str(summary),
            "layers_pruned": len(summary.pruned),
            "layers_kept": summary.skipped,
            "zeros": summary.zeros,
            "weights": summary.total,
            "sparsity": round(summary.achieved, 4),
            "seconds": round(summary.seconds, 2),
        }
        if summary.sparse_format:
            info |= {"sparse_format": summary.sparse_format, "bytes_dense": summary.bytes_dense,
                     "bytes_sparse": summary.bytes_sparse}  # fmt: skip
        return PassOutput(model, tokenizer, info=info)
