"""The options of ``prune_model``, written once: the function checks its arguments with
them, the workflow's ``prune`` pass and the ``slmops prune`` flags are derived from them.
The calibration options are quantization's (``slmops.quantize.options``): every
calibrated algorithm reads the same windows by default."""

from __future__ import annotations

from pydantic import Field, model_validator

from .._options import choice
from ..quantize.options import DEFAULT_SKIP, CalibrationOptions, HessianOptions

METHODS = ("magnitude", "wanda", "sparsegpt")
# of configs and the CLI (data-free); prune_model(method=) keeps its published default, wanda
DEFAULT_METHOD = "magnitude"


def _nm_patterns() -> tuple[str, ...]:
    """The n:m layouts of the sparse kernels (the C++ table), without CSR (a storage, not a pattern)."""
    from .. import _C

    return tuple(p["name"] for p in _C.sparse_patterns() if p["m"])


PATTERNS = ("unstructured", *_nm_patterns())
JOINT_QUANTIZE_KEYS = ("bits", "group_size", "symmetric", "mse")  # SparseGPT's quantize= dict


def _value_types() -> tuple[str, ...]:
    from ..ops.sparse import VALUE_TYPES

    return VALUE_TYPES


def _activations() -> tuple[str, ...]:
    from ..ops.qmatmul import ACTIVATIONS

    return ACTIVATIONS


class PruneOptions(CalibrationOptions, HessianOptions):
    """What every pruning method takes; magnitude reads no calibration data and only
    SparseGPT reads ``damp`` and ``quantize``."""

    sparsity: float | dict[str, float] = Field(
        0.5, description="unstructured: share of each layer to zero (or fnmatch pattern -> share)"
    )
    pattern: choice(PATTERNS) = Field("unstructured", description="unstructured, or n:m")  # type: ignore[valid-type]
    skip: list[str] = Field(list(DEFAULT_SKIP), description="fnmatch patterns of layers kept dense")
    include: list[str] | None = Field(None, description="fnmatch patterns: only these layers")
    sparse: bool = Field(False, description="pruned layers as SparseLinear (sparse kernels)")
    sparse_values: choice(_value_types) = Field(  # type: ignore[valid-type]
        "float32", description="n:m values with sparse"
    )
    quantize: dict | None = Field(
        None, description="sparsegpt: also quantize the kept weights (bits, group_size, symmetric, mse)"
    )
    activation: choice(_activations) = Field(  # type: ignore[valid-type]
        "float", description="activation mode of the layers quantize= makes, or sparse= with int8/int4 values"
    )

    @model_validator(mode="after")
    def _consistent(self):
        if isinstance(self.sparsity, dict):
            if self.pattern != "unstructured":
                raise ValueError(
                    f"per-layer sparsity needs pattern='unstructured'; {self.pattern} fixes it at 50%"
                )
            for value in self.sparsity.values():
                _check_share(value)
        elif self.pattern == "unstructured":
            _check_share(self.sparsity)
        if self.sparse and self.quantize is not None:
            raise ValueError(
                "quantize= makes QuantLinear layers; for sparse int4 ones pass sparse_values='int4'"
            )
        if self.sparse and self.pattern == "unstructured" and self.sparse_values != "float32":
            raise ValueError(
                f"unstructured sparsity is stored as CSR with float32 values, got {self.sparse_values!r}"
            )
        quantized_sparse = self.sparse and self.sparse_values in ("int8", "int4")
        if self.activation != "float" and self.quantize is None and not quantized_sparse:
            raise ValueError(
                f"activation={self.activation!r} needs quantized layers: quantize= or sparse int8/int4 values"
            )
        if self.quantize is not None:
            unknown = set(self.quantize) - set(JOINT_QUANTIZE_KEYS)
            if unknown:
                raise ValueError(
                    f"unknown quantize options {sorted(unknown)}; give {', '.join(JOINT_QUANTIZE_KEYS)}"
                )
        return self

    def result_options(self) -> dict:
        """The options that can change the result (a workflow's cache key)."""
        out = self.model_dump()
        out.pop("memory_budget")  # a schedule: both give the same model
        if self.pattern != "unstructured":  # n:m fixes the share
            out.pop("sparsity")
        if not self.sparse:
            out.pop("sparse_values")
        if self.quantize is None:  # SparseGPT's joint quantization, off
            out.pop("quantize")
            if self.activation == "float":
                out.pop("activation")
        return out


def _check_share(value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {value}")
