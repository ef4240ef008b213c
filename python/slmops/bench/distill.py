"""Distillation, demonstrated: the reference student's architecture trained from scratch for
the same steps on the same text twice, once on the text alone (next-token cross entropy:
``hard_weight=1``) and once distilled from the reference teacher online (fused KD loss);
then both, the teacher and the shipped student measured by ``slmops.evaluate`` on the
held-out evaluation slice (perplexity, windows of 512 tokens, stride 256), with size in
memory and decode speed (batch 1, 64-token prompt).

    slmops bench distill                 # 300 steps each, ~6 min on 2 cores

T = 1 by default: from scratch at 300 steps, T = 2 did worse than the text alone.
    slmops bench distill --steps 50      # a quick look
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
from pathlib import Path

import torch

import slmops
from slmops.zoo.corpus import kjv_split

from .quality import cpu_name, measure, write_results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="slmops bench distill", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument(
        "--hard-weight", type=float, default=0.0, help="the distilled run's cross-entropy weight"
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument(
        "--output-dir", type=Path, help="keep the trained students here (default: a temp dir)"
    )
    parser.add_argument("--json", type=Path, help="write the rows as JSON")
    parser.add_argument("--markdown", type=Path, help="write the table as Markdown")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    slmops.set_num_threads(args.threads)
    header = (
        f"distillation demo: {args.steps} steps x {args.batch_size} x {args.seq_len} tokens from scratch, "
        f"T={args.temperature}; {cpu_name()}, {args.threads} threads, torch {torch.__version__}, "
        f"slmops {slmops.__version__}, {platform.python_version()}"
    )
    print(header, flush=True)
    train_text = kjv_split("train")
    eval_text = slmops.zoo.eval_text()
    common = {
        "steps": args.steps, "batch_size": args.batch_size, "seq_len": args.seq_len, "lr": args.lr,
        "warmup_steps": max(1, args.steps // 10), "init": "scratch", "seed": 0,
    }  # fmt: skip
    runs = {
        "student, text only": {**common, "hard_weight": 1.0},
        "student, distilled": {**common, "hard_weight": args.hard_weight, "temperature": args.temperature},
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = args.output_dir or Path(tmp)
        for label, name in (("teacher", "kjv-teacher"), ("student as shipped", "kjv-student")):
            model, tok = slmops.zoo.load(name)
            rows.append({"model": label, **measure(model, tok, eval_text, speed=True), "train_s": None})
        for label, training in runs.items():
            out = base / label.split(", ")[1].replace(" ", "-")
            print(f"  training {label} ...", flush=True)
            result = slmops.distill_model(
                "kjv-teacher", "kjv-student", out, data=train_text, training=training, progress=False
            )
            model = result.model.eval()
            row = {"model": label, **measure(model, result.tokenizer, eval_text, speed=True)}
            row["train_s"] = result.summary["training"]["seconds"]
            row["final_train_loss"] = result.summary["training"]["final_loss"]
            rows.append(row)
            print(f"  {label}: perplexity {row['perplexity']:.2f} after {row['train_s']:.0f} s", flush=True)
    text_only = next(r for r in rows if r["model"] == "student, text only")["perplexity"]
    distilled = next(r for r in rows if r["model"] == "student, distilled")["perplexity"]
    lines = [
        f"_{header}_",
        "",
        "| model | perplexity | vs text only | size MB (memory) | decode tok/s | training s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        rel = f"{(r['perplexity'] / text_only - 1) * 100:+.1f}%"
        train = f"{r['train_s']:.0f}" if r["train_s"] is not None else "-"
        lines.append(
            f"| {r['model']} | {r['perplexity']:.2f} | {rel} | {r['model_bytes'] / 1e6:.1f} "
            f"| {r['decode_tokens_per_s']:.0f} | {train} |"
        )
    change = (distilled / text_only - 1) * 100
    lines += [
        "",
        f"Distilled against the same steps on the text alone: perplexity {text_only:.2f} -> {distilled:.2f} "
        f"({change:+.1f}%; log-perplexity {math.log(text_only):.3f} -> {math.log(distilled):.3f}).",
    ]
    write_results("\n".join(lines), header, rows, args.markdown, args.json)
    return 0
