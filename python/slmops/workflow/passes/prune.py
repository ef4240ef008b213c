"""``type: prune``: zero a share of every linear layer's weights (but the lm_head) by
magnitude, or by Wanda or SparseGPT calibrated on a dataset of the run config
(``calibration: <data name>``; the reference corpus when absent); ``sparse: true`` stores
the pruned layers as ``SparseLinear`` (2:4/4:8 layouts, CSR for unstructured) so the
model runs on the sparse kernels."""

from __future__ import annotations

from typing import Any

from pydantic import field_validator

from ...ops.sparse import VALUE_TYPES
from ...prune.model import METHODS, PATTERNS, prune_model
from ..registry import Pass, PassContext, PassOptions, PassOutput, one_of, register_pass


class PruneOptions(PassOptions):
    method: str = "magnitude"
    sparsity: float | dict[str, float] = 0.5  # a share, or fnmatch pattern -> share per layer
    pattern: str = "unstructured"
    skip: list[str] = ["lm_head", "*.lm_head"]
    include: list[str] | None = None
    sparse: bool = False
    sparse_values: str = "float32"
    # the calibrated methods (wanda, sparsegpt)
    calibration: str | None = None  # a dataset name of the run config
    n_samples: int = 128
    seq_len: int = 512
    damp: float = 0.01  # sparsegpt

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        return one_of("method", v, METHODS)

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        return one_of("pattern", v, PATTERNS)

    @field_validator("sparse_values")
    @classmethod
    def _values(cls, v: str) -> str:
        return one_of("sparse_values", v, VALUE_TYPES)


@register_pass
class PrunePass(Pass):
    type = "prune"
    Options = PruneOptions

    def normalize(self, options: PruneOptions) -> dict[str, Any]:
        opts = options.model_dump()
        if options.method == "magnitude":  # the calibration options mean nothing to magnitude
            for k in ("calibration", "n_samples", "seq_len"):
                opts.pop(k)
        if options.method != "sparsegpt":
            opts.pop("damp")
        if options.pattern != "unstructured":  # n:m fixes the share
            opts.pop("sparsity")
        if not options.sparse:
            opts.pop("sparse_values")
        return opts

    def run(self, model: Any, tokenizer: Any, options: PruneOptions, ctx: PassContext) -> PassOutput:
        opts = self.normalize(options)
        extra: dict[str, Any] = {}
        if opts["method"] != "magnitude":
            name = opts["calibration"]
            extra = {
                "tokenizer": tokenizer,
                "calibration": [ctx.data(name)] if name else None,
                "n_samples": opts["n_samples"],
                "seq_len": opts["seq_len"],
            }
            if "damp" in opts:
                extra["damp"] = opts["damp"]
        summary = prune_model(
            model,
            opts["method"],
            sparsity=opts.get("sparsity", 0.5),
            pattern=opts["pattern"],
            skip=opts["skip"],
            include=opts["include"],
            sparse=opts["sparse"],
            sparse_values=opts.get("sparse_values", "float32"),
            progress=False,
            **extra,
        )
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
