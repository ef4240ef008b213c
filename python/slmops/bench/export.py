"""Our onnx-genai export against onnxruntime-genai's own model builder, on the reference teacher.

Rows: the float teacher in torch (the reference perplexity); slmops' export of the teacher
quantized with GPTQ (int4, group 32, symmetric, act-order) and with RTN (same format);
the builder run on the float teacher with ``-p int4 -e cpu`` (its defaults: RTN int4,
block 32, symmetric, accuracy_level 4, the tied embedding/lm_head quantized too). All
exports at accuracy_level 4. Columns, measured in this run: perplexity of the ONNX model
run by onnxruntime on the held-out slice (windows of 512 tokens, stride 256, the protocol
of ``slmops.evaluate``), its change against the float teacher, the size of model.onnx +
model.onnx.data, and decode tokens/s through onnxruntime-genai (batch 1, 64-token prompt,
128 greedy tokens, median of 3 runs after a warm-up).

    slmops bench export                   # about 2 min on 2 cores (development VM)
    slmops bench export --json export.json --markdown export.md
"""

from __future__ import annotations

import argparse
import copy
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

GROUP = 32


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


def _decode_tokens_per_s(folder: Path, prompt: list[int], new: int = 128, repeats: int = 3) -> float:
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    times = []
    for r in range(repeats + 1):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(prompt) + new, do_sample=False)
        gen = og.Generator(model, params)
        gen.append_tokens(np.array([prompt], dtype=np.int32))
        gen.generate_next_token()  # the first token ends the prefill: not decode
        start, steps = time.perf_counter(), 0
        while not gen.is_done():
            gen.generate_next_token()
            steps += 1
        if r:  # the first run warms up
            times.append(steps / (time.perf_counter() - start))
    return float(np.median(times))


def _folder_bytes(folder: Path) -> int:
    return sum((folder / f).stat().st_size for f in ("model.onnx", "model.onnx.data"))


def run(work: Path) -> dict[str, Any]:
    from ..evaluate.metrics import perplexity
    from .quality import cpu_name

    model, tok = slmops.zoo.load("kjv-teacher")
    ids = torch.tensor(tok(slmops.zoo.eval_text())["input_ids"], dtype=torch.long)
    prompt = ids[:64].tolist()
    base = perplexity(model, ids, 512, 256)["perplexity"]
    rows = [{"row": "float teacher (torch fp32)", "perplexity": base, "change_pct": 0.0, "bytes": None,
             "decode_tok_s": None, "seconds": None}]  # fmt: skip

    def measure(label: str, folder: Path, seconds: float) -> None:
        ppl = perplexity(_OrtCausalLM(folder), ids, 512, 256)["perplexity"]
        rows.append({"row": label, "perplexity": ppl, "change_pct": 100 * (ppl / base - 1),
                     "bytes": _folder_bytes(folder), "decode_tok_s": _decode_tokens_per_s(folder, prompt),
                     "seconds": seconds})  # fmt: skip
        print(f"{label}: ppl {ppl:.3f}", flush=True)

    for method in ("gptq", "rtn"):
        m = copy.deepcopy(model)
        start = time.perf_counter()
        if method == "gptq":
            slmops.quantize_model(
                m, "gptq", bits=4, group_size=GROUP, act_order=True, tokenizer=tok, progress=False
            )
        else:
            slmops.quantize_model(m, "rtn", format="int4", group_size=GROUP)
        out = work / f"slmops-{method}"
        slmops.export_model(m, "onnx-genai", out, tokenizer=tok, accuracy_level=4)
        measure(f"slmops {method.upper()} int4 g{GROUP} -> onnx-genai", out, time.perf_counter() - start)

    float_dir, built = work / "teacher-float", work / "builder-int4"
    model.save_pretrained(float_dir)
    tok.save_pretrained(float_dir)
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(float_dir), "-o", str(built),
           "-p", "int4", "-e", "cpu", "-c", str(work / "cache")]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode == 0:
        measure("onnxruntime-genai builder int4 (float teacher)", built, time.perf_counter() - start)
    else:
        rows.append({"row": "onnxruntime-genai builder int4", "error": proc.stderr.strip().splitlines()[-1]})
    return {
        "machine": {"cpu": cpu_name(), "threads": torch.get_num_threads(), "slmops": slmops.__version__},
        "rows": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| export | perplexity | change | model bytes | decode tok/s | time to make (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['row']} | unavailable: {r['error']} | | | | |")
            continue
        size = f"{r['bytes']:,}" if r["bytes"] else ""
        tps = f"{r['decode_tok_s']:.0f}" if r["decode_tok_s"] else ""
        secs = f"{r['seconds']:.1f}" if r["seconds"] else ""
        lines.append(
            f"| {r['row']} | {r['perplexity']:.3f} | {r['change_pct']:+.2f}% | {size} | {tps} | {secs} |"
        )
    m = result["machine"]
    lines.append(f"\nslmops {m['slmops']}, {m['cpu']}, {m['threads']} threads.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="slmops bench export", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        result = run(Path(work))
    text = markdown(result)
    print(text)
    if args.json:
        from .._io import write_json_atomic

        write_json_atomic(result, args.json)
    if args.markdown:
        from .._io import write_atomic

        write_atomic(args.markdown, text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
