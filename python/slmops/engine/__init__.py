"""The native decode engine: slmops models generated from in C++ on our kernels.

    import slmops
    from slmops.engine import Engine, SamplingOptions

    model, tokenizer = slmops.zoo.load("smollm2-135m-instruct")
    slmops.quantize_model(model, "rtn", format="q4_0")     # optional: any slmops format
    engine = Engine((model, tokenizer), head_format="q8_0")
    print(engine.generate("The capital of France is", max_new_tokens=16).text)
    for piece in engine.stream(engine.chat_prompt([{"role": "user", "content": "Hi"}])):
        print(piece, end="")

Llama, Mistral (sliding window) and Qwen2 (q/k/v biases) models; every linear runs as the
model holds it (float, ``QuantLinear`` formats, ``SparseLinear``). Prompts of many
sequences and the next tokens of running ones go through each linear as one matrix
(continuous batching: :meth:`Engine.submit` / :meth:`Engine.step`); the KV cache is a pool
of fixed-size blocks whose size is ``kv_memory``.
"""

from .engine import DEFAULT_KV_MEMORY, CacheFullError, Engine, Generation, SamplingOptions
from .weights import ARCHITECTURES, ROPE_TYPES

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_KV_MEMORY",
    "ROPE_TYPES",
    "CacheFullError",
    "Engine",
    "Generation",
    "SamplingOptions",
]
