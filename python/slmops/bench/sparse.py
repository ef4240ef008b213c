"""Sparse matmul against dense, side by side in one run, the shapes of ``bench qmatmul``.

For each weight shape (N, K): GEMV (M = 1) with 2:4 fp32, bf16 and int4 values (float and
int8 activations), 4:8 fp32 and CSR at 90% next to the dense products they replace: fp32
and bf16 through torch (oneDNN/MKL), int4 through slmops' qmatmul with the same activation
mode (its int8 one is its fastest path). GEMV timings rotate through enough copies of every
weight to exceed three times the last-level cache, so weights come from memory as in a
decode step. GEMM (M = 128): 2:4 and 4:8 fp32 against the dense fp32 GEMM through oneDNN
(slmops' sgemm) and torch. CSR break-even: for the first shape, CSR at 50% to 95%
sparsity against dense fp32 at M = 1 and 128, and the sparsity from which CSR is faster.

    slmops bench sparse                  # every shape (under 10 min on the 2-core dev VM)
    slmops bench sparse --quick          # 4096x14336 only
    slmops bench sparse --json sparse.json --markdown sparse.md
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import slmops
from slmops.ops import qmatmul, quantize, sparsify, spmm

from .qmatmul import SHAPES, llc_bytes
from .quality import cpu_name, write_results

CSR_SWEEP = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
# (ratio name, case, baseline, target): the targets.
TARGETS = [
    ("2:4 fp32 GEMV vs dense fp32", "2:4 fp32", "dense fp32", 1, 1.6),
    ("2:4 bf16 GEMV vs dense bf16", "2:4 bf16", "dense bf16", 1, 1.6),
    ("2:4 int4 GEMV vs dense int4 (float act)", "2:4 int4", "dense int4", 1, 1.4),
    ("2:4 int4 GEMV vs dense int4 (int8 act)", "2:4 int4 int8-act", "dense int4 int8-act", 1, 1.4),
    ("CSR 90% GEMV vs dense fp32", "csr 90%", "dense fp32", 1, 4.0),
    ("2:4 fp32 GEMM M=128 vs oneDNN fp32", "2:4 fp32", "dense fp32 onednn", 128, 1.2),
]


def unstructured(w: np.ndarray, sparsity: float, seed: int) -> np.ndarray:
    out = w.copy()
    out[np.random.default_rng(seed).random(w.shape) < sparsity] = 0.0
    return out


def rotating(copies: list, fn):
    """fn(x, copy) over the copies in turn: each call reads a weight not in cache."""
    state = {"i": 0}

    def call(x):
        state["i"] += 1
        return fn(x, copies[state["i"] % len(copies)])

    return call


def gemv_cases(w: np.ndarray, llc: int) -> dict[str, tuple]:
    """name -> (bytes of one weight, function of x) for M = 1."""
    n_copies = lambda nbytes: max(1, math.ceil(3 * llc / nbytes))  # noqa: E731
    variants = lambda a, i: a * np.float32(1 + 1e-3 * i)  # noqa: E731 - distinct copies, same sparsity
    cases: dict[str, tuple] = {}
    dense = [torch.from_numpy(variants(w, i)) for i in range(n_copies(w.nbytes))]
    cases["dense fp32"] = (w.nbytes, rotating(dense, lambda x, c: torch.from_numpy(x) @ c.T))
    dense16 = [c.bfloat16() for c in dense[: n_copies(w.nbytes // 2)]]
    bf16_matmul = lambda x, c: torch.from_numpy(x).bfloat16() @ c.T  # noqa: E731
    cases["dense bf16"] = (w.nbytes // 2, rotating(dense16, bf16_matmul))
    q = [quantize(variants(w, i), "int4", group_size=32) for i in range(n_copies(w.nbytes // 7))]
    for c in q:
        c.packed()
    cases["dense int4"] = (q[0].nbytes, rotating(q, lambda x, c: qmatmul(x, c)))
    cases["dense int4 int8-act"] = (q[0].nbytes, rotating(q, lambda x, c: qmatmul(x, c, activation="int8")))
    pruned = sparsify(w, "2:4", prune=True).to_dense()
    for label, pattern, values, source in [
        ("2:4 fp32", "2:4", "float32", pruned),
        ("2:4 bf16", "2:4", "bfloat16", pruned),
        ("2:4 int4", "2:4", "int4", pruned),
        ("4:8 fp32", "4:8", "float32", sparsify(w, "4:8", prune=True).to_dense()),
        ("csr 90%", "csr", "float32", unstructured(w, 0.9, 1)),
        ("csr 50%", "csr", "float32", unstructured(w, 0.5, 1)),
    ]:
        first = sparsify(source, pattern, values=values)
        copies = [first] + [sparsify(variants(source, i), pattern, values=values) for i in
                            range(1, n_copies(first.nbytes))]  # fmt: skip
        cases[label] = (first.nbytes, rotating(copies, lambda x, c: spmm(x, c)))
        if values == "int4":
            int8_act = lambda x, c: spmm(x, c, activation="int8")  # noqa: E731
            cases["2:4 int4 int8-act"] = (first.nbytes, rotating(copies, int8_act))
    return cases


def gemm_cases(w: np.ndarray) -> dict[str, tuple]:
    y = {}

    def onednn(x):
        out = y.setdefault(x.shape, np.empty((x.shape[0], w.shape[0]), np.float32))
        slmops._C.sgemm_nt(x, w, out)
        return out

    wt = torch.from_numpy(w)
    cases: dict[str, tuple] = {
        "dense fp32 onednn": (w.nbytes, onednn),
        "dense fp32": (w.nbytes, lambda x: torch.from_numpy(x) @ wt.T),
    }
    for label, pattern, source in [
        ("2:4 fp32", "2:4", w),
        ("4:8 fp32", "4:8", w),
        ("csr 90%", "csr", unstructured(w, 0.9, 1)),
        ("csr 50%", "csr", unstructured(w, 0.5, 1)),
    ]:
        sw = sparsify(source, pattern, prune=pattern != "csr")
        cases[label] = (sw.nbytes, lambda x, sw=sw: spmm(x, sw))
    return cases


def interleaved_medians(
    fns: dict[str, Any], budget: float, repeats: int, rounds: int = 5
) -> dict[str, float]:
    """Median time of each function over ``rounds`` rounds that take every function in turn
    (each round a share of the budget and repeats): a shared machine's slow spells then
    fall on the baseline and the candidate alike instead of on one of them."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm up: packing, page faults, thread pool
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(max(1, repeats // rounds)):
                t = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t)
                if time.perf_counter() - start > budget / rounds:
                    break
    return {name: statistics.median(v) for name, v in samples.items()}


def measure(cases: dict[str, tuple], n: int, k: int, m: int, args, rows: list[dict]) -> None:
    x = np.random.default_rng(m).standard_normal((m, k)).astype(np.float32)
    times = interleaved_medians(
        {name: (lambda f=f: f(x)) for name, (_, f) in cases.items()}, args.budget, args.repeats
    )
    for name, (nbytes, _) in cases.items():
        t = times[name]
        row = dict(case=name, N=n, K=k, M=m, median_s=t, weight_bytes=nbytes, gbps=nbytes / t / 1e9,
                   gflops_dense=2 * m * n * k / t / 1e9)  # fmt: skip
        for base in ("dense fp32", "dense fp32 onednn", "dense bf16", "dense int4", "dense int4 int8-act"):
            if base in times and base != name:
                row[f"vs {base}"] = times[base] / times[name]
        rows.append(row)
        print(
            f"  {name:20s} {n:>6}x{k:<6} M={m:<4} {times[name] * 1e3:9.3f} ms {row['gbps']:7.1f} GB/s "
            f"{row['gflops_dense']:7.1f} GFLOP/s (dense-equivalent)"
            + (f"  x{row['vs dense fp32']:.2f} vs dense fp32" if "vs dense fp32" in row else ""),
            flush=True,
        )


def csr_break_even(w: np.ndarray, m: int, args) -> dict:
    """CSR against dense fp32 over sparsities; the interpolated sparsity where it breaks even."""
    x = np.random.default_rng(m).standard_normal((m, w.shape[1])).astype(np.float32)
    wt = torch.from_numpy(w)
    fns: dict[Any, Any] = {"dense": lambda: torch.from_numpy(x) @ wt.T}
    for s in CSR_SWEEP:
        sw = sparsify(unstructured(w, s, 2), "csr")
        fns[s] = lambda sw=sw: spmm(x, sw)
    times = interleaved_medians(fns, args.budget, args.repeats)
    ratios = {s: times["dense"] / times[s] for s in CSR_SWEEP}
    even = None
    points = sorted(ratios.items())
    if points[0][1] >= 1.0:
        even = f"<= {points[0][0]:.0%}"
    for (s0, r0), (s1, r1) in zip(points, points[1:], strict=False):
        if even is None and r0 < 1.0 <= r1:
            even = f"{s0 + (1.0 - r0) * (s1 - s0) / (r1 - r0):.0%}"
    print(
        f"  CSR vs dense fp32, {w.shape[0]}x{w.shape[1]}, M={m}: "
        + ", ".join(f"{s:.0%} {r:.2f}x" for s, r in points)
        + f"; breaks even at {even or '> 95%'} sparsity",
        flush=True,
    )
    return {"M": m, "ratios": {f"{s:.2f}": r for s, r in points}, "break_even": even or "> 95%"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="slmops bench sparse", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="4096x14336 only")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per measurement at most")
    parser.add_argument("--budget", type=float, default=1.5, help="seconds per measurement at most")
    parser.add_argument("--json", type=Path, help="write the rows as JSON")
    parser.add_argument("--markdown", type=Path, help="write the summary table as Markdown")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    slmops.set_num_threads(args.threads)
    header = (
        f"sparse matmul, {cpu_name()}, {args.threads} threads, torch {torch.__version__}, "
        f"slmops {slmops.__version__} ({slmops.build_info()['cpu_isa']}), {platform.python_version()}"
    )
    print(header, flush=True)
    shapes = [(4096, 14336)] if args.quick else SHAPES
    llc = llc_bytes()
    rows: list[dict] = []
    for n, k in shapes:
        w = (np.random.default_rng(0).standard_normal((n, k)) * 0.02).astype(np.float32)
        measure(gemv_cases(w, llc), n, k, 1, args, rows)
        measure(gemm_cases(w), n, k, 128, args, rows)
    n, k = shapes[0]
    w = (np.random.default_rng(0).standard_normal((n, k)) * 0.02).astype(np.float32)
    break_even = [csr_break_even(w, m, args) for m in (1, 128)]

    lines = [f"_{header}_", "", "| target | shape | ratio | target | |", "|---|---|---:|---:|---|"]
    for label, case, base, m, target in TARGETS:
        for r in rows:
            if r["case"] == case and r["M"] == m and f"vs {base}" in r:
                ratio = r[f"vs {base}"]
                verdict = "meets" if ratio >= target else f"MISSES (by {1 - ratio / target:.0%})"
                lines.append(f"| {label} | {r['N']}x{r['K']} | {ratio:.2f}x | {target}x | {verdict} |")
    sweep = " | ".join(f"{s:.0%}" for s in CSR_SWEEP)
    align = "|---|" + "---:|" * len(CSR_SWEEP) + "---|"
    lines += ["", f"| CSR vs dense fp32 | {sweep} | breaks even at |", align]
    for b in break_even:
        ratios = " | ".join(f"{r:.2f}x" for r in b["ratios"].values())
        lines.append(f"| {n}x{k}, M={b['M']} | {ratios} | {b['break_even']} |")
    write_results("\n".join(lines), header, rows + [{"csr_break_even": break_even}], args.markdown, args.json)
    return 0
