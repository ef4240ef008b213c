"""The built-in passes; importing this package registers them."""

from . import distill, export, finetune, prune, quantize  # noqa: F401
