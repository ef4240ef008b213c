"""``LoRALinear``: a frozen linear layer plus trainable low-rank adapters (LoRA, QLoRA).

``y = base(x) + scaling * B(A(dropout(x)))`` with ``A`` [r, in] and ``B`` [out, r] and
``scaling = alpha / r`` (``alpha / sqrt(r)`` with rsLoRA). The base is an ``nn.Linear`` or
a :class:`QuantLinear` (nf4 or int4: QLoRA), whose forward runs on the qmatmul kernels and
whose input gradient multiplies by the weight dequantized by our kernels, one layer at a
time. Names and initialization follow peft, so a module's state dict reads like peft's
(``base_layer.weight``, ``lora_A.<adapter>.weight``): ``A`` as ``nn.Linear`` does it
(Kaiming uniform) and ``B`` zero, so a fresh adapter changes nothing. Several adapters can
live on one base; ``set_adapter`` picks the one in use (or none).
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn

from .quant_linear import QuantLinear

INITS = (True, False, "gaussian")


class LoRALinear(nn.Module):
    def __init__(
        self,
        base: nn.Linear | QuantLinear,
        r: int = 8,
        alpha: float = 8.0,
        dropout: float = 0.0,
        *,
        use_rslora: bool = False,
        init: bool | str = True,
        adapter_name: str = "default",
    ) -> None:
        super().__init__()
        if isinstance(base, LoRALinear) or not isinstance(base, (nn.Linear, QuantLinear)):
            raise TypeError(f"LoRALinear wraps an nn.Linear or a QuantLinear, got {type(base).__name__}")
        self.base_layer = base
        for p in base.parameters():  # the base is frozen, its bias too (peft's bias="none")
            p.requires_grad_(False)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.use_rslora: dict[str, bool] = {}
        self.scaling: dict[str, float] = {}
        self.active_adapter: str | None = None
        self.add_adapter(adapter_name, r, alpha, dropout, use_rslora=use_rslora, init=init)
        self.train(base.training)  # an eval-mode model stays in eval mode (no dropout)

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    @property
    def adapters(self) -> list[str]:
        return list(self.lora_A.keys())

    def add_adapter(
        self,
        name: str,
        r: int = 8,
        alpha: float = 8.0,
        dropout: float = 0.0,
        *,
        use_rslora: bool = False,
        init: bool | str = True,
    ) -> None:
        """Adds adapter ``name`` (and makes it the active one)."""
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"adapter name must be a non-empty string without '.', got {name!r}")
        if name in self.lora_A:
            raise ValueError(f"this layer already has an adapter named {name!r}")
        if not isinstance(r, int) or r < 1:
            raise ValueError(f"rank r must be an integer >= 1, got {r!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        a = nn.Linear(self.in_features, r, bias=False)  # Kaiming uniform, as peft's init=True
        b = nn.Linear(r, self.out_features, bias=False)
        if init == "gaussian":
            nn.init.normal_(a.weight, std=1.0 / r)
        if init is not False:
            nn.init.zeros_(b.weight)
        self.lora_A[name], self.lora_B[name] = a, b
        self.lora_dropout[name] = (nn.Dropout(dropout) if dropout > 0 else nn.Identity()).train(self.training)
        self.r[name], self.lora_alpha[name], self.use_rslora[name] = r, float(alpha), bool(use_rslora)
        self.scaling[name] = alpha / math.sqrt(r) if use_rslora else alpha / r
        self.active_adapter = name

    def set_adapter(self, name: str | None) -> None:
        """Uses adapter ``name`` from now on; None runs the base alone."""
        if name is not None and name not in self.lora_A:
            raise KeyError(f"no adapter named {name!r}; this layer has {self.adapters}")
        self.active_adapter = name

    def delete_adapter(self, name: str) -> None:
        if name not in self.lora_A:
            raise KeyError(f"no adapter named {name!r}; this layer has {self.adapters}")
        for modules in (self.lora_A, self.lora_B, self.lora_dropout):
            del modules[name]
        for table in (self.r, self.lora_alpha, self.use_rslora, self.scaling):
            del table[name]
        if self.active_adapter == name:
            self.active_adapter = None

    def delta_weight(self, name: str | None = None) -> torch.Tensor:
        """``scaling * B @ A`` [out, in] of adapter ``name`` (default: the active one)."""
        name = self._name(name)
        # add_adapter makes A and B nn.Linear; ModuleDict's items are typed as plain Modules.
        a = cast(nn.Linear, self.lora_A[name]).weight
        b = cast(nn.Linear, self.lora_B[name]).weight
        return (b.float() @ a.float()) * self.scaling[name]

    def merged(self, name: str | None = None) -> nn.Linear:
        """A float ``nn.Linear`` computing base + adapter ``name``; a quantized base is
        dequantized first (merging into 4-bit codes would round the update away)."""
        name = self._name(name)
        base = self.base_layer
        if isinstance(base, QuantLinear):
            weight = base.qweight.dequantize("float32")
            bias = base.bias
        else:
            weight, bias = base.weight.detach().float(), base.bias
        out = nn.Linear(self.in_features, self.out_features, bias=bias is not None)
        with torch.no_grad():
            out.weight.copy_(weight + self.delta_weight(name))
            if bias is not None:
                out.bias.copy_(bias.detach().float())
        return out

    def _name(self, name: str | None) -> str:
        name = self.active_adapter if name is None else name
        if name is None or name not in self.lora_A:
            raise KeyError(f"no adapter named {name!r}; this layer has {self.adapters}")
        return name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        name = self.active_adapter
        if name is None:
            return y
        a = self.lora_A[name](self.lora_dropout[name](x))
        return y + self.lora_B[name](a) * self.scaling[name]

    def extra_repr(self) -> str:
        parts = [f"{n}: r={self.r[n]}, alpha={self.lora_alpha[n]:g}" for n in self.adapters]
        return f"adapters=[{'; '.join(parts)}], active={self.active_adapter!r}"
