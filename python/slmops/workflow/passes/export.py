"""``type: export``: writes the model for a runtime (``slmops.export_model``); the model passes on
unchanged, the files are the pass's artifacts. With ``skip_unsupported_formats``, a model
quantized to a format the target has no type for (int4 g128 in GGUF) passes on without
files and with the reason in the pass's info, so a search mixing formats keeps those
candidates (exported to the targets that hold them)."""

from __future__ import annotations

from typing import Any

from pydantic import field_validator

from ...export import TARGETS, UnsupportedFormatError
from ...export import export as export_model
from ..registry import Pass, PassContext, PassOptions, PassOutput, one_of, register_pass


class ExportOptions(PassOptions):
    target: str = "gguf"
    tensor_types: dict[str, str] | None = None  # gguf: fnmatch pattern -> type, for float tensors
    default_type: str | None = None  # gguf: type of the float matrices no pattern names
    accuracy_level: int | None = None  # onnx-genai: MatMulNBits accuracy level (default 4)
    lm_head: str | None = None  # onnx-genai: float, int8 (default) or int4, quantized at export
    embedding: str | None = None  # onnx-genai: float, int8 (default) or int4, quantized at export
    fuse_projections: bool | None = None  # onnx-genai: q/k/v and gate/up as one node each (default)
    name: str | None = None  # gguf and onnx-genai: the model's name in the runtime
    scale_dtype: str | None = None  # hf, quantized models (GPTQ layout): float16 or float32
    skip_unsupported_formats: bool = False  # a format the target cannot hold: no files, not a failure

    @field_validator("target")
    @classmethod
    def _target(cls, v: str) -> str:
        return one_of("target", v, TARGETS)


@register_pass
class ExportPass(Pass):
    type = "export"
    Options = ExportOptions

    def normalize(self, options: ExportOptions) -> dict[str, Any]:
        return options.model_dump(exclude_none=True)

    def run(self, model: Any, tokenizer: Any, options: ExportOptions, ctx: PassContext) -> PassOutput:
        opts = self.normalize(options)
        target, skip = opts.pop("target"), opts.pop("skip_unsupported_formats")
        try:
            manifest = export_model(model, target, ctx.artifacts_dir / target, tokenizer=tokenizer, **opts)
        except UnsupportedFormatError as e:
            if not skip:
                raise
            ctx.log.info("export %s skipped: %s", target, e)
            return PassOutput(model, tokenizer, info={"target": target, "skipped": str(e)})
        files = {f["path"]: f["bytes"] for f in manifest["files"]}
        ctx.log.info("exported %s: %s", target, files)
        return PassOutput(
            model, tokenizer, info={"target": target, "files": files}, artifacts={target: target}
        )
