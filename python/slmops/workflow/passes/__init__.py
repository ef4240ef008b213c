"""The built-in passes; importing this package registers them."""

from . import quantize  # noqa: F401
