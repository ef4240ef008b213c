"""The built-in passes; importing this package registers them."""

from . import distill, export, quantize  # noqa: F401
