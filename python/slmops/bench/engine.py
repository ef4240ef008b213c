"""The native engine against llama.cpp on the same weights, side by side.

For each format the float model is quantized by RTN (int4 g32/g128, q4_0, q8_0, nf4 with
int8 activations, the integer path llama.cpp also takes; ternary: BitNet's {-1, 0, 1} x
absmean, a speed row only, as RTN ruins a model not trained for it; 2:4 = magnitude 2:4
pruning with int4 values) and run by ``slmops.engine.Engine``; the output head (tied to the embedding
in SmolLM2) is stored in the row's format where it is a GGUF block format or f32, else
q8_0. Columns, each the median of ``--rounds`` interleaved rounds: decode tokens/s at
batch 1 (a 128-token prompt, then 128 greedy tokens through ``Engine.generate``), prefill
tokens/s (a 512-token prompt), aggregate decode tokens/s of 8 and 32 sequences decoding
together (128-token prompts, 128 new tokens each; prefill not counted). With
``--llama-bench`` (a llama-bench binary) or ``--with-llama-cpp`` (builds one into the
cache from the llama-cpp-python sdist on PyPI), the q4_0, q8_0 and f32 rows also run
llama.cpp's ``llama-bench`` on GGUF files slmops exported from the same quantized
checkpoint (``-p 512``, ``-n 128 -d 128``: decode after a 128-token context), in the same
rounds, and the ratios ours / llama.cpp's are reported; ``llama-batched-bench`` beside
that binary (once per row, after the rounds) gives llama.cpp's batch 8 and 32 decode. The
q4_0 row is also timed through transformers with slmops' QuantLinear layers (the path
before the engine), and the int4 row (2 threads) through onnxruntime-genai on slmops'
onnx-genai export of the same weights.

    slmops bench engine                                  # SmolLM2-135M, every format, 2 threads
    slmops bench engine --formats q4_0,f32 --threads 1,2 --llama-bench /path/to/llama-bench
    slmops bench engine --model kjv-teacher --json engine.json --markdown engine.md
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import slmops

from ..engine.cache import DEFAULT_KV_DTYPE, KV_DTYPES
from . import write_report

FORMATS = ("f32", "q8_0", "q4_0", "int4", "int4-g128", "nf4", "ternary", "2:4-int4")
# Rows whose GGUF twin llama.cpp runs: our format -> the GGUF type of every tensor.
LLAMA_CPP_TYPES = {"f32": "f32", "q8_0": "q8_0", "q4_0": "q4_0"}
DECODE_PROMPT, DECODE_NEW, PREFILL_PROMPT = 128, 128, 512
BATCHES = (8, 32)
# The AMX paths of ggml are miscompiled by GCC 12 on CPUs that report AMX: build without them.
LLAMA_CPP_FLAGS = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


def quantized_copy(model: Any, fmt: str) -> tuple[Any, str | None]:
    """(a copy of ``model`` in format ``fmt``, the engine's head_format for it)."""
    m = copy.deepcopy(model)
    if fmt == "f32":
        return m, None
    if fmt == "2:4-int4":
        slmops.prune_model(
            m,
            "magnitude",
            pattern="2:4",
            sparse=True,
            sparse_values="int4",
            activation="int8",
            progress=False,
        )
        return m, "q8_0"
    name, _, group = fmt.partition("-g")
    options: dict[str, Any] = {"format": name, "activation": "int8"}
    if group:
        options["group_size"] = int(group)
    slmops.quantize_model(m, "rtn", progress=False, **options)
    return m, fmt if fmt in LLAMA_CPP_TYPES else "q8_0"


def _prompt(n: int, seed: int, vocab: int) -> np.ndarray:
    """Ids of a random prompt, ordinary tokens of a vocabulary of ``vocab`` (the first 100
    hold a tokenizer's special tokens)."""
    return np.random.default_rng(seed).integers(100, min(20000, vocab), n).astype(np.int32)


def prefill_tokens(engine: Any) -> int:
    """The prefill prompt's length: PREFILL_PROMPT, or what a shorter context holds."""
    return min(PREFILL_PROMPT, engine.max_context - 1)


def measure_engine(engine: Any) -> dict[str, float]:
    """One round of every measurement on ``engine`` (tokens/s)."""
    from slmops.engine import SamplingOptions

    greedy = {"stop_token_ids": [], "sampling": SamplingOptions()}
    out: dict[str, float] = {}
    prompt = _prompt(DECODE_PROMPT, 1, engine.vocab)
    req = engine.submit(prompt, max_new_tokens=DECODE_NEW, **greedy)
    engine.step()  # the prompt and the first token
    t0 = time.perf_counter()
    while req.finish_reason is None:
        engine.step()
    out["decode"] = (DECODE_NEW - 1) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    n = prefill_tokens(engine)
    engine.generate(_prompt(n, 2, engine.vocab), max_new_tokens=1, **greedy)
    out["prefill"] = n / (time.perf_counter() - t0)
    for b in BATCHES:
        reqs = [
            engine.submit(_prompt(DECODE_PROMPT, 10 + i, engine.vocab), max_new_tokens=DECODE_NEW, **greedy)
            for i in range(b)
        ]
        engine.step()
        t0 = time.perf_counter()
        while any(r.finish_reason is None for r in reqs):
            engine.step()
        out[f"batch{b}"] = b * (DECODE_NEW - 1) / (time.perf_counter() - t0)
    return out


def llama_bench_round(binary: Path, gguf: Path, threads: int, prefill: int) -> dict[str, float]:
    """One llama-bench repetition: prefill of ``prefill`` tokens, decode of 128 after 128 (tokens/s)."""
    out: dict[str, float] = {}
    for args, key in (
        (["-p", str(prefill), "-n", "0"], "prefill"),
        (["-p", "0", "-n", str(DECODE_NEW), "-d", str(DECODE_PROMPT)], "decode"),
    ):
        res = subprocess.run(
            [str(binary), "-m", str(gguf), "-t", str(threads), "-r", "1", "-o", "json", *args],
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode != 0:
            raise RuntimeError(f"llama-bench failed ({res.returncode}): {res.stderr.strip()[-400:]}")
        out[key] = float(json.loads(res.stdout)[0]["avg_ts"])
    return out


def llama_batched(binary: Path, gguf: Path, threads: int) -> dict[str, float]:
    """llama.cpp's aggregate decode tokens/s of BATCHES sequences (128-token prompts, 128 new
    tokens each), from llama-batched-bench."""
    ctx = max(BATCHES) * (DECODE_PROMPT + DECODE_NEW) + 512
    res = subprocess.run(
        [str(binary), "-m", str(gguf), "-t", str(threads), "-c", str(ctx), "-b", "2048", "-ub", "512",
         "-npp", str(DECODE_PROMPT), "-ntg", str(DECODE_NEW), "-npl", ",".join(map(str, BATCHES)),
         "--output-format", "jsonl"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if res.returncode != 0:
        raise RuntimeError(f"llama-batched-bench failed ({res.returncode}): {res.stderr.strip()[-400:]}")
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    return {f"llama_cpp_batch{r['pl']}": float(r["speed_tg"]) for r in rows}


def build_llama_cpp(cache: Path) -> Path:
    """llama-bench built from the llama-cpp-python sdist on PyPI (its vendored llama.cpp),
    once, into ``cache``; returns the binary."""
    binary = cache / "build" / "bin" / "llama-bench"
    if binary.exists():
        return binary
    if shutil.which("cmake") is None:
        raise RuntimeError("building llama.cpp needs cmake (pip install cmake)")
    cache.mkdir(parents=True, exist_ok=True)
    src = cache / "src"
    if not src.exists():
        dl = cache / "sdist"
        print("downloading the llama-cpp-python sdist ...", file=sys.stderr)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                "-d",
                str(dl),
                "llama-cpp-python",
            ],
            check=True,
        )
        archive = next(dl.glob("llama_cpp_python-*.tar.gz"))
        shutil.unpack_archive(str(archive), str(cache / "unpacked"))
        vendored = next((cache / "unpacked").glob("llama_cpp_python-*/vendor/llama.cpp"))
        vendored.rename(src)
    print(f"building llama-bench into {cache} (several minutes) ...", file=sys.stderr)
    subprocess.run(
        [
            "cmake",
            "-S",
            str(src),
            "-B",
            str(cache / "build"),
            "-DCMAKE_BUILD_TYPE=Release",
            "-DLLAMA_CURL=OFF",
            f"-DCMAKE_C_FLAGS={LLAMA_CPP_FLAGS}",
            f"-DCMAKE_CXX_FLAGS={LLAMA_CPP_FLAGS}",
        ],
        check=True,
    )
    subprocess.run(
        [
            "cmake",
            "--build",
            str(cache / "build"),
            "-j",
            str(os.cpu_count() or 2),
            "--target",
            "llama-bench",
            "llama-batched-bench",
        ],
        check=True,
    )
    return binary


class _OtherRuntimes:
    """The same checkpoint on the other runtimes of a row, one measurement per round:
    transformers' forward with slmops' QuantLinear (the q4_0 row: what slmops ran before the
    engine) and onnxruntime-genai on slmops' onnx-genai export (the int4 row, 2 threads:
    its session keeps its own thread pool)."""

    def __init__(self, fmt: str, model: Any, tokenizer: Any, work: Path, threads: int) -> None:
        self.fmt, self.model, self.genai = fmt, model, None
        if fmt == "int4" and threads == 2 and importlib.util.find_spec("onnxruntime_genai") is not None:
            import onnxruntime_genai as og

            slmops.export_model(model, "onnx-genai", work / "genai", tokenizer=tokenizer, overwrite=True)
            self.genai = og.Model(str(work / "genai"))

    def measure(self) -> dict[str, float]:
        from ..evaluate.metrics import speed
        from .export import generate_once

        out: dict[str, float] = {}
        if self.fmt == "q4_0":
            s = speed(self.model, DECODE_PROMPT, 32, repeats=1, warmup=0, backend="torch")
            out["torch_decode"] = s["decode_tokens_per_s"]
        if self.genai is not None:
            out["ort_genai_decode"] = generate_once(
                self.genai, _prompt(DECODE_PROMPT, 1, self.model.config.vocab_size).tolist(), DECODE_NEW
            )[1]
        return out


def run(
    model_name: str,
    formats: list[str],
    threads: list[int],
    rounds: int,
    llama_bench: Path | None,
    work: Path,
    kv_dtype: str = DEFAULT_KV_DTYPE,
) -> dict[str, Any]:
    from slmops.engine import Engine

    from .quality import cpu_name

    model, tokenizer = slmops.models.load_model(model_name)
    rows = []
    for fmt in formats:
        m, head_format = quantized_copy(model, fmt)
        engine = Engine((m, tokenizer), head_format=head_format, max_batch=max(BATCHES), kv_dtype=kv_dtype)
        gguf = None
        if llama_bench is not None and fmt in LLAMA_CPP_TYPES:
            t = LLAMA_CPP_TYPES[fmt]
            slmops.export_model(
                m,
                "gguf",
                work / fmt,
                tokenizer=tokenizer,
                overwrite=True,
                tensor_types={"token_embd.weight": t, "output.weight": t},
                default_type=t,
            )
            gguf = work / fmt / "model.gguf"
        for n in threads:
            slmops.set_num_threads(n)
            ours: list[dict[str, float]] = []
            theirs: list[dict[str, float]] = []
            others = _OtherRuntimes(fmt, m, tokenizer, work, n)
            engine.generate(
                _prompt(DECODE_PROMPT, 0, engine.vocab), max_new_tokens=16, stop_token_ids=[]
            )  # warm-up
            others.measure()
            for _ in range(rounds):
                ours.append({**measure_engine(engine), **others.measure()})
                if gguf is not None:
                    theirs.append(llama_bench_round(llama_bench, gguf, n, prefill_tokens(engine)))
            row: dict[str, Any] = {"format": fmt, "threads": n}
            for key in ours[0]:
                row[key] = statistics.median(r[key] for r in ours)
            batched = llama_bench.parent / "llama-batched-bench" if llama_bench is not None else None
            if gguf is not None and batched is not None and batched.is_file():  # once per row: minutes a run
                row.update(llama_batched(batched, gguf, n))
                for b in BATCHES:
                    row[f"batch{b}_vs_llama_cpp"] = row[f"batch{b}"] / row[f"llama_cpp_batch{b}"]
            for key in ("torch", "ort_genai"):
                if f"{key}_decode" in row:
                    row[f"decode_vs_{key}"] = statistics.median(
                        r["decode"] / r[f"{key}_decode"] for r in ours
                    )
            for key in ("decode", "prefill"):
                if theirs:
                    row[f"llama_cpp_{key}"] = statistics.median(r[key] for r in theirs)
                    row[f"{key}_vs_llama_cpp"] = row[key] / row[f"llama_cpp_{key}"]
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
        del engine, m
    f32 = {r["threads"]: r["decode"] for r in rows if r["format"] == "f32"}
    int4 = {r["threads"]: r["decode"] for r in rows if r["format"] == "int4"}
    for r in rows:
        if r["threads"] in f32:
            r["decode_vs_f32"] = r["decode"] / f32[r["threads"]]
        if r["threads"] in int4:
            r["decode_vs_int4"] = r["decode"] / int4[r["threads"]]
        r["batch32_vs_batch1"] = r["batch32"] / r["decode"]
    return {
        "model": model_name,
        "rounds": rounds,
        "kv_dtype": kv_dtype,
        "llama_bench": str(llama_bench) if llama_bench else None,
        "machine": {"cpu": cpu_name(), "slmops": slmops.__version__},
        "rows": rows,
    }


# (row key, number format, column header) of the table
COLUMNS = (
    ("decode", ".1f", "decode tok/s"),
    ("llama_cpp_decode", ".1f", "llama.cpp decode"),
    ("decode_vs_llama_cpp", ".2f", "ratio"),
    ("prefill", ".0f", "prefill tok/s"),
    ("llama_cpp_prefill", ".0f", "llama.cpp prefill"),
    ("prefill_vs_llama_cpp", ".2f", "ratio"),
    ("batch8", ".0f", "batch 8 tok/s"),
    ("batch32", ".0f", "batch 32 tok/s"),
    ("llama_cpp_batch32", ".0f", "llama.cpp batch 32"),
    ("batch32_vs_llama_cpp", ".2f", "ratio"),
    ("batch32_vs_batch1", ".1f", "batch 32 / batch 1"),
    ("decode_vs_f32", ".2f", "decode / f32"),
    ("decode_vs_int4", ".2f", "decode / int4"),
    ("decode_vs_torch", ".2f", "decode / transformers"),
    ("decode_vs_ort_genai", ".2f", "decode / ORT GenAI"),
)


def markdown(result: dict[str, Any]) -> str:
    head = ["format", "threads", *(h for _, _, h in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|---|---:" + "|---:" * (len(head) - 2) + "|"]
    for r in result["rows"]:
        cells = [r["format"], str(r["threads"])]
        cells += [format(r[k], f) if r.get(k) is not None else "" for k, f, _ in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    m = result["machine"]
    lines.append(
        f"\n{result['model']}, {result['kv_dtype']} KV cache; slmops {m['slmops']}, {m['cpu']}; "
        f"medians of {result['rounds']} rounds."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="slmops bench engine", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="zoo name or model path")
    p.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated, of {', '.join(FORMATS)}")
    p.add_argument("--threads", default="2", help="comma-separated thread counts (default 2)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--llama-bench", type=Path, help="a llama-bench binary to compare against")
    p.add_argument("--with-llama-cpp", action="store_true", help="build llama-bench into the cache if needed")
    p.add_argument("--kv-dtype", choices=KV_DTYPES, default=DEFAULT_KV_DTYPE, help="the engine's KV cache")
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    args = p.parse_args(argv)
    formats = [f for f in args.formats.split(",") if f]
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        p.error(f"unknown formats {bad}; choose from {', '.join(FORMATS)}")
    try:
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        p.error("--threads takes comma-separated integers")
    if args.rounds < 1 or min(threads) < 1:
        p.error("--rounds and --threads must be >= 1")
    llama_bench = args.llama_bench
    if llama_bench is None and args.with_llama_cpp:
        from ..models.downloads import cache_root

        llama_bench = build_llama_cpp(cache_root() / "llama.cpp")
    if llama_bench is not None and not llama_bench.is_file():
        p.error(f"--llama-bench {llama_bench}: no such file")
    with tempfile.TemporaryDirectory() as work:
        result = run(args.model, formats, threads, args.rounds, llama_bench, Path(work), args.kv_dtype)
    write_report(result, markdown(result), args.json, args.markdown)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
