"""Fine-tuning, measured: a LoRA training step of ``slmops.finetune`` against peft +
transformers on the same model, data and settings, and QLoRA (nf4 and int4 bases on our
kernels) against LoRA on the float base: step time, the frozen base's size, the process's
peak memory, trainable parameters, and the evaluation loss and perplexity before and after.

The reference teacher learns a style it never saw (``modern_style``: the KJV in modern
English), evaluated on the held-out test split in the same style. Each configuration runs
in its own process (so peak RSS is its own); configurations alternate over ``--rounds``
and the step time is the median over all timed steps (the first ``--warmup`` steps of each
run are not timed).

    slmops bench finetune                 # ~5 min on 2 cores
    slmops bench finetune --steps 12 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import slmops

from .quality import cpu_name

CONFIGS = ("peft", "lora", "qlora-nf4", "qlora-int4")


def _data(n_chars: int) -> tuple[str, str]:
    from slmops.zoo.corpus import kjv_split, modern_style

    return modern_style(kjv_split("train")[:n_chars]), modern_style(kjv_split("test")[:20000])


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _worker_peft(args: argparse.Namespace) -> dict:
    """The baseline: peft's LoRA on the transformers model, its own loss (full logits)."""
    from peft import LoraConfig, get_peft_model

    from slmops._training import pad_batch, step_examples
    from slmops.finetune import load_finetune_examples

    model, tok = slmops.zoo.load(args.model)
    config = LoraConfig(
        r=args.r, lora_alpha=args.alpha, lora_dropout=args.dropout, target_modules="all-linear"
    )
    model = get_peft_model(model, config)
    model.train()
    examples = load_finetune_examples(_data(args.chars)[0], tok, args.seq_len)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr)
    times = []
    for step in range(args.steps):
        batch = pad_batch(step_examples(examples, args.batch_size, 0, step), tok.pad_token_id)
        labels = batch["input_ids"].clone()  # transformers shifts the labels itself
        labels[batch["attention_mask"] == 0] = -100
        t0 = time.perf_counter()
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return {"step_times": times[args.warmup :], "trainable_params": sum(p.numel() for p in params),
            "peak_rss_mib": round(_peak_rss_mib(), 1)}  # fmt: skip


def _worker_slmops(args: argparse.Namespace, config: str) -> dict:
    train, evaluation = _data(args.chars)
    method, _, fmt = config.partition("-")
    with tempfile.TemporaryDirectory() as tmp:
        result = slmops.finetune_model(
            args.model, data=train, eval_data=evaluation if args.evaluate else None, out_dir=tmp,
            method=method, qlora={"format": fmt} if fmt else None,
            lora={"r": args.r, "alpha": args.alpha, "dropout": args.dropout},
            training={"steps": args.steps, "batch_size": args.batch_size, "seq_len": args.seq_len,
                      "lr": args.lr, "eval_fraction": 0.0},
            progress=False,
        )  # fmt: skip
        log = [json.loads(line) for line in (Path(tmp) / "train_log.jsonl").read_text().splitlines()]
    elapsed = [0.0] + [r["elapsed_s"] for r in log]
    s = result.summary
    keys = ("trainable_params", "frozen_base_bytes", "float_base_bytes", "frozen_base_ratio", "peak_rss_mib",
            "eval_loss_before", "eval_loss_after", "perplexity_before", "perplexity_after")  # fmt: skip
    return {
        "step_times": [b - a for a, b in zip(elapsed, elapsed[1:], strict=False)][args.warmup :],
        **{k: s[k] for k in keys},
    }


def _run_worker(config: str, args: argparse.Namespace, evaluate: bool) -> dict:
    cmd = [sys.executable, "-m", "slmops.bench.finetune", "--worker", config, "--json-out", "-"]
    for name in ("model", "steps", "warmup", "batch_size", "seq_len", "r", "alpha", "dropout", "lr", "chars",
                 "threads"):  # fmt: skip
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    if evaluate:
        cmd.append("--evaluate")
    run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if run.returncode != 0:
        raise RuntimeError(f"{config} worker failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="slmops bench finetune",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="kjv-teacher")
    parser.add_argument("--steps", type=int, default=40, help="steps per run (the evaluated runs: 3x)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps of each run")
    parser.add_argument("--rounds", type=int, default=2, help="timing runs of each configuration")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--dropout", type=float, default=0.05)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--chars", type=int, default=400000, help="training text (characters)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--evaluate", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--json-out", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="write the results as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    slmops.set_num_threads(args.threads)
    if args.worker:
        out = _worker_peft(args) if args.worker == "peft" else _worker_slmops(args, args.worker)
        print(json.dumps(out))
        return 0

    print(
        f"fine-tuning: {args.model}, batch {args.batch_size} x {args.seq_len} tokens, r={args.r}, "
        "all linear layers; "
        f"{cpu_name()}, {args.threads} threads, torch {torch.__version__}, slmops {slmops.__version__}, "
        f"{platform.python_version()}",
        flush=True,
    )
    times: dict[str, list[float]] = {c: [] for c in CONFIGS}
    info: dict[str, dict] = {}
    for _ in range(args.rounds):
        for config in CONFIGS:
            result = _run_worker(config, args, evaluate=False)
            times[config] += result["step_times"]
            info[config] = result
    median = {c: statistics.median(t) for c, t in times.items()}
    print(f"\n{'step time (median)':<22}" + "".join(f"{c:>12}" for c in CONFIGS))
    print(f"{'ms':<22}" + "".join(f"{median[c] * 1e3:>12.1f}" for c in CONFIGS))
    speed = median["peft"] / median["lora"]
    qlora = {c: median[c] / median["lora"] for c in CONFIGS if c.startswith("qlora")}
    print(f"LoRA step, slmops vs peft + transformers: {speed:.2f}x faster (target >= 1.0)")
    for c, ratio in qlora.items():
        base = info[c]["frozen_base_ratio"]
        print(f"{c}: step {ratio:.2f}x LoRA on the float base (target <= 1.5); frozen base {base:.1%} "
              "of the float base (target <= 30%)")  # fmt: skip

    print(f"\nquality: {args.steps * 3} steps, evaluation on the held-out split in the new style", flush=True)
    rows = {}
    for config in CONFIGS[1:]:
        demo_args = argparse.Namespace(**{**vars(args), "steps": args.steps * 3})
        rows[config] = _run_worker(config, demo_args, evaluate=True)
    print(f"{'':<12}{'trainable':>10}{'frozen base MiB':>16}{'peak RSS MiB':>14}", end="")
    print(f"{'eval loss':>20}{'perplexity':>20}")
    for config, r in rows.items():
        loss = f"{r['eval_loss_before']:.3f} -> {r['eval_loss_after']:.3f}"
        ppl = f"{r['perplexity_before']:.2f} -> {r['perplexity_after']:.2f}"
        frozen = r["frozen_base_bytes"] / 2**20
        print(
            f"{config:<12}{r['trainable_params']:>10,}{frozen:>16.2f}{r['peak_rss_mib']:>14.0f}{loss:>20}{ppl:>20}"
        )
    if args.json:
        args.json.write_text(json.dumps({
            "settings": {k: v for k, v in vars(args).items() if k not in ("json", "worker", "json_out")},
            "median_step_s": median, "lora_vs_peft": speed, "qlora_vs_lora": qlora,
            "timing_runs": {c: {k: v for k, v in info[c].items() if k != "step_times"} for c in CONFIGS},
            "quality": rows,
        }, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
