"""The native decode engine: slmops models generated from in C++ on our kernels.

    import slmops
    from slmops.engine import Engine, SamplingOptions

    model, tokenizer = slmops.zoo.load("smollm2-135m-instruct")
    slmops.quantize_model(model, "rtn", format="q4_0", activation="int8")  # optional: any format
    engine = Engine((model, tokenizer), head_format="q4_0")
    print(engine.generate("The capital of France is", max_new_tokens=16).text)
    for piece in engine.stream(engine.chat_prompt([{"role": "user", "content": "Hi"}])):
        print(piece, end="")

Llama, Mistral (sliding window), Qwen2 (q/k/v biases) and Phi-3 (fused projections) models;
every linear runs as the model holds it (float, ``QuantLinear`` formats, ``SparseLinear``). Prompts of many
sequences and the next tokens of running ones go through each linear as one matrix
(continuous batching: :meth:`Engine.submit` / :meth:`Engine.step`); the KV cache is a pool
of fixed-size blocks whose size is ``kv_memory``. Names load on first use (the sampling
options without torch).
"""

from .._lazy import lazy_getattr

__getattr__ = lazy_getattr(
    __name__,
    {
        "ARCHITECTURES": "weights",
        "ROPE_TYPES": "weights",
        "DEFAULT_KV_DTYPE": "cache",
        "DEFAULT_KV_MEMORY": "cache",
        "KV_DTYPES": "cache",
        "CacheFullError": "engine",
        "Engine": "engine",
        "Generation": "engine",
        "Request": "engine",
        "TokenLogprob": "engine",
        "SamplingOptions": "sampling",
        "StopStrings": "text",
        "TextDecoder": "text",
    },
)

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_KV_DTYPE",
    "DEFAULT_KV_MEMORY",
    "KV_DTYPES",
    "ROPE_TYPES",
    "CacheFullError",
    "Engine",
    "Generation",
    "Request",
    "SamplingOptions",
    "StopStrings",
    "TextDecoder",
    "TokenLogprob",
]
