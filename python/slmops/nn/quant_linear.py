"""``QuantLinear``: a frozen quantized weight in front of our qmatmul kernels."""

from __future__ import annotations

from typing import Any, TypedDict

import torch
from torch import nn

from ..ops import FORMATS, QuantizedTensor, qmatmul, quantize
from ..ops.qmatmul import ACTIVATIONS

_PREFIX = "qweight_"


class _QuantMeta(TypedDict):
    """The format options of the weight (its extra state, with the shape and activation)."""

    format: str
    group_size: int
    symmetric: bool
    dtype: str


class _QuantLinearFunction(torch.autograd.Function):
    """y = x @ W.T + b on the kernels; gradients for x and b, none for the frozen W."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, bias: torch.Tensor | None, module: QuantLinear) -> torch.Tensor:
        ctx.module = module
        ctx.has_bias = bias is not None
        return qmatmul(x, module.qweight, bias=bias, activation=module.activation)

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            # dL/dx = dL/dy @ W: the weight is dequantized for this product only.
            w = ctx.module.qweight.dequantize(str(grad_y.dtype).removeprefix("torch."))
            grad_x = grad_y @ w
        if ctx.has_bias and ctx.needs_input_grad[1]:
            grad_bias = grad_y.reshape(-1, grad_y.shape[-1]).sum(0)
        return grad_x, grad_bias, None


class QuantLinear(nn.Module):
    """A linear layer whose weight is a :class:`QuantizedTensor` (frozen) and whose forward
    runs on slmops' qmatmul kernels (CPU); on another device it dequantizes and uses
    ``F.linear``. The bias stays a float parameter. The quantized buffers are in the
    ``state_dict`` (``qweight_data``, ``qweight_scales``, ...) with the format options in
    its extra state, so a ``QuantLinear`` built with the same options loads them back.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        format: str = "int4",
        group_size: int | None = None,
        symmetric: bool | None = None,
        double_quant: bool = False,
        activation: str = "float",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.activation = activation
        # A placeholder weight of the right layout; from_linear or load_state_dict fills it.
        placeholder = quantize(
            torch.zeros(out_features, in_features, dtype=dtype),
            format,
            group_size=group_size,
            symmetric=symmetric,
            double_quant=double_quant,
        )
        self._set_qweight(placeholder)
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype)) if bias else None

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, format: str = "int4", *, activation: str = "float", **quant_options: Any
    ) -> QuantLinear:
        """Quantizes ``linear.weight`` (round to nearest) with ``slmops.ops.quantize`` options."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"expected torch.nn.Linear, got {type(linear).__name__}")
        w = linear.weight.detach()
        if w.device.type != "cpu":
            w = w.cpu()
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.in_features, module.out_features = linear.in_features, linear.out_features
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        module.activation = activation
        module._set_qweight(quantize(w, format, **quant_options))
        module.bias = (
            None if linear.bias is None else nn.Parameter(linear.bias.detach().float().cpu().clone())
        )
        return module

    @classmethod
    def from_quantized(
        cls, qweight: QuantizedTensor, bias: torch.Tensor | None = None, *, activation: str = "float"
    ) -> QuantLinear:
        """Wraps an already quantized weight (e.g. read from a GPTQ checkpoint) as it is."""
        if not isinstance(qweight, QuantizedTensor):
            raise TypeError(f"expected a QuantizedTensor, got {type(qweight).__name__}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if bias is not None and tuple(bias.shape) != (qweight.shape[0],):
            raise ValueError(f"bias must have shape ({qweight.shape[0]},), got {tuple(bias.shape)}")
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.out_features, module.in_features = qweight.shape
        module.activation = activation
        if qweight.framework != "torch":
            from .._tensor import from_numpy

            qweight = QuantizedTensor(
                qweight.format,
                qweight.shape,
                {k: from_numpy(v, "torch") for k, v in qweight.tensors.items()},
                group_size=qweight.group_size,
                symmetric=qweight.symmetric,
                dtype=qweight.dtype,
            )
        module._set_qweight(qweight)
        module.bias = None if bias is None else nn.Parameter(bias.detach().float().cpu().clone())
        return module

    # -- the quantized weight --------------------------------------------------------
    def _set_qweight(self, q: QuantizedTensor) -> None:
        for name in [n for n in self._buffers if n.startswith(_PREFIX)]:
            del self._buffers[name]
        for name, t in q.tensors.items():
            self.register_buffer(_PREFIX + name, t)
        self._qmeta: _QuantMeta = {
            "format": q.format,
            "group_size": q.group_size,
            "symmetric": q.symmetric,
            "dtype": q.dtype,
        }
        self._qweight: QuantizedTensor | None = q

    @property
    def qweight(self) -> QuantizedTensor:
        """The weight over this module's buffers; rebuilt (and repacked) after they change."""
        if self._qweight is None:
            tensors = {n[len(_PREFIX) :]: t for n, t in self._buffers.items() if n.startswith(_PREFIX)}
            m = self._qmeta
            self._qweight = QuantizedTensor(
                m["format"],
                (self.out_features, self.in_features),
                tensors,
                group_size=m["group_size"],
                symmetric=m["symmetric"],
                dtype=m["dtype"],
            )
        return self._qweight

    def _weight_buffer(self, name: str) -> torch.Tensor:
        """The buffer ``qweight_<name>``; a KeyError if it is missing (or None)."""
        t = self._buffers.get(_PREFIX + name)
        if t is None:
            raise KeyError(f"QuantLinear has no buffer {_PREFIX + name!r}")
        return t

    def _apply(self, fn: Any, recurse: bool = True) -> QuantLinear:
        self._qweight = None  # buffers may have moved: the packed weight must not outlive them
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        self._qweight = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def get_extra_state(self) -> dict:
        return {"shape": [self.out_features, self.in_features], "activation": self.activation, **self._qmeta}

    def set_extra_state(self, state: dict) -> None:
        expected = {"shape": [self.out_features, self.in_features], **self._qmeta}
        got = {k: state.get(k) for k in expected}
        if got != expected:
            raise ValueError(
                f"QuantLinear state {got} does not match this module {expected}; build the module "
                "with the same format options before loading"
            )
        self.activation = state.get("activation", self.activation)
        self._qweight = None

    # -- forward ---------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        data = self._weight_buffer("data")
        if x.device.type == "cpu" and data.device.type == "cpu":
            return _QuantLinearFunction.apply(x, self.bias, self)
        w = self.qweight.dequantize(str(x.dtype).removeprefix("torch."))
        return nn.functional.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        q = self.qweight
        opts = f", group_size={q.group_size}" if FORMATS[q.format]["has_group_size"] else ""
        if FORMATS[q.format]["has_symmetric_option"]:
            opts += f", symmetric={q.symmetric}"
        bias = self.bias is not None
        head = f"in_features={self.in_features}, out_features={self.out_features}, bias={bias}"
        quant = f"format={q.format}{opts}, activation={self.activation}"
        return f"{head}, {quant}, bits_per_weight={q.bits_per_weight:.3f}, weight_bytes={q.nbytes}"
