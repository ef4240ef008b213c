"""The KV cache's settings, light to import (the CLI's flags read them without torch)."""

DEFAULT_KV_MEMORY = 256 << 20  # bytes of KV cache: 11,600 tokens of SmolLM2-135M in fp16
KV_DTYPES = ("float16", "int8", "float32")  # the first is the default
DEFAULT_KV_DTYPE = KV_DTYPES[0]
