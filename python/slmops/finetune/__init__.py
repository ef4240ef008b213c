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
from .._lazy import lazy_getattr

_NAMES = {
    "ALL_LINEAR": "options",
    "METHODS": "options",
    "FinetuneOptions": "options",
    "LoRAOptions": "options",
    "QLoRAOptions": "options",
    "FinetuneResult": "train",
    "evaluation_loss": "train",
    "finetune": "train",
    "load_adapter": "adapter",
    "read_adapter_config": "adapter",
    "save_adapter": "adapter",
    "load_finetune_examples": "data",
    "split_examples": "data",
    "add_lora": "lora",
    "count_parameters": "lora",
    "find_targets": "lora",
    "linear_layers": "lora",
    "lora_layers": "lora",
    "merge_lora": "lora",
    "set_adapter": "lora",
    "quantize_base": "qlora",
}
__all__ = sorted(_NAMES)
__getattr__ = lazy_getattr(__name__, _NAMES)

# slmops.finetune was the function finetune until 0.2; calling the package still works, for one release.
callable_package(sys.modules[__name__], "finetune", "slmops.finetune_model")
