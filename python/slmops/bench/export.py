"""Our onnx-genai export against onnxruntime-genai's own model builder, side by side.

Rows: the float model in torch (the reference perplexity); slmops' export of the model
quantized with GPTQ (``quantize_model``'s defaults: int4, group 128, symmetric,
act-order) and with RTN at group 128; RTN at group 32, the builder's block, with each
lm_head choice (``int8``, the default; ``int4``; ``float``, the export before lm_head
quantization); the builder run on the float model with ``-p int4 -e cpu`` (its defaults:
RTN int4, block 32, symmetric, accuracy_level 4, the tied embedding/lm_head int4 and
shared), and again with ``block_size=128`` (its lm_head then int4 in blocks of 128 too),
when ``onnxruntime_genai.models.builder`` is installed. All exports at accuracy_level 4.
Block 128 decodes faster than block 32 in both exports (MatMulNBits does a block's scale
work once per block); the ratio to the builder is to its default. Columns, measured in this run: perplexity of
the ONNX model run by onnxruntime on the held-out KJV slice (windows of 512 tokens, stride
256, the protocol of ``slmops.evaluate``), its change against the float model, the size of
model.onnx + model.onnx.data, prompt and decode tokens/s through onnxruntime-genai (batch
1, a 64-token prompt, 64 greedy tokens; the folders take turns, ``--rounds`` rounds after a
warm-up, median), decode speed as a ratio to the builder's, measured in the same rounds,
and our export's peak memory over what the process held before it (the quantized model),
in multiples of the float model's bytes (Linux).

    slmops bench export                                   # the reference teacher, about 2 min
    slmops bench export --model smollm2-135m-instruct     # SmolLM2-135M, about 12 min on 2 cores
    slmops bench export --json export.json --markdown export.md
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

import slmops

from ..quantize.gptq_model import GROUP_SIZE as GPTQ_GROUP
from . import write_report

GROUP = GPTQ_GROUP  # what a GPTQ user's export holds
BUILDER_GROUP = 32  # the builder's default block
PROMPT_TOKENS = 64
NEW_TOKENS = 64
BUILDER_ROW = "onnxruntime-genai builder int4"


class _OrtCausalLM:
    """An exported decoder as a callable ``model(ids).logits`` for slmops' perplexity."""

    def __init__(self, folder: Path) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        cfg = json.loads((folder / "genai_config.json").read_text())["model"]
        dec = cfg["decoder"]
        self.layers, self.kv, self.head = (
            dec["num_hidden_layers"],
            dec["num_key_value_heads"],
            dec["head_size"],
        )
        self.config = SimpleNamespace(
            vocab_size=cfg["vocab_size"], max_position_embeddings=cfg["context_length"]
        )

    def __call__(self, ids: torch.Tensor) -> Any:
        x = ids.numpy().astype(np.int64)
        feeds = {"input_ids": x, "attention_mask": np.ones_like(x)}
        for i in range(self.layers):
            for kv in ("key", "value"):
                feeds[f"past_key_values.{i}.{kv}"] = np.zeros((x.shape[0], self.kv, 0, self.head), np.float32)
        (logits,) = self.session.run(["logits"], feeds)
        return SimpleNamespace(logits=torch.from_numpy(logits))


def generate_once(model: Any, prompt: list[int], new_tokens: int = NEW_TOKENS) -> tuple[float, float]:
    """(prompt tok/s, decode tok/s) of one greedy generation through onnxruntime-genai."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + new_tokens, do_sample=False)
    gen = og.Generator(model, params)
    start = time.perf_counter()
    gen.append_tokens(np.array([prompt], dtype=np.int32))
    gen.generate_next_token()  # the first token ends the prefill: not decode
    prefilled, steps = time.perf_counter(), 0
    while not gen.is_done():
        gen.generate_next_token()
        steps += 1
    return len(prompt) / (prefilled - start), steps / (time.perf_counter() - prefilled)


def _speeds(folders: dict[str, Path], prompt: list[int], rounds: int) -> dict[str, dict[str, Any]]:
    """Every folder loaded once, then ``rounds`` rounds in which each generates in turn (the
    machine's drift hits all rows alike); medians, and each round's decode ratio to the
    builder's in the same round."""
    import onnxruntime_genai as og

    models = {label: og.Model(str(folder)) for label, folder in folders.items()}
    for model in models.values():
        generate_once(model, prompt)  # warm-up
    runs: dict[str, list[tuple[float, float]]] = {label: [] for label in folders}
    for _ in range(rounds):
        for label, model in models.items():
            runs[label].append(generate_once(model, prompt))
    out = {}
    for label, r in runs.items():
        row = {
            "prompt_tok_s": float(np.median([p for p, _ in r])),
            "decode_tok_s": float(np.median([d for _, d in r])),
        }
        if BUILDER_ROW in runs:
            ref = runs[BUILDER_ROW]
            row["decode_vs_builder"] = float(
                np.median([d / b for (_, d), (_, b) in zip(r, ref, strict=True)])
            )
            row["prompt_vs_builder"] = float(
                np.median([p / b for (p, _), (b, _) in zip(r, ref, strict=True)])
            )
        out[label] = row
    return out


def _folder_bytes(folder: Path) -> int:
    return sum((folder / f).stat().st_size for f in ("model.onnx", "model.onnx.data"))


def run(work: Path, model_name: str, rounds: int) -> dict[str, Any]:
    from ..evaluate.metrics import PeakGrowth, perplexity
    from .quality import cpu_name

    model, tok = slmops.zoo.load(model_name)
    ids = torch.tensor(tok(slmops.zoo.eval_text())["input_ids"], dtype=torch.long)
    prompt = ids[:PROMPT_TOKENS].tolist()
    base = perplexity(model, ids, 512, 256)["perplexity"]
    rows: dict[str, dict[str, Any]] = {"float model (torch fp32)": {"perplexity": base}}
    folders: dict[str, Path] = {}

    float_bytes = sum(p.numel() * p.element_size() for p in model.parameters())

    def made(label: str, folder: Path, seconds: float, grown: int | None = None) -> None:
        ppl = perplexity(_OrtCausalLM(folder), ids, 512, 256)["perplexity"]
        rows[label] = {"perplexity": ppl, "bytes": _folder_bytes(folder), "seconds": seconds}
        if grown is not None:
            rows[label]["export_peak_x_float"] = grown / float_bytes
        folders[label] = folder
        print(f"{label}: ppl {ppl:.3f}", flush=True)

    for method, group, heads in (
        ("gptq", GROUP, ("int8",)),
        ("rtn", GROUP, ("int8",)),
        ("rtn", BUILDER_GROUP, ("int8", "int4", "float")),
    ):
        m = copy.deepcopy(model)
        start = time.perf_counter()
        if method == "gptq":
            slmops.quantize_model(m, "gptq", bits=4, group_size=group, tokenizer=tok, progress=False)
        else:
            slmops.quantize_model(m, "rtn", format="int4", group_size=group)
        quantized = time.perf_counter() - start
        for head in heads:
            out = work / f"slmops-{method}-g{group}-{head}"
            start = time.perf_counter()
            with PeakGrowth() as grown:
                slmops.export_model(m, "onnx-genai", out, tokenizer=tok, lm_head=head, embedding=head)
            label = f"slmops {method.upper()} int4 g{group}, lm_head {head}"
            made(label, out, quantized + time.perf_counter() - start, grown.bytes)

    if importlib.util.find_spec("onnxruntime_genai.models.builder") is not None:
        float_dir = work / "float"
        model.save_pretrained(float_dir)
        tok.save_pretrained(float_dir)
        for label, block in ((BUILDER_ROW, BUILDER_GROUP), (f"{BUILDER_ROW} block {GROUP}", GROUP)):
            built = work / f"builder-b{block}"
            extra = [] if block == BUILDER_GROUP else ["--extra_options", f"block_size={block}"]
            cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(float_dir), "-o",
                   str(built), "-p", "int4", "-e", "cpu", "-c", str(work / "cache"), *extra]  # fmt: skip
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode == 0:
                made(label, built, time.perf_counter() - start)
            else:
                rows[label] = {"error": proc.stderr.strip().splitlines()[-1]}
    for label, speed in _speeds(folders, prompt, rounds).items():
        rows[label].update(speed)
    for row in rows.values():
        if "perplexity" in row:
            row["change_pct"] = 100 * (row["perplexity"] / base - 1)
    return {
        "machine": {"cpu": cpu_name(), "threads": torch.get_num_threads(), "slmops": slmops.__version__},
        "model": model_name,
        "rounds": rounds,
        "rows": [{"row": label, **row} for label, row in rows.items()],
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| export | perplexity | change | model bytes | prompt tok/s | decode tok/s | decode vs builder "
        "| time to make (s) | export peak memory |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(r: dict[str, Any], key: str, fmt: str) -> str:
        return format(r[key], fmt) if r.get(key) is not None else ""

    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['row']} | unavailable: {r['error']} | | | | | | | |")
            continue
        lines.append(
            f"| {r['row']} | {r['perplexity']:.3f} | {r['change_pct']:+.2f}% | {cell(r, 'bytes', ',')} "
            f"| {cell(r, 'prompt_tok_s', '.0f')} | {cell(r, 'decode_tok_s', '.1f')} "
            f"| {cell(r, 'decode_vs_builder', '.2f')} | {cell(r, 'seconds', '.1f')} "
            f"| {cell(r, 'export_peak_x_float', '.2f')}{'x' if r.get('export_peak_x_float') else ''} |"
        )
    m = result["machine"]
    lines.append(
        f"\n{result['model']}; slmops {m['slmops']}, {m['cpu']}, {m['threads']} threads, "
        f"{result['rounds']} interleaved rounds."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="slmops bench export", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="kjv-teacher", help="zoo name or model path (default kjv-teacher)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved generation rounds (default 5)")
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    with tempfile.TemporaryDirectory() as work:
        result = run(Path(work), args.model, args.rounds)
    write_report(result, markdown(result), args.json, args.markdown)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
