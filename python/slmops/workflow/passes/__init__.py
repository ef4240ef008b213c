"""The built-in passes; importing this package registers them."""

from . import distill, export, prune, quantize  # noqa: F401
