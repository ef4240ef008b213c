"""The built-in passes; importing this package registers them."""

from . import export, quantize  # noqa: F401
