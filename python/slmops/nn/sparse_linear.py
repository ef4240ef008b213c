"""``SparseLinear``: a frozen sparse weight in front of our spmm kernels."""

from __future__ import annotations

from typing import Any, TypedDict

import numpy as np
import torch
from torch import nn

from ..ops import SparseTensor, sparsify, spmm
from ..ops.sparse import check_activation

_PREFIX = "sparse_"


class _SparseMeta(TypedDict):
    """The layout options of the weight (its extra state, with the shape)."""

    pattern: str
    values: str
    group_size: int
    symmetric: bool


class _SparseLinearFunction(torch.autograd.Function):
    """y = x @ W.T + b on the sparse kernels; gradients for x and b, none for the frozen W."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, bias: torch.Tensor | None, module: SparseLinear) -> torch.Tensor:
        ctx.module = module
        ctx.has_bias = bias is not None
        return spmm(x, module.sparse_weight, bias=bias, activation=module.activation)

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            # dL/dx = dL/dy @ W: the weight is made dense for this product only.
            w = torch.from_numpy(ctx.module.sparse_weight.to_dense()).to(grad_y.dtype)
            grad_x = grad_y @ w
        if ctx.has_bias and ctx.needs_input_grad[1]:
            grad_bias = grad_y.reshape(-1, grad_y.shape[-1]).sum(0)
        return grad_x, grad_bias, None


class SparseLinear(nn.Module):
    """A linear layer whose weight is a :class:`SparseTensor` (frozen: 2:4, 4:8 or CSR)
    and whose forward runs on slmops' spmm kernels (CPU); on another device it uses the
    dense weight with ``F.linear``. The bias stays a float parameter. The sparse buffers
    are in the ``state_dict`` (``sparse_values``, ``sparse_indices``, ...) with the layout
    options in its extra state, so a ``SparseLinear`` of the same pattern loads them back.

    ``activation="int8"`` (int8/int4 values): the forward quantizes its input to int8 in
    blocks of 32 first (``spmm(..., activation="int8")``: integer dot products for 2:4 int4).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        pattern: str = "2:4",
        values: str = "float32",
        group_size: int | None = None,
        symmetric: bool = True,
        activation: str = "float",
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        # A placeholder of the right layout (all zeros); from_linear or load_state_dict fills it.
        self._set_weight(
            sparsify(
                np.zeros((out_features, in_features), np.float32),
                pattern,
                values=values,
                group_size=group_size,
                symmetric=symmetric,
            )
        )
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.activation = check_activation(activation, values, pattern)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        pattern: str = "2:4",
        *,
        values: str = "float32",
        group_size: int | None = None,
        symmetric: bool = True,
        prune: bool = False,
        activation: str = "float",
    ) -> SparseLinear:
        """Stores ``linear.weight`` sparse (``slmops.ops.sparsify`` options): its zeros must
        already follow an n:m ``pattern`` (as ``prune_model`` leaves them) unless
        ``prune=True``; ``'csr'`` keeps every nonzero."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"expected torch.nn.Linear, got {type(linear).__name__}")
        sw = sparsify(
            linear.weight.detach().cpu(),
            pattern,
            values=values,
            group_size=group_size,
            symmetric=symmetric,
            prune=prune,
        )
        return cls.from_sparse(sw, linear.bias, activation=activation)

    @classmethod
    def from_sparse(
        cls, sw: SparseTensor, bias: torch.Tensor | None = None, *, activation: str = "float"
    ) -> SparseLinear:
        """Wraps an already sparse weight as it is."""
        if not isinstance(sw, SparseTensor):
            raise TypeError(f"expected a SparseTensor, got {type(sw).__name__}")
        if bias is not None and tuple(bias.shape) != (sw.shape[0],):
            raise ValueError(f"bias must have shape ({sw.shape[0]},), got {tuple(bias.shape)}")
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.out_features, module.in_features = sw.shape
        module._set_weight(sw)
        module.bias = None if bias is None else nn.Parameter(bias.detach().float().cpu().clone())
        module.activation = check_activation(activation, sw.values, sw.pattern)
        return module

    # -- the sparse weight -------------------------------------------------------------
    def _set_weight(self, sw: SparseTensor) -> None:
        for name in [n for n in self._buffers if n.startswith(_PREFIX)]:
            del self._buffers[name]
        for name, t in sw.tensors.items():  # torch views of the same memory
            self.register_buffer(_PREFIX + name, torch.as_tensor(t) if isinstance(t, np.ndarray) else t)
        self._meta: _SparseMeta = {
            "pattern": sw.pattern,
            "values": sw.values,
            "group_size": sw.group_size,
            "symmetric": sw.symmetric,
        }
        self._sparse: SparseTensor | None = sw

    @property
    def sparse_weight(self) -> SparseTensor:
        """The weight over this module's buffers; rebuilt after they change."""
        if self._sparse is None:
            tensors = {n[len(_PREFIX) :]: t for n, t in self._buffers.items() if n.startswith(_PREFIX)}
            self._sparse = SparseTensor(
                self._meta["pattern"], (self.out_features, self.in_features), tensors,
                values=self._meta["values"], group_size=self._meta["group_size"],
                symmetric=self._meta["symmetric"],
            )  # fmt: skip
        return self._sparse

    def _weight_buffer(self, name: str) -> torch.Tensor:
        """The buffer ``sparse_<name>``; a KeyError if it is missing (or None)."""
        t = self._buffers.get(_PREFIX + name)
        if t is None:
            raise KeyError(f"SparseLinear has no buffer {_PREFIX + name!r}")
        return t

    def _apply(self, fn: Any, recurse: bool = True) -> SparseLinear:
        self._sparse = None  # buffers may have moved: the kernels' view must not outlive them
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        # A CSR weight's buffers take the incoming number of nonzeros.
        for name in [n for n in self._buffers if n.startswith(_PREFIX)]:
            incoming = state_dict.get(prefix + name)
            if incoming is not None and incoming.shape != self._weight_buffer(name[len(_PREFIX) :]).shape:
                self._buffers[name] = torch.empty_like(incoming)
        self._sparse = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def get_extra_state(self) -> dict:
        return {"shape": [self.out_features, self.in_features], **self._meta}

    def set_extra_state(self, state: dict) -> None:
        expected = {"shape": [self.out_features, self.in_features], **self._meta}
        got = {k: state.get(k) for k in expected}
        if got != expected:
            raise ValueError(
                f"SparseLinear state {got} does not match this module {expected}; build the module "
                "with the same pattern and value options before loading"
            )
        self._sparse = None

    # -- forward ---------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and self._weight_buffer("values").device.type == "cpu":
            return _SparseLinearFunction.apply(x, self.bias, self)
        w = torch.from_numpy(self.sparse_weight.to_dense()).to(device=x.device, dtype=x.dtype)
        return nn.functional.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        sw = self.sparse_weight
        quant = f", group_size={sw.group_size}" if sw.values in ("int8", "int4") else ""
        bias = self.bias is not None
        head = f"in_features={self.in_features}, out_features={self.out_features}, bias={bias}"
        layout = f"pattern={sw.pattern}, values={sw.values}{quant}"
        if self.activation != "float":
            layout += f", activation={self.activation}"
        return f"{head}, {layout}, density={sw.density:.3f}, bytes={sw.nbytes}"
