"""Layer 4: fine-tuning with LoRA and QLoRA on slmops kernels, adapters in the peft format.

    result = slmops.finetune_model("kjv-teacher", data="train.jsonl", out_dir="out", method="qlora",
                                   lora={"r": 16, "alpha": 32}, training={"steps": 200})
    model = result.model                     # the base with the adapter active
    load_adapter(model, "other-adapter", "b"); set_adapter(model, "b")
    merged = merge_lora(model)               # a float model; quantize_model it again if wanted

The adapter folder (``out/adapter``) loads with ``peft.PeftModel.from_pretrained``.
"""

from __future__ import annotations

import sys

from .._deprecation import callable_package
from .adapter import load_adapter, read_adapter_config, save_adapter
from .data import load_finetune_examples, split_examples
from .lora import (
    add_lora,
    count_parameters,
    find_targets,
    linear_layers,
    lora_layers,
    merge_lora,
    set_adapter,
)
from .options import ALL_LINEAR, METHODS, FinetuneOptions, LoRAOptions, QLoRAOptions
from .qlora import quantize_base
from .train import FinetuneResult, evaluation_loss, finetune

__all__ = [
    "ALL_LINEAR", "METHODS", "FinetuneOptions", "FinetuneResult", "LoRAOptions", "QLoRAOptions", "add_lora",
    "count_parameters", "evaluation_loss", "find_targets", "finetune", "linear_layers", "load_adapter",
    "load_finetune_examples", "lora_layers", "merge_lora", "quantize_base", "read_adapter_config",
    "save_adapter", "set_adapter", "split_examples",
]  # fmt: skip

# slmops.finetune was the function finetune until 0.2; calling the package still works, for one release.
callable_package(sys.modules[__name__], "finetune", "slmops.finetune_model")
