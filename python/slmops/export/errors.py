"""The error an exporter raises for a quantization format its target has no type for."""


class UnsupportedFormatError(ValueError):
    """The model holds layers in a format the export target cannot store exactly (int4 with
    groups of 128 in GGUF, whose blocks are 32 or 256 wide). A workflow's export pass may
    skip such a model (``skip_unsupported_formats``) rather than fail its candidate."""
