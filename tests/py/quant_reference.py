"""Independent numpy implementations of our own formats, written from their definitions
(quant.py docstring), in float32 with the same operation order, so the kernels must match
them bit for bit. The GGUF formats are checked against the gguf package instead."""

import numpy as np

f32 = np.float32

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
    dtype=f32,
)


def _safe_inv(s):
    with np.errstate(divide="ignore"):
        return np.where(s != 0, f32(1) / s, f32(0)).astype(f32)


def _signed_absmax(x):
    i = np.abs(x).argmax(axis=-1, keepdims=True)
    m = np.take_along_axis(x, i, axis=-1)
    return np.where(np.abs(m) == 0, f32(0), m).astype(f32)


def int8(w, group_size=0):
    n, k = w.shape
    g = group_size or k
    pad = (-k) % g
    x = np.pad(w, ((0, 0), (0, pad))).reshape(n, -1, g)
    scale = (np.abs(x).max(-1, keepdims=True) / f32(127)).astype(f32)
    q = np.clip(np.rint(x * _safe_inv(scale)), -127, 127).astype(np.int8)
    return q.reshape(n, -1)[:, :k], scale.reshape(n, -1)


def int4(w, group_size, symmetric):
    """Codes [n, groups, g] (padded with the zero point), scales [n, groups], zero points [n, groups]."""
    n, k = w.shape
    g = group_size
    pad = (-k) % g
    x = np.pad(w, ((0, 0), (0, pad))).reshape(n, -1, g)
    valid = np.pad(np.ones((n, k), bool), ((0, 0), (0, pad))).reshape(n, -1, g)
    if symmetric:
        scale = (_signed_absmax(x) / f32(-8)).astype(f32)
        zp = np.full(scale.shape, 8, np.int32)
    else:
        mn = np.minimum(x.min(-1, keepdims=True), 0).astype(f32)
        mx = np.maximum(x.max(-1, keepdims=True), 0).astype(f32)
        scale = ((mx - mn) / f32(15)).astype(f32)
        zp = np.where(scale != 0, np.clip(np.rint(-mn * _safe_inv(scale)), 0, 15), 8).astype(np.int32)
    q = np.clip(np.rint(x * _safe_inv(scale)).astype(np.int32) + zp, 0, 15)
    q = np.where(valid, q, zp)
    return q.astype(np.uint8), scale[..., 0], zp[..., 0].astype(np.uint8)


def nf4(w, block=64):
    n, k = w.shape
    x = w.reshape(n, -1, block)
    absmax = np.abs(x).max(-1, keepdims=True).astype(f32)
    v = (x * _safe_inv(absmax)).astype(f32)
    mid = ((NF4[:-1] + NF4[1:]) * f32(0.5)).astype(f32)
    codes = (v[..., None] > mid).sum(-1).astype(np.uint8)
    return codes.reshape(n, k), absmax.reshape(n, -1)


def ternary(w):
    scale = f32(max(np.abs(w.astype(np.float64)).mean(), 1e-5))
    codes = np.clip(np.rint(w * (f32(1) / scale)), -1, 1).astype(np.int8)
    return codes, scale


def pack_nibbles_low_first(codes):
    c = codes.reshape(*codes.shape[:-1], -1, 2)
    return (c[..., 0] | (c[..., 1] << 4)).astype(np.uint8)


def unpack_nibbles_low_first(b):
    return np.stack([b & 0xF, b >> 4], axis=-1).reshape(*b.shape[:-1], -1)


def matmulnbits_dequantize(B, scales, zero_points, K, N, block_size):
    """ONNX Runtime com.microsoft.MatMulNBits semantics (ContribOperators.md), 4 bits:
    W[n, k] = (q - zp) * scale, q the nibble of B[n, k // bs, (k % bs) // 2] (low first),
    zp the nibble (low first) of zero_points[n, (k // bs) // 2], default 8."""
    kb = -(-K // block_size)
    q = (
        unpack_nibbles_low_first(B.reshape(N, kb, block_size // 2))
        .reshape(N, kb * block_size)
        .astype(np.int32)
    )
    if zero_points is None:
        zp = np.full((N, kb), 8, np.int32)
    else:
        zp = unpack_nibbles_low_first(zero_points.reshape(N, -1))[:, :kb].astype(np.int32)
    s = scales.reshape(N, kb).astype(f32)
    w = (q - np.repeat(zp, block_size, axis=1)).astype(f32) * np.repeat(s, block_size, axis=1)
    return w[:, :K]
