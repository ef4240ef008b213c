"""Distillation losses: slmops's fused kernels against PyTorch eager, forward plus backward,
float32, side by side in one run with the same threads and the same data.

Cases (the teacher is given as logits; T = 2 with the T^2 factor on both sides):
  * loss  [N, V] student logits. Eager: log_softmax of student and teacher, the divergence
    (F.kl_div with log_target for forward KL; TRL's generalized JSD with a logsumexp
    mixture for jsd), backward to the logits. slmops: ``slmops.nn.KDLoss``.
  * fused hidden [N, H] and head [V, H]. Eager: the logits matmul, the same forward KL,
    backward to hidden and head. slmops: ``slmops.nn.FusedLinearKDLoss`` (logits never
    held for more than one chunk of rows).

Time: the median of --repeats runs after one warm-up, the two sides interleaved.
Peak extra memory: each side runs once in a fresh process that has allocated and touched
its inputs; the peak resident set during that run (VmHWM, reset just before it) less the
resident set before it is what the step added (intermediates and gradients; Linux only).
The check column compares the two sides' gradients: max |difference| / max |eager|.

    slmops bench kd                 # the issue's shapes, ~6 min on 2 cores
    slmops bench kd --quick         # small shapes, ~20 s
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import slmops
from slmops.nn import FusedLinearKDLoss, KDLoss

from .quality import cpu_name, write_results

TEMPERATURE = 2.0
# (case, divergence, N, H, V); H is 0 for the loss on logits
FULL = [
    ("loss", "forward_kl", 4096, 0, 32000),
    ("loss", "jsd", 4096, 0, 32000),
    ("fused", "forward_kl", 4096, 1024, 32000),
    ("loss", "forward_kl", 1024, 0, 128256),
    ("fused", "forward_kl", 1024, 2048, 128256),
]
QUICK = [
    ("loss", "forward_kl", 512, 0, 8000),
    ("loss", "jsd", 512, 0, 8000),
    ("fused", "forward_kl", 512, 256, 8000),
]


def make_inputs(case: str, n: int, h: int, v: int) -> dict:
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(n, v, generator=g) * 3
    if case == "loss":
        return {"student": torch.randn(n, v, generator=g) * 3, "teacher": teacher}
    return {
        "hidden": torch.randn(n, h, generator=g),
        "head": torch.randn(v, h, generator=g) / h**0.5 * 3,
        "teacher": teacher,
    }


def eager_divergence(lq: torch.Tensor, lp: torch.Tensor, divergence: str, beta: float = 0.5) -> torch.Tensor:
    """Summed over rows and vocabulary, as the published PyTorch recipes write it."""
    if divergence == "forward_kl":
        return F.kl_div(lq, lp, log_target=True, reduction="sum")
    # TRL's generalized_jsd_loss: the mixture through logsumexp, two kl_div terms
    lm = torch.logsumexp(
        torch.stack([lq + torch.log1p(torch.tensor(-beta)), lp + torch.log(torch.tensor(beta))]), 0
    )
    return beta * F.kl_div(lm, lp, log_target=True, reduction="sum") + (1 - beta) * F.kl_div(
        lm, lq, log_target=True, reduction="sum"
    )


def run_step(side: str, case: str, divergence: str, inputs: dict) -> list[torch.Tensor]:
    """One forward + backward; returns the gradients (logits, or hidden and head)."""
    T, t = TEMPERATURE, inputs["teacher"]
    n = t.shape[0]
    if case == "loss":
        z = inputs["student"].detach().requires_grad_()
        if side == "eager":
            lq, lp = F.log_softmax(z / T, -1), F.log_softmax(t / T, -1)
            (eager_divergence(lq, lp, divergence) * T * T / n).backward()
        else:
            KDLoss(divergence, temperature=T)(z, t).backward()
        return [z.grad]
    x = inputs["hidden"].detach().requires_grad_()
    w = inputs["head"].detach().requires_grad_()
    if side == "eager":
        lq, lp = F.log_softmax(x @ w.T / T, -1), F.log_softmax(t / T, -1)
        (eager_divergence(lq, lp, divergence) * T * T / n).backward()
    else:
        FusedLinearKDLoss(divergence, temperature=T)(x, w, t).backward()
    return [x.grad, w.grad]


def peak_extra_mb(side: str, case: str, divergence: str, n: int, h: int, v: int, threads: int) -> float:
    """In a fresh process: MB the step adds to the resident set at its peak, over its inputs."""
    from ..evaluate.metrics import peak_rss_bytes, reset_peak_rss

    torch.set_num_threads(threads)
    slmops.set_num_threads(threads)
    inputs = make_inputs(case, n, h, v)
    if not reset_peak_rss():
        raise RuntimeError("peak memory needs Linux (/proc/self/clear_refs); run with --no-memory")
    before = peak_rss_bytes()  # just reset: the current resident set
    run_step(side, case, divergence, inputs)
    return (peak_rss_bytes() - before) / 2**20


def measure_memory(side: str, row: tuple, threads: int) -> float:
    # A fixed mmap threshold: every block over 64 KB is mapped and unmapped on free, so the
    # resident set follows the live tensors (glibc's adaptive threshold would keep freed
    # blocks of up to 32 MB in the heap, hiding them from the count).
    ctx = multiprocessing.get_context("spawn")
    saved = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    try:
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx, max_tasks_per_child=1) as pool:
            return pool.submit(peak_extra_mb, side, *row, threads).result()
    finally:
        if saved is None:
            os.environ.pop("MALLOC_MMAP_THRESHOLD_")
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="slmops bench kd", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small shapes (a smoke run)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--json", type=Path, help="write the rows as JSON")
    parser.add_argument("--markdown", type=Path, help="write the table as Markdown")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    torch.set_num_threads(args.threads)
    slmops.set_num_threads(args.threads)

    header = (
        f"KD loss, fp32 forward + backward, T={TEMPERATURE}; {cpu_name()}, {args.threads} threads, "
        f"torch {torch.__version__}, slmops {slmops.__version__}, {platform.python_version()}"
    )
    print(header, flush=True)
    rows = []
    for case, divergence, n, h, v in QUICK if args.quick else FULL:
        shape = f"N={n} V={v}" + (f" H={h}" if h else "")
        inputs = make_inputs(case, n, h, v)
        times: dict[str, list[float]] = {"eager": [], "slmops": []}
        grads = {}
        for rep in range(args.repeats + 1):
            for side in times:
                t0 = time.perf_counter()
                grads[side] = run_step(side, case, divergence, inputs)
                if rep:  # the first run of each side is the warm-up
                    times[side].append(time.perf_counter() - t0)
        check = max(
            float((a - b).abs().max() / b.abs().max())
            for a, b in zip(grads["slmops"], grads["eager"], strict=True)
        )
        eager_s, ours_s = statistics.median(times["eager"]), statistics.median(times["slmops"])
        row = {
            "case": case,
            "divergence": divergence,
            "shape": shape,
            "eager_s": eager_s,
            "slmops_s": ours_s,
            "speedup": eager_s / ours_s,
            "grad_check": check,
        }
        if not args.no_memory:
            key = (case, divergence, n, h, v)
            row["eager_mb"] = measure_memory("eager", key, args.threads)
            row["slmops_mb"] = measure_memory("slmops", key, args.threads)
            row["memory_ratio"] = row["slmops_mb"] / max(row["eager_mb"], 1e-9)
        rows.append(row)
        print(
            f"  {case} {divergence} {shape}: {eager_s:.2f} s -> {ours_s:.2f} s ({eager_s / ours_s:.2f}x)"
            + (f", {row['eager_mb']:.0f} -> {row['slmops_mb']:.0f} MB" if "eager_mb" in row else ""),
            flush=True,
        )

    lines = [
        f"_{header}_",
        "",
        "| case | divergence | shape | eager s | slmops s | speedup | eager extra MB | slmops extra MB "
        "| memory ratio | grad check |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mem = (
            f"{r['eager_mb']:.0f} | {r['slmops_mb']:.0f} | {r['memory_ratio']:.3f}"
            if "eager_mb" in r
            else "- | - | -"
        )
        lines.append(
            f"| {r['case']} | {r['divergence']} | {r['shape']} | {r['eager_s']:.3f} | {r['slmops_s']:.3f} "
            f"| {r['speedup']:.2f}x | {mem} | {r['grad_check']:.1e} |"
        )
    write_results("\n".join(lines), header, rows, args.markdown, args.json)
    return 0
