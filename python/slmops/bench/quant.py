"""Quantize and dequantize throughput of slmops per format and CPU kernel set, side by
side with a plain vectorized numpy implementation of the same format, in one run.

Every slmops row is timed against the baseline measured in the same process on the same
weight: the speedup column (baseline time / slmops time) is the number to quote, not the
absolute times of a shared machine. The baselines write the same bytes as slmops (the
``check`` column says how close they came), so both sides do the same work.

    slmops bench quant                      # all formats, both shapes, ~70 s
    slmops bench quant --quick              # one small shape, ~10 s
    slmops bench quant --formats q4_0,nf4 --shapes 4096x4096 --json out.jsonl

GB/s is the fp32 weight's size (rows * K * 4 bytes) over the time, for both ops, so it
compares across formats and with the read/copy bandwidth rows measured at the start.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import slmops
from slmops import _C

F32 = np.float32


# ---------------------------------------------------------------------------------------
# numpy baselines: one quantize (w -> the buffers slmops writes) and one dequantize
# (slmops' buffers -> fp32) per format, whole-tensor vectorized, same rounding rules.
# ---------------------------------------------------------------------------------------
def _recip(s: np.ndarray) -> np.ndarray:
    """1/s where s != 0, else 0 (float32)."""
    out = np.zeros_like(s, dtype=F32)
    np.divide(F32(1), s, out=out, where=s != 0)
    return out


def _round_away(v: np.ndarray) -> np.ndarray:
    """C roundf: half away from zero, exact for every float32."""
    a = np.abs(v)
    fl = np.floor(a)
    fl += (a - fl) >= F32(0.5)
    return np.copysign(fl, v)


def _signed_absmax(x: np.ndarray) -> np.ndarray:
    """Value of largest magnitude along the last axis, keeping its sign (first wins)."""
    idx = np.abs(x).argmax(axis=-1)[..., None]
    return np.take_along_axis(x, idx, axis=-1)[..., 0]


def _f16_bytes(v: np.ndarray) -> np.ndarray:
    """float32 [..] -> fp16 bytes [.., 2]."""
    return np.ascontiguousarray(v.astype(np.float16)).view(np.uint8).reshape(*v.shape, 2)


def _f16_load(b: np.ndarray) -> np.ndarray:
    """fp16 bytes [.., 2] -> float32 [..]."""
    return np.ascontiguousarray(b).view(np.float16)[..., 0].astype(F32)


def _pack_nibbles(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return lo.astype(np.uint8) | (hi.astype(np.uint8) << np.uint8(4))


# int8: one symmetric scale per row, absmax / 127, round half to even.
def np_quantize_int8(w: np.ndarray) -> dict[str, np.ndarray]:
    s = np.abs(w).max(axis=1, keepdims=True) / F32(127)
    q = np.clip(np.rint(w * _recip(s)), -127, 127).astype(np.int8)
    return {"data": q, "scales": s}


def np_dequantize_int8(t: dict[str, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    return t["data"].astype(F32) * t["scales"]


# int4 group-wise, MatMulNBits layout: element 2i in the low nibble.
def np_quantize_int4(w: np.ndarray, group: int, symmetric: bool) -> dict[str, np.ndarray]:
    n, k = w.shape
    x = w.reshape(n, k // group, group)
    out: dict[str, np.ndarray] = {}
    if symmetric:
        scale = _signed_absmax(x) / F32(-8)
        inv = _recip(scale)
        zp = np.full(scale.shape, 8, dtype=F32)
    else:
        mn = np.minimum(x.min(axis=2), F32(0))
        mx = np.maximum(x.max(axis=2), F32(0))
        scale = (mx - mn) / F32(15)
        inv = _recip(scale)
        zp = np.where(scale != 0, np.clip(np.rint(-mn * inv), 0, 15), F32(8)).astype(F32)
        zpu = zp.astype(np.uint8)
        if zpu.shape[1] % 2:
            zpu = np.pad(zpu, ((0, 0), (0, 1)))
        out["zero_points"] = _pack_nibbles(zpu[:, 0::2], zpu[:, 1::2])
    codes = np.clip(np.rint(x * inv[..., None]) + zp[..., None], 0, 15).astype(np.uint8)
    out["data"] = _pack_nibbles(codes[..., 0::2], codes[..., 1::2]).reshape(n, k // 2)
    out["scales"] = scale
    return out


def np_dequantize_int4(t: dict[str, np.ndarray], shape: tuple[int, int], group: int) -> np.ndarray:
    n, k = shape
    d = t["data"].reshape(n, k // group, group // 2)
    codes = np.stack([d & np.uint8(0xF), d >> np.uint8(4)], axis=-1).reshape(n, k // group, group)
    if "zero_points" in t:
        z = t["zero_points"]
        zp = np.stack([z & np.uint8(0xF), z >> np.uint8(4)], axis=-1).reshape(n, -1)[:, : k // group]
        codes = codes.astype(np.int8) - zp.astype(np.int8)[..., None]
    else:
        codes = codes.astype(np.int8) - np.int8(8)
    return (codes.astype(F32) * t["scales"][..., None]).reshape(n, k)


# nf4: absmax per block of 64, nearest code (ties to the lower one), element 2i HIGH nibble.
# The QLoRA NormalFloat4 values (bitsandbytes get_4bit_type), written out independently of slmops.
NF4 = np.array(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ],
    dtype=F32,
)
NF4_MID = (NF4[:-1] + NF4[1:]) * F32(0.5)


def np_quantize_nf4(w: np.ndarray, block: int = 64) -> dict[str, np.ndarray]:
    n, k = w.shape
    x = w.reshape(n, k // block, block)
    m = np.abs(x).max(axis=2)
    codes = np.searchsorted(NF4_MID, x * _recip(m)[..., None], side="left").astype(np.uint8)
    return {"data": _pack_nibbles(codes[..., 1::2], codes[..., 0::2]).reshape(n, k // 2), "scales": m}


def np_dequantize_nf4(t: dict[str, np.ndarray], shape: tuple[int, int], block: int = 64) -> np.ndarray:
    n, k = shape
    d = t["data"]
    codes = np.stack([d >> np.uint8(4), d & np.uint8(0xF)], axis=-1).reshape(n, k // block, block)
    return (NF4[codes] * t["scales"][..., None]).reshape(n, k)


# ternary (BitNet b1.58): one absmean scale, codes v+1, four per byte, element i at bits 2*(i%4).
_SHIFT2 = np.array([0, 2, 4, 6], dtype=np.uint8)


def np_quantize_ternary(w: np.ndarray) -> dict[str, np.ndarray]:
    n, k = w.shape
    scale = max(F32(np.abs(w).sum(dtype=np.float64) / w.size), F32(1e-5))
    codes = (np.clip(np.rint(w * (F32(1) / scale)), -1, 1) + 1).astype(np.uint8).reshape(n, k // 4, 4)
    data = np.bitwise_or.reduce(codes << _SHIFT2, axis=-1)
    return {"data": data, "scales": np.array([scale], dtype=F32)}


def np_dequantize_ternary(t: dict[str, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    n, k = shape
    codes = (t["data"][..., None] >> _SHIFT2) & np.uint8(3)
    return (codes.reshape(n, k).astype(np.int8) - np.int8(1)).astype(F32) * t["scales"][0]


# GGUF q4_0: {fp16 d, qs[16]}, d = signed absmax / -8, q = min(15, trunc(x/d + 8.5)).
def np_quantize_q4_0(w: np.ndarray) -> dict[str, np.ndarray]:
    n, k = w.shape
    x = w.reshape(-1, 32)
    d = _signed_absmax(x) / F32(-8)
    q = np.minimum(np.trunc(x * _recip(d)[:, None] + F32(8.5)), F32(15)).astype(np.uint8)
    blocks = np.concatenate([_f16_bytes(d), _pack_nibbles(q[:, :16], q[:, 16:])], axis=1)
    return {"data": blocks.reshape(n, -1)}


def np_dequantize_q4_0(t: dict[str, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    b = t["data"].reshape(-1, 18)
    qs = b[:, 2:]
    q = np.concatenate([qs & np.uint8(0xF), qs >> np.uint8(4)], axis=1).astype(np.int8) - np.int8(8)
    return (_f16_load(b[:, :2])[:, None] * q.astype(F32)).reshape(shape)


# GGUF q8_0: {fp16 d, int8 qs[32]}, d = absmax / 127, roundf.
def np_quantize_q8_0(w: np.ndarray) -> dict[str, np.ndarray]:
    n, k = w.shape
    x = w.reshape(-1, 32)
    d = np.abs(x).max(axis=1) / F32(127)
    q = _round_away(x * _recip(d)[:, None]).astype(np.int8).view(np.uint8)
    return {"data": np.concatenate([_f16_bytes(d), q], axis=1).reshape(n, -1)}


def np_dequantize_q8_0(t: dict[str, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    b = t["data"].reshape(-1, 34)
    q = np.ascontiguousarray(b[:, 2:]).view(np.int8)
    return (q.astype(F32) * _f16_load(b[:, :2])[:, None]).reshape(shape)


# GGUF q4_k: super-blocks of 256 = 8 sub-blocks of 32, x = d*ls*q - dmin*lm, with the
# min/max quantizer of slmops (6-bit sub-scales against fp16 super-scales, then codes
# rounded against the scales the decoder uses).
def np_quantize_q4_k(w: np.ndarray) -> dict[str, np.ndarray]:
    n, k = w.shape
    x = w.reshape(-1, 8, 32)
    mn = np.minimum(x.min(axis=2), F32(0))
    scale = (x.max(axis=2) - mn) / F32(15)
    negmin = -mn
    max_scale, max_min = scale.max(axis=1), negmin.max(axis=1)
    inv_s = np.where(max_scale > 0, F32(63) / np.where(max_scale > 0, max_scale, F32(1)), F32(0))
    inv_m = np.where(max_min > 0, F32(63) / np.where(max_min > 0, max_min, F32(1)), F32(0))
    ls = np.minimum(np.rint(inv_s[:, None] * scale), 63).astype(np.uint8)
    lm = np.minimum(np.rint(inv_m[:, None] * negmin), 63).astype(np.uint8)
    d16, dmin16 = _f16_bytes(max_scale / F32(63)), _f16_bytes(max_min / F32(63))
    dl = _f16_load(d16)[:, None] * ls.astype(F32)
    ml = _f16_load(dmin16)[:, None] * lm.astype(F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(dl[..., None] != 0, np.clip(np.rint((x + ml[..., None]) / dl[..., None]), 0, 15), F32(0))
    q = q.astype(np.uint8).reshape(-1, 4, 2, 32)
    sc = np.concatenate(
        [
            ls[:, :4] | ((ls[:, 4:] >> np.uint8(4)) << np.uint8(6)),
            lm[:, :4] | ((lm[:, 4:] >> np.uint8(4)) << np.uint8(6)),
            _pack_nibbles(ls[:, 4:] & np.uint8(0xF), lm[:, 4:] & np.uint8(0xF)),
        ],
        axis=1,
    )
    qs = _pack_nibbles(q[:, :, 0, :], q[:, :, 1, :]).reshape(-1, 128)
    return {"data": np.concatenate([d16, dmin16, sc, qs], axis=1).reshape(n, -1)}


def np_dequantize_q4_k(t: dict[str, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    b = t["data"].reshape(-1, 144)
    d, dmin = _f16_load(b[:, 0:2]), _f16_load(b[:, 2:4])
    s = b[:, 4:16]
    six = np.uint8(63)
    hi2 = np.uint8(6)
    sc = np.concatenate(
        [s[:, 0:4] & six, (s[:, 8:12] & np.uint8(0xF)) | ((s[:, 0:4] >> hi2) << np.uint8(4))], axis=1
    )
    m = np.concatenate(
        [s[:, 4:8] & six, (s[:, 8:12] >> np.uint8(4)) | ((s[:, 4:8] >> hi2) << np.uint8(4))], axis=1
    )
    qs = b[:, 16:].reshape(-1, 4, 1, 32)
    q = (np.concatenate([qs & np.uint8(0xF), qs >> np.uint8(4)], axis=2)).reshape(-1, 8, 32)
    dl = (d[:, None] * sc.astype(F32))[..., None]
    ml = (dmin[:, None] * m.astype(F32))[..., None]
    return (dl * q.astype(F32) - ml).reshape(shape)


# GGUF q6_k: 16 sub-blocks of 16 with int8 sub-scales (signed absmax / -32), 6-bit codes q+32.
def np_quantize_q6_k(w: np.ndarray) -> dict[str, np.ndarray]:
    n, k = w.shape
    x = w.reshape(-1, 16, 16)
    scale = _signed_absmax(x) / F32(-32)
    max_scale = _signed_absmax(scale)
    nonzero = max_scale != 0
    iscale = np.where(nonzero, F32(-128) / np.where(nonzero, max_scale, F32(1)), F32(0))
    scales = np.minimum(np.rint(iscale[:, None] * scale), 127).astype(np.int8)
    d16 = _f16_bytes(_recip(iscale))
    dl = _f16_load(d16)[:, None] * scales.astype(F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        L = np.where(dl[..., None] != 0, np.clip(np.rint(x / dl[..., None]), -32, 31) + 32, F32(32))
    L = L.astype(np.uint8)
    L[~nonzero] = 0  # an all-zero super-block is all-zero bytes, as in ggml
    lo = (L & np.uint8(0xF)).reshape(-1, 2, 2, 64)
    ql = _pack_nibbles(lo[:, :, 0], lo[:, :, 1]).reshape(-1, 128)
    hi = (L >> np.uint8(4)).reshape(-1, 2, 4, 32) << _SHIFT2[:, None]
    qh = np.bitwise_or.reduce(hi, axis=2).reshape(-1, 64)
    blocks = np.concatenate([ql, qh, scales.view(np.uint8), d16], axis=1)
    return {"data": blocks.reshape(n, -1)}


def np_dequantize_q6_k(t: dict[str, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    b = t["data"].reshape(-1, 210)
    ql = b[:, :128].reshape(-1, 2, 1, 64)
    qh = b[:, 128:192].reshape(-1, 2, 1, 32)
    lo = np.concatenate([ql & np.uint8(0xF), ql >> np.uint8(4)], axis=2).reshape(-1, 256)
    hi = ((qh >> _SHIFT2[:, None]) & np.uint8(3)).reshape(-1, 256)
    q = (lo | (hi << np.uint8(4))).astype(np.int8) - np.int8(32)
    sc = np.ascontiguousarray(b[:, 192:208]).view(np.int8).astype(F32)
    dl = (_f16_load(b[:, 208:210])[:, None] * sc)[..., None]
    return (dl * q.reshape(-1, 16, 16).astype(F32)).reshape(shape)


# GGUF tq2_0: {qs[64], fp16 d}, d = absmax, codes roundf(x/d)+1; byte 32c+m holds
# elements 128c + 32n + m at bits 2n.
def np_quantize_tq2_0(w: np.ndarray) -> dict[str, np.ndarray]:
    n, k = w.shape
    x = w.reshape(-1, 256)
    d = np.abs(x).max(axis=1)
    codes = (_round_away(x * _recip(d)[:, None]) + 1).astype(np.uint8).reshape(-1, 2, 4, 32)
    qs = np.bitwise_or.reduce(codes << _SHIFT2[:, None], axis=2).reshape(-1, 64)
    return {"data": np.concatenate([qs, _f16_bytes(d)], axis=1).reshape(n, -1)}


def np_dequantize_tq2_0(t: dict[str, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    b = t["data"].reshape(-1, 66)
    codes = ((b[:, :64].reshape(-1, 2, 1, 32) >> _SHIFT2[:, None]) & np.uint8(3)).reshape(-1, 256)
    return (_f16_load(b[:, 64:66])[:, None] * (codes.astype(np.int8) - np.int8(1)).astype(F32)).reshape(shape)


# ---------------------------------------------------------------------------------------
# Format table: name -> slmops options and baselines.
# ---------------------------------------------------------------------------------------
@dataclass
class Format:
    name: str
    slmops_format: str
    options: dict[str, Any] = field(default_factory=dict)
    k_multiple: int = 1  # K the numpy baseline needs (slmops itself handles ragged int4/int8)
    np_quantize: Callable[[np.ndarray], dict[str, np.ndarray]] | None = None
    np_dequantize: Callable[[dict[str, np.ndarray], tuple[int, int]], np.ndarray] | None = None
    gguf_type: str | None = None  # GGMLQuantizationType name, for --baseline gguf


FORMATS = {
    f.name: f
    for f in [
        Format("int8", "int8", {}, 1, np_quantize_int8, np_dequantize_int8),
        Format(
            "int4_g32_sym",
            "int4",
            {"group_size": 32, "symmetric": True},
            32,
            lambda w: np_quantize_int4(w, 32, True),
            lambda t, s: np_dequantize_int4(t, s, 32),
        ),
        Format(
            "int4_g128_asym",
            "int4",
            {"group_size": 128, "symmetric": False},
            128,
            lambda w: np_quantize_int4(w, 128, False),
            lambda t, s: np_dequantize_int4(t, s, 128),
        ),
        Format("nf4", "nf4", {}, 64, np_quantize_nf4, np_dequantize_nf4),
        Format("ternary", "ternary", {}, 4, np_quantize_ternary, np_dequantize_ternary),
        Format("q4_0", "q4_0", {}, 32, np_quantize_q4_0, np_dequantize_q4_0, "Q4_0"),
        Format("q8_0", "q8_0", {}, 32, np_quantize_q8_0, np_dequantize_q8_0, "Q8_0"),
        Format("q4_k", "q4_k", {}, 256, np_quantize_q4_k, np_dequantize_q4_k, "Q4_K"),
        Format("q6_k", "q6_k", {}, 256, np_quantize_q6_k, np_dequantize_q6_k, "Q6_K"),
        Format("tq2_0", "tq2_0", {}, 256, np_quantize_tq2_0, np_dequantize_tq2_0, "TQ2_0"),
    ]
}


def baseline_fns(fmt: Format, kind: str, k: int) -> tuple[Callable | None, Callable | None]:
    """(quantize, dequantize) baselines for `kind`; None where there is none (n/a)."""
    if k % fmt.k_multiple:
        return None, None
    if kind == "numpy":
        return fmt.np_quantize, fmt.np_dequantize
    if kind == "gguf":
        if fmt.gguf_type is None:
            return None, None
        from gguf import quants

        qtype = getattr(quants.GGMLQuantizationType, fmt.gguf_type)
        try:  # gguf implements quantize for some block types only (Q4_0, Q8_0, TQ2_0, ...)
            quants.quantize(np.zeros((1, 256), dtype=F32), qtype)
            quant: Callable | None = lambda w: {"data": quants.quantize(w, qtype)}  # noqa: E731
        except NotImplementedError:
            quant = None
        return quant, lambda t, s: quants.dequantize(t["data"], qtype).reshape(s)
    raise ValueError(f"unknown baseline {kind!r}")


# ---------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------
def keep_freed_memory() -> bool:
    """Makes glibc serve large allocations from its reused heap instead of fresh mmaps.

    Both sides allocate outputs (and numpy its temporaries) as large as the weight. By
    default glibc maps each one fresh and unmaps it on free, so every call pays the page
    faults of tens of MiB, which in a VM can cost several times the kernel itself.
    A long-running process with a warm heap does not pay them; neither do the timings."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 2**30)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):  # not glibc
        return False


def measure(fns: dict[str, Callable[[], Any]], repeats: int, budget_s: float) -> dict[str, tuple[float, int]]:
    """Median time of each function, timed round-robin so that a burst of other load on
    the machine hits every candidate alike and the ratios stay fair. In each round every
    function runs twice in a row, the second call timed: the timed call finds warm caches
    and a running thread pool, as back-to-back calls would. Stops after `repeats` rounds,
    or once the timed calls took `budget_s` per function (at least 3 rounds unless one
    round alone is that slow)."""
    gc.collect()
    times: dict[str, list[float]] = {name: [] for name in fns}
    spent = 0.0
    for r in range(repeats):
        for name, fn in fns.items():
            fn()
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            times[name].append(dt)
            spent += dt
        if spent >= budget_s * len(fns) and (r >= 2 or spent >= 1.5 * budget_s * len(fns)):
            break
    return {name: (statistics.median(ts), len(ts)) for name, ts in times.items()}


def check_quantize(ref: dict[str, Any], base: dict[str, np.ndarray]) -> str:
    """How much of the baseline's output equals slmops' bytes."""
    total = same = 0
    for name, a in ref.items():
        a = np.asarray(a).reshape(-1).view(np.uint8)
        b = np.ascontiguousarray(base.get(name, np.zeros(0))).reshape(-1).view(np.uint8)
        total += a.size
        same += int((a == b).sum()) if a.size == b.size else 0
    return "same bytes" if same == total else f"{100.0 * same / total:.3f}% bytes"


def check_dequantize(ref: np.ndarray, base: np.ndarray) -> str:
    if np.array_equal(ref, base):
        return "exact"
    return f"max|d|={float(np.abs(ref - base).max()):.2g}"


def parse_shapes(text: str) -> list[tuple[int, int]]:
    shapes = []
    for item in text.split(","):
        try:
            r, k = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"shapes are ROWSxK[,ROWSxK...], got {item!r}") from None
        if r <= 0 or k <= 0:
            raise argparse.ArgumentTypeError(f"shape dimensions must be > 0, got {item!r}")
        shapes.append((r, k))
    return shapes


def parse_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------
COLUMNS = [
    ("op", 10),
    ("format", 14),
    ("isa", 6),
    ("shape", 9),
    ("thr", 3),
    ("ms", 9),
    ("GB/s", 6),
    ("base ms", 9),
    ("speedup", 7),
    ("check", 12),
]


def print_row(values: list[str]) -> None:
    cells = [
        v.rjust(w) if i >= 4 else v.ljust(w)
        for i, (v, (_, w)) in enumerate(zip(values, COLUMNS, strict=True))
    ]
    print("  ".join(cells).rstrip(), flush=True)


@dataclass
class Run:
    isas: list[str]
    ops: list[str]
    baseline: str
    check: bool
    repeats: int
    budget: float
    emit: Callable[[dict[str, Any]], None]


def bench_bandwidth(run: Run, w: np.ndarray, threads: int) -> None:
    """The machine's read and copy bandwidth over the same fp32 weight, in the same run."""
    torch = sys.modules.get("torch")  # slmops imports torch when it is installed
    n, k = w.shape
    fns: dict[str, Callable[[], Any]] = {}
    if torch is not None:
        tw = torch.from_numpy(w)
        out = torch.empty_like(tw)
        fns["read (torch sum)"] = lambda: tw.sum()
        fns["copy (torch copy_)"] = lambda: out.copy_(tw)
    wc = np.empty_like(w)
    fns["copy (numpy, 1 thread)"] = lambda: np.copyto(wc, w)
    results = {name: t for name, (t, _) in measure(fns, run.repeats, run.budget).items()}
    print(
        f"bandwidth {n}x{k}, {threads} thread{'s' if threads != 1 else ''}: "
        + ", ".join(f"{name} {w.nbytes / t / 1e9:.1f} GB/s" for name, t in results.items())
    )
    for name, t in results.items():
        run.emit(
            {
                "op": "bandwidth",
                "format": name,
                "shape": [n, k],
                "dtype": "float32",
                "isa": None,
                "threads": threads,
                "median_s": t,
                "gbps": w.nbytes / t / 1e9,
                "baseline": None,
                "baseline_median_s": None,
                "speedup": None,
            }
        )


def bench_format(run: Run, fmt: Format, w: np.ndarray, threads: int) -> None:
    n, k = w.shape
    shape = (n, k)
    try:
        ref_q = slmops.ops.quantize(w, fmt.slmops_format, **fmt.options)
    except ValueError as e:
        print(f"{fmt.name}: skipped at {n}x{k}: {e}")
        return
    ref_d = ref_q.dequantize()
    bq, bd = baseline_fns(fmt, run.baseline, k) if run.baseline != "none" else (None, None)
    for op in run.ops:
        fns: dict[str, Callable[[], Any]] = {}
        if op == "quantize":
            if bq is not None:
                fns["baseline"] = lambda: bq(w)
            for isa in run.isas:
                fns[isa] = lambda isa=isa: slmops.ops.quantize(w, fmt.slmops_format, isa=isa, **fmt.options)
        else:
            if bd is not None:
                fns["baseline"] = lambda: bd(ref_q.tensors, shape)
            for isa in run.isas:
                fns[isa] = lambda isa=isa: ref_q.dequantize(isa=isa)
        result = measure(fns, run.repeats, run.budget)
        base_t, check = result["baseline"][0] if "baseline" in fns else None, ""
        if base_t is not None and run.check:
            out = fns["baseline"]()
            check = check_quantize(ref_q.tensors, out) if op == "quantize" else check_dequantize(ref_d, out)
        for isa in run.isas:
            t, count = result[isa]
            speedup = base_t / t if base_t is not None else None
            print_row(
                [
                    op,
                    fmt.name,
                    isa,
                    f"{n}x{k}",
                    str(threads),
                    f"{t * 1e3:.3f}",
                    f"{w.nbytes / t / 1e9:.2f}",
                    f"{base_t * 1e3:.3f}" if base_t is not None else "n/a",
                    f"{speedup:.1f}x" if speedup is not None else "n/a",
                    check,
                ]
            )
            run.emit(
                {
                    "op": op,
                    "format": fmt.name,
                    "shape": [n, k],
                    "dtype": "float32",
                    "isa": isa,
                    "threads": threads,
                    "median_s": t,
                    "repeats": count,
                    "gbps": w.nbytes / t / 1e9,
                    "baseline": run.baseline if base_t is not None else None,
                    "baseline_median_s": base_t,
                    "speedup": speedup,
                    "check": check or None,
                }
            )


def main(argv: list[str] | None = None) -> int:
    available = _C.available_cpu_isas()
    p = argparse.ArgumentParser(
        prog="slmops bench quant",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument(
        "--shapes",
        type=parse_shapes,
        default=None,
        help="weight shapes ROWSxK, comma separated\n(default 4096x4096,896x4864; --quick: 896x4864)",
    )
    p.add_argument(
        "--formats",
        type=parse_list,
        default=list(FORMATS),
        help=f"comma separated, default all: {','.join(FORMATS)}",
    )
    p.add_argument(
        "--isas",
        type=parse_list,
        default=available,
        help=f"kernel sets, default every one this CPU runs: {','.join(available)}",
    )
    p.add_argument("--ops", type=parse_list, default=["quantize", "dequantize"], help="quantize,dequantize")
    p.add_argument(
        "--threads",
        type=lambda s: [int(v) for v in parse_list(s)],
        default=None,
        help="thread counts, comma separated (default: slmops' current count)",
    )
    p.add_argument(
        "--repeats", type=int, default=None, help="timed rounds per measurement (default 11; --quick 5)"
    )
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="stop after fewer rounds once they took this many seconds per timed\n"
        "function (default 1.0; --quick 0.3)",
    )
    p.add_argument(
        "--baseline",
        choices=["numpy", "gguf", "none"],
        default="numpy",
        help="numpy: this script's vectorized numpy code, every format (default);\n"
        "gguf: the gguf package's numpy code, for the GGUF formats it implements",
    )
    p.add_argument(
        "--no-check", action="store_true", help="skip comparing the baseline's outputs with slmops'"
    )
    p.add_argument("--json", metavar="PATH", help="append one JSON object per row to PATH (JSON lines)")
    p.add_argument(
        "--fresh-memory",
        action="store_true",
        help="leave glibc's malloc as it is: large outputs and temporaries\n"
        "are mapped fresh on every call and their page faults are timed",
    )
    p.add_argument("--quick", action="store_true", help="a short run (~10-20 s): one shape, fewer rounds")
    args = p.parse_args(argv)

    for f in args.formats:
        if f not in FORMATS:
            p.error(f"unknown format {f!r}; expected some of {','.join(FORMATS)}")
    for op in args.ops:
        if op not in ("quantize", "dequantize"):
            p.error(f"unknown op {op!r}; expected quantize, dequantize")
    for isa in args.isas:
        if isa not in available:
            p.error(f"isa {isa!r} cannot run here; available: {','.join(available)}")
    shapes = args.shapes or ([(896, 4864)] if args.quick else [(4096, 4096), (896, 4864)])
    threads_list = args.threads or [slmops.get_num_threads()]
    json_file = open(args.json, "a") if args.json else None  # noqa: SIM115
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")

    def emit(rec: dict[str, Any]) -> None:
        if json_file:
            meta = {
                "slmops_version": slmops.__version__,
                "timestamp": stamp,
                "load_avg": os.getloadavg()[0],
                "allocations": heap,
            }
            json_file.write(json.dumps({**rec, **meta}) + "\n")
            json_file.flush()

    run = Run(
        isas=args.isas,
        ops=args.ops,
        baseline=args.baseline,
        check=not args.no_check,
        repeats=args.repeats or (5 if args.quick else 11),
        budget=args.budget if args.budget is not None else (0.3 if args.quick else 1.0),
        emit=emit,
    )
    heap = (
        "fresh mmaps (--fresh-memory)"
        if args.fresh_memory
        else ("reused heap" if keep_freed_memory() else "default malloc")
    )
    info = slmops.build_info()
    print(
        f"slmops {slmops.__version__}  cpu isa {info['cpu_isa']}  openmp {info['openmp']}"
        f"  numpy {np.__version__}  baseline {args.baseline}  {platform.machine()}"
        f"  load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cpus"
    )
    print(
        f"median of <= {run.repeats} round-robin rounds after 1 warmup (budget {run.budget} s per function); "
        f"large allocations: {heap}"
    )
    print("GB/s = fp32 weight bytes / time; speedup = baseline ms / slmops ms, measured in this run")
    torch = sys.modules.get("torch")
    rng = np.random.default_rng(1234)
    try:
        for n, k in shapes:
            w = rng.standard_normal((n, k), dtype=F32) * F32(0.02)
            for threads in threads_list:
                slmops.set_num_threads(threads)
                if torch is not None:
                    torch.set_num_threads(threads)
                print()
                bench_bandwidth(run, w, threads)
                print_row([c for c, _ in COLUMNS])
                for name in args.formats:
                    bench_format(run, FORMATS[name], w, threads)
    finally:
        if json_file:
            json_file.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
