"""The benchmarks an installed slmops carries (``slmops bench NAME``): ``quant`` (quantize
and dequantize against numpy), ``qmatmul`` (quantized matmul against fp32 torch and the
machine's read bandwidth), ``quality`` (the reference teacher under each RTN format),
``export`` (the exported teacher in ONNX Runtime GenAI), ``gptq`` (GPTQ against a PyTorch
GPTQ), ``compress`` (the calibrated algorithms' quality table) and ``kd`` (the
distillation losses against PyTorch eager, time and peak memory), ``distill`` (a student
distilled from the reference teacher against the same student trained on the text alone),
``sparse`` (2:4, 4:8 and CSR matmul against the dense products they replace), ``finetune``
(a LoRA step against peft + transformers, QLoRA against LoRA, quality before and after),
``cuda`` (the GPU kernels against the copy bandwidth, cuBLAS and PyTorch eager; needs a GPU),
``engine`` (the native decode engine against llama.cpp on the same weights), ``serve`` (slmops
serve under 1-32 streaming clients and a mixed load test, against the engine offline).
Every speed figure is a ratio measured side by side in one run; see benchmarks/README.md."""

BENCHMARKS = (
    "quant", "qmatmul", "quality", "export", "gptq", "compress", "kd", "distill", "sparse", "finetune",
    "cuda", "engine", "serve",
)  # fmt: skip


def write_report(result: dict, text: str, json_path: object = None, markdown_path: object = None) -> None:
    """Prints a benchmark's markdown and writes it and its JSON result where asked (atomically)."""
    print(text)
    if json_path:
        from .._io import write_json_atomic

        write_json_atomic(result, json_path)
    if markdown_path:
        from .._io import write_atomic

        write_atomic(markdown_path, text)
