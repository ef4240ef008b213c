"""The quality table: what each RTN quantization format costs the reference teacher.

Rows: the teacher and the student in fp32, then the teacher with every linear layer
(the tied embedding / lm_head stays float) quantized round-to-nearest to each format.
Columns, all from ``slmops.evaluate`` in this run: perplexity on the held-out evaluation
slice shipped with slmops (12 test chapters, windows of 512 tokens, stride 256) with float
activations and with int8 activations, its change against the fp32 teacher, the bytes of
the linear weights and of the whole model in memory, and decode tokens/s (batch 1,
64-token prompt, median of 5 runs of 32 steps after one warm-up run).

    slmops bench quality                  # 1.5 min on 2 cores (development VM)
    slmops bench quality --json quality.json --markdown quality.md
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
from pathlib import Path

import torch

import slmops

FORMATS = {  # row label: (format, options)
    "int8": ("int8", {}),
    "int4 g32 sym": ("int4", {"group_size": 32, "symmetric": True}),
    "int4 g32 asym": ("int4", {"group_size": 32, "symmetric": False}),
    "int4 g128 sym": ("int4", {"group_size": 128, "symmetric": True}),
    "int4 g128 asym": ("int4", {"group_size": 128, "symmetric": False}),
    "nf4": ("nf4", {}),
    "q4_0": ("q4_0", {}),
    "q4_k": ("q4_k", {}),
    "ternary": ("ternary", {}),
}


def measure(model, tokenizer, text: str, speed: bool) -> dict:
    metrics = ["perplexity", "memory"] + (["speed"] if speed else [])
    r = slmops.evaluate_model(model, tokenizer, metrics=metrics, data=text, seq_len=512, stride=256)
    return {
        "perplexity": r["perplexity"]["perplexity"],
        "tokens": r["perplexity"]["tokens"],
        "model_bytes": r["memory"]["model_bytes_in_memory"],
        "decode_tokens_per_s": r["speed"]["decode_tokens_per_s"] if speed else None,
    }


def linear_bytes(model) -> int:
    """Bytes of the weights of the layers quantize_model replaces (all but lm_head)."""
    total = 0
    for name, m in model.named_modules():
        if isinstance(m, slmops.nn.QuantLinear):
            total += m.qweight.nbytes
        elif isinstance(m, torch.nn.Linear) and not name.endswith("lm_head"):
            total += m.weight.numel() * m.weight.element_size()
    return total


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def write_results(
    table: str, header: str, rows: list[dict], markdown: Path | None, json_path: Path | None
) -> None:
    """Prints a benchmark's table and writes it (Markdown) and its rows (JSON) where asked,
    each file whole or not at all."""
    from .._io import write_atomic, write_json_atomic

    print(table)
    if markdown:
        write_atomic(markdown, table + "\n")
    if json_path:
        write_json_atomic({"header": header, "rows": rows}, json_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="slmops bench quality", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher", default="kjv-teacher", help="zoo name or Hugging Face folder")
    parser.add_argument("--student", default="kjv-student", help="zoo name or folder; '' to skip")
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma list of row labels")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--no-speed", action="store_true", help="skip the decode timing")
    parser.add_argument("--json", type=Path, help="write the rows as JSON")
    parser.add_argument("--markdown", type=Path, help="write the table as Markdown")
    args = parser.parse_args(argv)
    unknown = set(args.formats.split(",")) - set(FORMATS)
    if unknown:
        parser.error(f"unknown formats {sorted(unknown)}; choose from {list(FORMATS)}")

    torch.set_num_threads(args.threads)
    slmops.set_num_threads(args.threads)
    text = slmops.zoo.eval_text()
    speed = not args.no_speed
    teacher, tok = slmops.zoo.load(args.teacher)
    rows = [{"model": args.teacher, "format": "fp32", "linear_bytes": linear_bytes(teacher),
             **measure(teacher, tok, text, speed)}]  # fmt: skip
    if args.student:
        student, stok = slmops.zoo.load(args.student)
        rows.append({"model": args.student, "format": "fp32", "linear_bytes": linear_bytes(student),
                     **measure(student, stok, text, speed)})  # fmt: skip
    for label in args.formats.split(","):
        fmt, options = FORMATS[label]
        row = {"model": args.teacher, "format": label}
        for activation in ("float", "int8"):
            q = copy.deepcopy(teacher)
            summary = slmops.quantize_model(q, format=fmt, activation=activation, **options)
            if summary.skipped.keys() - {"lm_head"}:
                raise RuntimeError(f"{label}: layers kept float: {summary.skipped}")
            m = measure(q, tok, text, speed)
            suffix = "" if activation == "float" else "_a8"
            row.update({f"{k}{suffix}": v for k, v in m.items()})
            row["linear_bytes"] = linear_bytes(q)
        rows.append(row)
        print(f"{label}: ppl {row['perplexity']:.3f} (int8 act {row['perplexity_a8']:.3f})", flush=True)

    base = rows[0]["perplexity"]
    header = (
        f"slmops {slmops.__version__}, torch {torch.__version__}, {cpu_name()}, "
        f"{args.threads} threads; perplexity over {rows[0]['tokens']:,} held-out tokens"
    )
    lines = [
        header,
        "",
        "| model | weights | ppl | change | ppl, int8 act | change | linear bytes | model bytes "
        "| decode tok/s | decode tok/s, int8 act |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(v, fmt):
        return "" if v is None else format(v, fmt)

    for r in rows:
        a8 = r.get("perplexity_a8")
        lines.append(
            f"| {r['model']} | {r['format']} | {r['perplexity']:.3f} "
            f"| {100 * (r['perplexity'] / base - 1):+.1f}% "
            f"| {cell(a8, '.3f')} | {'' if a8 is None else f'{100 * (a8 / base - 1):+.1f}%'} "
            f"| {r['linear_bytes']:,} | {r['model_bytes']:,} | {cell(r['decode_tokens_per_s'], '.0f')} "
            f"| {cell(r.get('decode_tokens_per_s_a8'), '.0f')} |"
        )
    table = "\n".join(lines)
    write_results(table, header, rows, args.markdown, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
