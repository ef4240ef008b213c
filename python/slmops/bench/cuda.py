"""The CUDA kernels against the GPU's limits and cuBLAS / PyTorch eager, side by side in
one run on one GPU (the issue's targets in brackets):

  * int4 GEMV, M = 1, bf16 activations: the weight bytes read per second against the
    device-to-device copy bandwidth measured in the same run (>= 80%)
  * int4 GEMM, M = 16 to 64, fp16: the tensor-core kernel against torch.matmul (cuBLAS)
    on the dense fp16 weight (>= 3x)
  * W8A8, M = 512, fp16: cuBLASLt int8 with our quantize / rescale passes against the
    dense fp16 torch.matmul (>= 1.6x)
  * KD loss, forward KL forward + backward, bf16 logits: against PyTorch eager
    (log_softmax, kl_div, backward), time (>= 2x) and peak memory (<= 1/4)
  * fused linear KD: hidden @ head chunk by chunk against eager logits + loss + backward

Time: CUDA events, the median of --repeats runs after warm-up. Memory: the peak of
torch.cuda.max_memory_allocated during one run, less what was allocated before it.

    slmops bench cuda                 # the issue's shapes (an H100 / H200: ~2 min)
    slmops bench cuda --quick         # small shapes
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import slmops
from slmops.ops import fused_linear_kd_loss, kd_loss, qmatmul, quantize
from slmops.ops.kd import TeacherHidden

from .quality import write_results


def gpu_time_ms(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def peak_mib(fn: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def copy_bandwidth_gbs(nbytes: int, repeats: int) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = gpu_time_ms(lambda: dst.copy_(src), repeats)
    return 2 * nbytes / ms / 1e6  # read + write


def row(case: str, ms: float | None, base: str, base_ms: float | None, ratio: float, target: str) -> dict:
    return {"case": case, "slmops_ms": ms, "baseline": base, "baseline_ms": base_ms, "ratio": ratio,
            "target": target}  # fmt: skip


def bench_gemv(shapes: list[tuple[int, int]], repeats: int, copy_gbs: float) -> list[dict]:
    rows = []
    for n, k in shapes:
        qw = quantize(torch.randn(n, k) * 0.05, "int4", group_size=128).to("cuda")
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        ms = gpu_time_ms(lambda x=x, qw=qw: qmatmul(x, qw, backend="gemv"), repeats)
        ratio = qw.nbytes / ms / 1e6 / copy_gbs
        rows.append(row(f"int4 GEMV M=1 {n}x{k}", ms, f"copy {copy_gbs:.0f} GB/s", None, ratio, ">= 0.80"))
    return rows


def bench_gemm(shapes: list[tuple[int, int]], ms_list: list[int], repeats: int) -> list[dict]:
    rows = []
    for n, k in shapes:
        w = torch.randn(n, k) * 0.05
        qw = quantize(w, "int4", group_size=128).to("cuda")
        w16 = w.to("cuda", torch.float16)
        for m in ms_list:
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            ours = gpu_time_ms(lambda x=x, qw=qw: qmatmul(x, qw, backend="tensor_core"), repeats)
            dense = gpu_time_ms(lambda x=x, w16=w16: x @ w16.T, repeats)
            rows.append(row(f"int4 GEMM M={m} {n}x{k}", ours, "cuBLAS fp16", dense, dense / ours, ">= 3x"))
    return rows


def bench_w8a8(shapes: list[tuple[int, int]], m: int, repeats: int) -> list[dict]:
    rows = []
    for n, k in shapes:
        w = torch.randn(n, k) * 0.05
        qw = quantize(w, "int8").to("cuda")
        w16 = w.to("cuda", torch.float16)
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        ours = gpu_time_ms(lambda x=x, qw=qw: qmatmul(x, qw, activation="int8_row"), repeats)
        dense = gpu_time_ms(lambda x=x, w16=w16: x @ w16.T, repeats)
        rows.append(row(f"W8A8 M={m} {n}x{k}", ours, "cuBLAS fp16", dense, dense / ours, ">= 1.6x"))
    return rows


def eager_kd(z: torch.Tensor, t: torch.Tensor) -> None:
    lq = torch.log_softmax(z.float() / 2, -1)
    lp = torch.log_softmax(t.float() / 2, -1)
    loss = F.kl_div(lq, lp, log_target=True, reduction="sum") * 4 / z.shape[0]
    loss.backward()


def bench_kd(n: int, v: int, repeats: int) -> list[dict]:
    z = (torch.randn(n, v, device="cuda") * 3).to(torch.bfloat16)
    t = (torch.randn(n, v, device="cuda") * 3).to(torch.bfloat16)

    def ours() -> None:
        kd_loss(z, t, temperature=2.0, return_grad=True)

    def eager() -> None:
        eager_kd(z.detach().requires_grad_(), t)

    ms_ours, ms_eager = gpu_time_ms(ours, repeats), gpu_time_ms(eager, repeats)
    mem_ours, mem_eager = peak_mib(ours), peak_mib(eager)
    return [
        row(f"KD loss bf16 N={n} V={v}", ms_ours, "eager PyTorch", ms_eager, ms_eager / ms_ours, ">= 2x"),
        row(f"KD loss peak MiB {mem_ours:.0f} vs {mem_eager:.0f}", None, "eager PyTorch", None,
            mem_ours / mem_eager, "<= 0.25"),
    ]  # fmt: skip


def bench_fused(n: int, h: int, v: int, repeats: int) -> list[dict]:
    hid = torch.randn(n, h, device="cuda", dtype=torch.bfloat16)
    w = (torch.randn(v, h, device="cuda") / h**0.5).to(torch.bfloat16)
    th = torch.randn(n, h, device="cuda", dtype=torch.bfloat16)
    tw = (torch.randn(v, h, device="cuda") / h**0.5).to(torch.bfloat16)

    def ours() -> None:
        fused_linear_kd_loss(
            hid, w, TeacherHidden(th, tw), temperature=2.0, grad_hidden=True, grad_weight=True
        )

    def eager() -> None:
        hh, ww = hid.detach().requires_grad_(), w.detach().requires_grad_()
        with torch.no_grad():
            t = th @ tw.T
        eager_kd(hh @ ww.T, t)

    ms_ours, ms_eager = gpu_time_ms(ours, repeats), gpu_time_ms(eager, repeats)
    mem_ours, mem_eager = peak_mib(ours), peak_mib(eager)
    return [
        row(f"fused linear KD bf16 N={n} H={h} V={v}", ms_ours, "eager PyTorch", ms_eager, ms_eager / ms_ours,
            "~3.5x (Liger)"),
        row(f"fused linear KD peak MiB {mem_ours:.0f} vs {mem_eager:.0f}", None, "eager PyTorch", None,
            mem_ours / mem_eager, "~1/6 (Liger)"),
    ]  # fmt: skip


def table(rows: list[dict], device: str) -> str:
    lines = [
        f"slmops bench cuda on {device} (slmops {slmops.__version__}, torch {torch.__version__})",
        "",
        "| case | slmops ms | baseline | baseline ms | ratio | target |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        fmt = lambda v: "" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append(
            f"| {r['case']} | {fmt(r['slmops_ms'])} | {r['baseline']} | {fmt(r['baseline_ms'])} | "
            f"{r['ratio']:.2f} | {r['target']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="slmops bench cuda", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--markdown", type=Path, help="write the table here")
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args(argv)
    if not (torch.cuda.is_available() and slmops.build_info()["cuda"]):
        raise SystemExit(
            "slmops bench cuda needs a CUDA GPU and an slmops built with CUDA (slmops info says which)"
        )
    device = torch.cuda.get_device_name()
    if args.quick:
        copy = copy_bandwidth_gbs(256 << 20, args.repeats)
        rows = bench_gemv([(1024, 4096)], args.repeats, copy) + bench_gemm([(1024, 4096)], [16], args.repeats)
        rows += bench_w8a8([(1024, 4096)], 512, args.repeats) + bench_kd(512, 32000, args.repeats)
        rows += bench_fused(512, 1024, 32000, args.repeats)
    else:
        copy = copy_bandwidth_gbs(2 << 30, args.repeats)
        big = [(14336, 4096), (4096, 14336)]  # (out_features N, in_features K)
        rows = bench_gemv(big, args.repeats, copy) + bench_gemm(big, [16, 32, 64], args.repeats)
        rows += bench_w8a8(big, 512, args.repeats) + bench_kd(8192, 128256, args.repeats)
        rows += bench_fused(8192, 4096, 128256, args.repeats)
    write_results(table(rows, device), device, rows, args.markdown, args.json)
    return 0
