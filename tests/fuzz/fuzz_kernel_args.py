"""Structured fuzzer of the kernel entry points: hostile arguments must end in a result or a
clean ValueError/TypeError, never a crash.

Every case draws an operation (the public ops: quantize, dequantize, qmatmul, sparsify,
spmm, kd_loss, fused_linear_kd_loss; crafted QuantizedTensor/SparseTensor buffers as a
tampered file gives them; the bindings in slmops._C directly, GPTQ/SparseGPT included) and
hostile arguments: random shapes (zero-size, 0-d, 3-d), strides (non-contiguous, negative,
transposed), dtypes, byte orders, misaligned and read-only buffers, torch tensors, NaN/Inf
and extreme values, and option values (huge, negative or mistyped group sizes, unknown
names). Besides "no crash" it checks the promises of the error policy that are cheap to
check: finite weights quantize to finite dequantized weights (or raise), a NaN/Inf row of x
gives an all-NaN row of y, and NaN in a distillation row gives a NaN loss.

Case i draws from its own generator, seeded from (--seed, i): a crash is replayed with
``--start i --iterations 1 --verbose``. Run it under ASan/UBSan (.ci/sanitizers) to turn
silent memory errors into crashes.

    python tests/fuzz/fuzz_kernel_args.py --seconds 60
    python tests/fuzz/fuzz_kernel_args.py --iterations 2000 --seed 7
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from slmops import _C
from slmops.ops import (
    QuantizedTensor,
    SparseTensor,
    TeacherHidden,
    TeacherTopK,
    dequantize,
    fused_linear_kd_loss,
    kd_loss,
    qmatmul,
    quantize,
    sparsify,
    spmm,
)

try:
    import torch
except ImportError:  # the fuzzer also runs numpy-only
    torch = None

# A result or one of these, raised before any kernel runs: ValueError/TypeError for bad
# arguments; MemoryError only where a well-formed but absurd option asks numpy or torch for
# the output (int4 groups of 2^31 pad every row to 1 GiB).
CLEAN = (ValueError, TypeError, MemoryError)
# Each option list: values the op accepts, then hostile ones (drawn with probability BAD, set
# per case by run_case).
BAD = 0.2
FORMATS = {f["name"]: f for f in _C.quant_formats()}
FORMAT_NAMES = (list(FORMATS), ["int3", "", "Q4_0"])
VALUE_TYPES = list(_C.sparse_value_types())
ISAS = (["auto", *_C.available_cpu_isas()], ["avx1024"])
GROUP_SIZES: tuple[list[Any], list[Any]] = (
    [None, None, 16, 32, 64, 128, 256],
    [0, 1, 3, 2**31, 2**62, 2**63 - 1, -1, -32, -(2**63), True, 1.5, "32", np.int64(32), 2**64],
)
FLOAT_DTYPES = (["float32", "float16", "bfloat16"], ["float64", "int8", "uint8", "int64"])
ACTIVATIONS = (list(_C.qmatmul_activations()), ["int4", "INT8"])


class PolicyViolation(AssertionError):
    """A call returned, but not what the error policy promises."""


# ---- hostile arrays ---------------------------------------------------------------------


def values(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """float64 values of one of several hostile distributions."""
    kind = rng.integers(8)
    if kind == 0:
        return np.zeros(shape)
    if kind == 1:  # near float32's range: scales overflow, products overflow
        return rng.choice([-3.4e38, 3.4e38, 1e30, -1e30, 7e4, 6e5], size=shape)
    if kind == 2:  # subnormal and tiny
        return rng.standard_normal(shape) * 1e-40
    if kind == 3:  # NaN and Inf sprinkled
        v = rng.standard_normal(shape)
        mask = rng.random(shape) < 0.05
        v[mask] = rng.choice([np.nan, np.inf, -np.inf], size=int(mask.sum()))
        return v
    if kind == 4:  # integers, negative included (as indices, ids, labels)
        return rng.integers(-5, 300, size=shape).astype(np.float64)
    if kind == 5:
        return rng.standard_normal(shape) * 1e4
    return rng.standard_normal(shape)


def layout(rng: np.random.Generator, a: np.ndarray) -> np.ndarray:
    """The same values in a hostile memory layout (numpy)."""
    kind = rng.integers(9)
    if kind == 1 and a.ndim:  # non-contiguous: every other element of a larger array
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        return big[..., ::2]
    if kind == 2 and a.ndim:  # negative strides: a reversed copy, viewed reversed
        return np.flip(np.ascontiguousarray(np.flip(a)))
    if kind == 3 and a.ndim >= 2:  # Fortran order
        return np.asfortranarray(a)
    if kind == 4 and a.dtype.itemsize > 1:  # byte-swapped
        return a.astype(a.dtype.newbyteorder(">" if sys.byteorder == "little" else "<"))
    if kind == 5 and a.dtype.itemsize > 1:  # misaligned: data one byte past an aligned address
        buf = bytearray(a.nbytes + 1)
        out = np.frombuffer(buf, a.dtype, count=a.size, offset=1).reshape(a.shape)
        out[...] = a
        return out
    if kind == 6:
        a = a.copy()
        a.flags.writeable = False
        return a
    return np.ascontiguousarray(a)


def to_dtype(a: np.ndarray, dtype: str) -> Any:
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dtype == "bfloat16":
            if torch is None:
                return a.astype(np.float32)
            return torch.from_numpy(np.ascontiguousarray(a, np.float32)).to(torch.bfloat16)
        if np.dtype(dtype).kind in "iu":
            a = np.nan_to_num(a, nan=0, posinf=0, neginf=0).clip(-(2**31), 2**31)
        return a.astype(dtype)


def array(rng: np.random.Generator, shape: tuple[int, ...], dtype: str = "float32") -> Any:
    """A hostile array: numpy in a hostile layout, or a (possibly strided) torch tensor."""
    a = to_dtype(values(rng, shape), dtype)
    if torch is not None and (isinstance(a, torch.Tensor) or rng.random() < 0.2):
        t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))
        if rng.random() < 0.3 and t.ndim >= 2:
            t = t.transpose(-1, -2).contiguous().transpose(-1, -2)  # a transposed view: not contiguous
        if rng.random() < 0.1 and t.element_size() > 1 and t.numel():  # misaligned, as torch.frombuffer makes
            buf = bytearray(t.numel() * t.element_size() + 1)
            t = torch.frombuffer(buf, dtype=t.dtype, offset=1, count=t.numel()).reshape(t.shape).copy_(t)
        if rng.random() < 0.1 and t.is_floating_point():
            t.requires_grad_()  # DLPack refuses to export these
        return t
    return layout(rng, a)


def shape2(rng: np.random.Generator, k: int | None = None) -> tuple[int, ...]:
    """Mostly 2-D, sometimes 0-d, 1-d, 3-d or empty."""
    r = rng.random()
    if r < 0.02:
        return ()
    if r < 0.04:
        return (int(rng.integers(0, 70)),)
    if r < 0.1:
        return (2, int(rng.integers(0, 5)), k if k is not None else int(rng.integers(1, 70)))
    rows = int(rng.choice([0, 1, 1, 2, 3, 7, 17, 65]))
    cols = k if k is not None else int(rng.choice([0, 1, 4, 16, 31, 32, 64, 64, 96, 256, 256, 512]))
    return (rows, cols)


def pick(rng: np.random.Generator, options: list[Any] | tuple[list[Any], list[Any]]) -> Any:
    """One of the options; from a (good, hostile) pair, a hostile one with probability BAD."""
    if isinstance(options, tuple):
        options = options[1] if rng.random() < BAD else options[0]
    return options[int(rng.integers(len(options)))]


# ---- cases -----------------------------------------------------------------------------


def finite_weight(w: Any) -> bool:
    a = (
        w.detach().float().numpy()
        if torch is not None and isinstance(w, torch.Tensor)
        else np.asarray(w, np.float64)
    )
    return a.size > 0 and bool(np.isfinite(a).all())


def check_nan_rows(x: Any, y: Any, op: str) -> None:
    """A row of x holding NaN/Inf must give an all-NaN row of y (qmatmul, spmm)."""
    xa = np.asarray(
        x.detach().float() if torch is not None and isinstance(x, torch.Tensor) else x, np.float64
    )
    ya = np.asarray(
        y.detach().float() if torch is not None and isinstance(y, torch.Tensor) else y, np.float64
    )
    if xa.ndim < 1 or ya.size == 0:
        return
    bad = ~np.isfinite(xa.reshape(-1, xa.shape[-1])).all(1)
    rows = ya.reshape(-1, ya.shape[-1])
    if bad.any() and not np.isnan(rows[bad]).all():
        raise PolicyViolation(f"{op}: a row of x with NaN/Inf gave a row of y that is not all NaN")


def hostile(rng: np.random.Generator) -> bool:
    """Whether this choice of the case is a hostile one (probability BAD)."""
    return bool(rng.random() < BAD)


def quant_options(rng: np.random.Generator, fmt: str) -> dict[str, Any]:
    """quantize's options for fmt: the ones it takes, or (hostile) any."""
    info = FORMATS.get(fmt, {"has_group_size": True, "has_symmetric_option": True})
    opts: dict[str, Any] = {}
    if (info["has_group_size"] and rng.random() < 0.5) or hostile(rng):
        opts["group_size"] = pick(rng, GROUP_SIZES)
    if (info["has_symmetric_option"] and rng.random() < 0.5) or hostile(rng):
        opts["symmetric"] = bool(rng.integers(2))
    if (fmt == "nf4" and rng.random() < 0.3) or hostile(rng):
        opts["double_quant"] = True
    return opts


def weight_shape(rng: np.random.Generator, fmt: str) -> tuple[int, ...]:
    block = FORMATS.get(fmt, {}).get("block_size", 0)
    if block and not hostile(rng):
        return (int(rng.choice([1, 2, 7, 17])), block * int(rng.integers(1, 3)))
    return shape2(rng)


def case_quantize(rng: np.random.Generator) -> None:
    fmt = pick(rng, FORMAT_NAMES)
    w = array(rng, weight_shape(rng, fmt), pick(rng, FLOAT_DTYPES))
    q = quantize(w, fmt, isa=pick(rng, ISAS), **quant_options(rng, fmt))
    out = q.dequantize(pick(rng, [None, "float32", "float16", "bfloat16"]) if torch is not None else None)
    # Finite weights dequantize to finite values (float16 output may overflow by itself).
    if finite_weight(w) and "float16" not in str(out.dtype).replace("bfloat16", ""):
        o = out.float().numpy() if torch is not None and isinstance(out, torch.Tensor) else np.asarray(out)
        if not np.isfinite(o).all():
            raise PolicyViolation(f"quantize({fmt}) of finite weights dequantized to NaN/Inf")
    x = array(rng, shape2(rng, None if hostile(rng) else q.shape[1]), pick(rng, FLOAT_DTYPES))
    bias = array(rng, (q.shape[0],)) if rng.random() < 0.3 else None
    act = pick(rng, ACTIVATIONS)
    y = qmatmul(
        x,
        q,
        bias=bias,
        activation=act,
        isa=pick(rng, ISAS),
        backend=pick(rng, (["auto", "kernels"], ["onednn"])),
    )
    check_nan_rows(x, y, f"qmatmul({fmt}, {act})")


def crafted_buffers(
    rng: np.random.Generator, fmt: str, shape: tuple[int, int], group_size: int, symmetric: bool
) -> dict[str, Any]:
    """Buffers of the layout's sizes and types holding arbitrary bytes (NaN/Inf fp16 block
    scales, unused codes), or (hostile) sizes off by one, other types, a buffer missing."""
    try:
        L = _C.quant_layout(fmt, shape[1], group_size, symmetric)
    except (ValueError, TypeError):
        L = {
            "data_bytes_per_row": 8,
            "scales_per_row": 1,
            "zero_point_bytes_per_row": 1,
            "tensor_scale": False,
        }
    n = shape[0]

    def size(v: int) -> int:
        return max(0, min(int(v), 1 << 20) + (int(pick(rng, [-1, 1, 7])) if hostile(rng) else 0))

    data_dtype = pick(rng, (["int8" if fmt == "int8" else "uint8"], ["uint8", "int8", "float32"]))
    t = {"data": rng.integers(0, 256, size(n * L["data_bytes_per_row"])).astype(data_dtype)}
    if L["tensor_scale"] or L["scales_per_row"] or hostile(rng):
        count = 1 if L["tensor_scale"] else size(n * L["scales_per_row"])
        t["scales"] = to_dtype(values(rng, (count,)), pick(rng, (["float32"], ["float16", "float64"])))
    if L["zero_point_bytes_per_row"] or hostile(rng):
        t["zero_points"] = rng.integers(0, 256, size(n * max(1, L["zero_point_bytes_per_row"]))).astype(
            np.uint8
        )
    return t


def case_crafted_quantized(rng: np.random.Generator) -> None:
    """A QuantizedTensor over buffers a tampered file could hold, then dequantize and qmatmul."""
    fmt = pick(rng, FORMAT_NAMES[0])
    info = FORMATS[fmt]
    shape = (int(rng.integers(1, 20)), int(pick(rng, [1, 16, 31, 32, 64, 256, 512])))
    if info["block_size"] and not hostile(rng):
        shape = (shape[0], info["block_size"] * int(rng.integers(1, 3)))
    group_size = pick(
        rng, ([16, 32, 64] if info["has_group_size"] else [0], [0, 256, 2**62, 2**63 - 1, -1, 3])
    )
    symmetric = fmt != "int4" or bool(rng.integers(2)) if not hostile(rng) else bool(rng.integers(2))
    tensors = crafted_buffers(rng, fmt, shape, group_size, symmetric)
    if rng.random() < 0.2:  # a tampered file: save, then load
        from safetensors.numpy import save_file

        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "q.safetensors")
            meta = {
                "slmops_quantized_tensor": "1",
                "format": fmt,
                "shape": str(list(shape)),
                "group_size": str(group_size),
                "symmetric": str(symmetric).lower(),
                "dtype": "float32",
            }
            save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path, metadata=meta)
            q = QuantizedTensor.load(path)
    else:
        q = QuantizedTensor(fmt, shape, tensors, group_size=group_size, symmetric=symmetric)
    dequantize(q)
    x = array(rng, (int(rng.integers(0, 9)), shape[1]))
    qmatmul(x, q, activation=pick(rng, ACTIVATIONS))


def case_repacked_buffers(rng: np.random.Generator) -> None:
    """Buffers resized after the first matmul (the packing borrows their memory)."""
    w = rng.standard_normal((16, 64)).astype(np.float32)
    fw: Any = torch.from_numpy(w) if torch is not None and rng.random() < 0.5 else w
    x = np.ones((2, 64), np.float32) if isinstance(fw, np.ndarray) else torch.ones(2, 64)
    if rng.random() < 0.5:
        q = quantize(fw, pick(rng, ["int8", "int4", "nf4", "ternary", "q4_0"]))
        qmatmul(x, q)
        buf = q.tensors[pick(rng, sorted(q.tensors))]
        run = lambda: qmatmul(x, q)  # noqa: E731
    else:
        w[:, 1::2] = 0
        sw = sparsify(w, pick(rng, ["2:4", "csr"]))
        spmm(x if isinstance(x, np.ndarray) else x.numpy(), sw)
        buf = sw.tensors[pick(rng, sorted(sw.tensors))]
        run = lambda: spmm(np.ones((2, 64), np.float32), sw)  # noqa: E731
    grow = int(rng.integers(1, 1 << 16))
    if torch is not None and isinstance(buf, torch.Tensor):
        if not buf.untyped_storage().resizable():
            return  # wraps numpy memory (from_numpy): torch cannot move it
        buf.resize_(buf.numel() + grow)
    else:
        buf.resize(buf.size + grow, refcheck=False)
    run()


def case_sparse(rng: np.random.Generator) -> None:
    pattern = pick(rng, (["2:4", "4:8", "csr"], ["1:4"]))
    vals = "float32" if pattern == "csr" and not hostile(rng) else pick(rng, (VALUE_TYPES, ["fp8"]))
    m = 8 if hostile(rng) else 4 if pattern == "2:4" else 8
    shape = shape2(rng) if hostile(rng) else (int(rng.choice([1, 2, 7, 17])), m * int(rng.integers(1, 40)))
    w = array(rng, shape, pick(rng, FLOAT_DTYPES))
    opts: dict[str, Any] = {"prune": pattern != "csr" and not hostile(rng)}
    if (vals in ("int8", "int4") and rng.random() < 0.5) or hostile(rng):
        opts["group_size"] = pick(rng, ([16, 32, 64], GROUP_SIZES[1]))
    sw = sparsify(w, pattern, values=vals, **opts)
    x = array(rng, shape2(rng, None if hostile(rng) else sw.shape[1]), pick(rng, FLOAT_DTYPES))
    act = (
        "int8"
        if vals in ("int8", "int4") and rng.random() < 0.5
        else pick(rng, (["float"], ["int8", "int8_row"]))
    )
    y = spmm(
        x,
        sw,
        bias=array(rng, (sw.shape[0],)) if rng.random() < 0.3 else None,
        activation=act,
        isa=pick(rng, ISAS),
    )
    check_nan_rows(x, y, f"spmm({pattern}, {vals}, {act})")


def case_crafted_sparse(rng: np.random.Generator) -> None:
    n, k = int(rng.integers(1, 20)), int(pick(rng, [4, 8, 16, 64, 200]))
    if rng.random() < 0.5:  # csr with hostile row pointers and columns
        nnz = int(rng.integers(0, n * k + 1))
        row_ptr = np.sort(rng.integers(0, nnz + 1, n + 1))
        row_ptr[0], row_ptr[-1] = 0, nnz
        if rng.random() < 0.5:
            row_ptr[int(rng.integers(n + 1))] = pick(rng, [-1, nnz + 5, 2**62, -(2**63)])
        cols = rng.integers(-3, k + 3, nnz).astype(pick(rng, [np.int16, np.int32, np.int64]))
        tensors = {
            "row_ptr": row_ptr.astype(pick(rng, [np.int64, np.int64, np.int32])),
            "cols": cols,
            "values": rng.standard_normal(nnz).astype(np.float32),
        }
        sw = SparseTensor("csr", (n, k), tensors)
    else:
        pattern = pick(rng, ["2:4", "4:8"])
        m = int(pattern[-1])
        kept = k // m * int(pattern[0])
        vals = pick(rng, ["float32", "bfloat16", "int8", "int4"])
        group = pick(rng, [0, 16, 32, kept, -16, 2**62, 7])
        groups = max(1, -(-kept // group) if group > 0 else 1)
        count = {"int4": n * groups * max(group, 2) // 2 if group > 0 else n * kept // 2}.get(vals, n * kept)
        count = max(0, min(count, 1 << 20) + int(pick(rng, [0, 0, 0, -1, 1])))
        dt = {"float32": np.float32, "bfloat16": np.uint16, "int8": np.int8, "int4": np.uint8}[vals]
        tensors = {
            "values": rng.integers(0, 100, count).astype(dt),
            "indices": rng.integers(0, 256, (n, (kept * (2 if m == 4 else 3) + 7) // 8)).astype(np.uint8),
        }
        if vals in ("int8", "int4"):
            tensors["scales"] = rng.standard_normal(n * groups).astype(np.float32)
        sw = SparseTensor(pattern, (n, k), tensors, values=vals, group_size=group)
    spmm(np.ones((int(rng.integers(1, 10)), k), np.float32), sw)


def case_kd(rng: np.random.Generator) -> None:
    rows, vocab = (
        int(rng.choice([0, 1, 3, 8])),
        int(rng.choice([2, 5, 64, 300] + ([1] if hostile(rng) else []))),
    )
    lead = pick(rng, ([(rows,), (2, rows)], [()]))
    fused = rng.random() < 0.5
    student = array(rng, (*lead, vocab), pick(rng, FLOAT_DTYPES))
    kind = rng.integers(4 if fused or hostile(rng) else 3)
    if kind == 0:
        t_vocab = int(pick(rng, ([vocab, vocab + 3, max(1, vocab - 1)], [0])))
        teacher: Any = array(rng, (*lead, t_vocab), pick(rng, FLOAT_DTYPES))
    elif kind == 1:
        k = int(pick(rng, ([1, 2, max(1, vocab // 2)], [vocab, vocab + 1])))
        ids = np.stack([rng.permutation(vocab + 1)[:k] for _ in range(int(np.prod(lead)))]).reshape(*lead, k)
        if not hostile(rng):
            ids = (
                np.where(ids == vocab, 0, ids) if k == 1 else np.argsort(rng.random((*lead, vocab)))[..., :k]
            )
        ids = layout(rng, ids.astype(pick(rng, ([np.int64], [np.int32, np.float32]))))
        lp = np.log(rng.dirichlet(np.ones(k + 1), size=lead)[..., :k])
        if rng.random() < 0.3 and lp.size:
            lp.reshape(-1)[0] = pick(rng, ([np.nan, -np.inf], [np.inf, 5.0]))
        teacher = TeacherTopK(ids, layout(rng, lp.astype(np.float32)))
    elif kind == 2:
        teacher = None
    else:
        teacher = TeacherHidden(array(rng, (*lead, 4)), array(rng, (vocab + int(rng.integers(0, 3)), 4)))
    hard_weight = 1.0 if teacher is None and not hostile(rng) else pick(rng, ([0.0, 0.5, 1.0], [-0.5, 2.0]))
    labels = None
    if hard_weight > 0 or rng.random() < 0.5 or hostile(rng):
        high = vocab if not hostile(rng) else vocab + 2
        labels = layout(
            rng, np.where(rng.random(lead) < 0.2, -100, rng.integers(0, high, lead)).astype(np.int64)
        )
    reduction = pick(rng, (["batchmean", "sum", "none"], ["mean"]))
    opts = {
        "divergence": pick(rng, (["forward_kl", "reverse_kl", "jsd"], ["kl"])),
        "temperature": pick(rng, ([1.0, 2.0, 0.5], [0.0, -1.0, float("nan"), 1e-30, 1e30])),
        "beta": pick(rng, ([0.0, 0.5, 1.0], [2.0, -0.1])),
        "reduction": reduction,
        "hard_weight": hard_weight,
        "labels": labels,
        "isa": pick(rng, ISAS),
    }
    if not fused:
        kd_loss(student, teacher, return_grad=bool(rng.integers(2)), **opts)
        return
    hidden = array(rng, (*lead, 4), pick(rng, FLOAT_DTYPES))
    head = array(rng, (vocab, int(pick(rng, ([4], [5])))), pick(rng, FLOAT_DTYPES))
    grads = reduction != "none" or hostile(rng)
    fused_linear_kd_loss(
        hidden,
        head,
        teacher,
        grad_hidden=grads and bool(rng.integers(2)),
        grad_weight=grads and bool(rng.integers(2)),
        chunk_rows=int(pick(rng, ([0, 1, 3], [-1]))),
        **opts,
    )


def case_bindings(rng: np.random.Generator) -> None:
    """slmops._C called directly, as a tampered caller could."""
    op = rng.integers(9)
    fmt = pick(rng, FORMAT_NAMES)
    gs = int(pick(rng, [0, 16, 32, 64, 256, 2**62, 2**63 - 1, -1]))
    n, k = int(pick(rng, [0, 1, 3, 2**31, 2**62, -1])), int(pick(rng, [1, 32, 256, 2**40, 2**63 - 1, 0, -5]))
    bufs = [
        array(rng, (int(rng.integers(0, 600)),), pick(rng, ["uint8", "int8", "float32"])) for _ in range(3)
    ]
    if op == 0:
        _C.quant_layout(fmt, k, gs, bool(rng.integers(2)))
    elif op == 1:
        dst = array(rng, shape2(rng), pick(rng, ["float32", "float16"]))
        _C.dequantize(fmt, gs, True, bufs[0], bufs[1], bufs[2], dst, isa=pick(rng, ISAS))
    elif op == 2:
        p = _C.pack_weight(fmt, gs, bool(rng.integers(2)), bufs[0], bufs[1], bufs[2], n, k)
        x, y = array(rng, shape2(rng)), array(rng, shape2(rng))
        _C.qmatmul(p, x, None, y, activation=pick(rng, ACTIVATIONS))
    elif op == 3:
        src = array(rng, shape2(rng))
        _C.quantize(src, fmt, gs, True, bufs[0], bufs[1], bufs[2], isa=pick(rng, ISAS))
    elif op == 4:
        p = _C.pack_nm(
            int(pick(rng, [2, 4, 1, -2])),
            int(pick(rng, [4, 8, 0, -4])),
            n,
            k,
            pick(rng, ["float32", "bfloat16", "int8", "int4"]),
            bufs[0],
            bufs[1],
            bufs[2],
            gs,
            array(rng, (int(rng.integers(0, 600)),), "uint8"),
        )
        _C.spmm(p, array(rng, shape2(rng)), None, array(rng, shape2(rng)))
    elif op == 5:
        p = _C.pack_csr(n, k, array(rng, (int(rng.integers(0, 10)),), "int64"), bufs[0], bufs[1])
        _C.spmm(p, array(rng, shape2(rng)), None, array(rng, shape2(rng)))
    elif op == 6:
        m = shape2(rng)
        W = array(rng, m)
        kk = m[1] if len(m) == 2 else 4
        H = array(rng, (kk, kk))
        _C.hessian_accumulate(H, array(rng, shape2(rng, kk)), reference=bool(rng.integers(2)))
        _C.cholesky_inverse_upper(H, reference=bool(rng.integers(2)))
        rows = m[0] if len(m) == 2 else 1
        g = int(pick(rng, [0, 16, 32, 7, -1, 2**62]))
        ng = -(-kk // g) if g > 0 else 1
        bits = int(pick(rng, [2, 4, 8, 0, 9]))
        if rng.random() < 0.5:
            _C.gptq_grid_params(
                W, bits, bool(rng.integers(2)), g, array(rng, (rows, ng)), np.zeros(rows * ng, np.uint8)
            )
        else:
            _C.gptq_quantize(
                W,
                H,
                bits,
                bool(rng.integers(2)),
                g,
                None,
                array(rng, (rows, ng)),
                np.zeros(rows * ng, np.uint8),
                np.zeros(rows * kk, np.uint8),
                block=int(pick(rng, [128, 1, 0, 3])),
                reference=bool(rng.integers(2)),
            )
    elif op == 7:
        m = shape2(rng)
        W = array(rng, m)
        kk = m[1] if len(m) == 2 else 4
        rows = m[0] if len(m) == 2 else 1
        _C.sparsegpt_prune(
            W,
            array(rng, (kk, kk)),
            float(pick(rng, [0.5, 0.0, 1.0, -1.0, float("nan")])),
            int(pick(rng, [0, 2, 4, -1])),
            int(pick(rng, [0, 4, 8, 3])),
            0,
            True,
            0,
            None,
            None,
            None,
            np.zeros(rows * kk, np.uint8),
            block=int(pick(rng, [128, 1, 0])),
            reference=bool(rng.integers(2)),
        )
    else:
        s = array(rng, (int(rng.integers(0, 600)),))
        count = s.numel() if torch is not None and isinstance(s, torch.Tensor) else s.size
        codes, blocks = np.empty(count, np.int8), np.empty(-(-count // 256), np.float32)
        off = _C.double_quantize_scales(s, codes, blocks)
        _C.double_dequantize_scales(codes, blocks, off, np.empty(count, np.float32))
        _C.find_non_finite(array(rng, shape2(rng)))
        _C.fused_kd_chunk_rows(n, k)


CASES: list[tuple[str, Callable[[np.random.Generator], None]]] = [
    ("quantize", case_quantize),
    ("crafted_quantized", case_crafted_quantized),
    ("resized_buffers", case_repacked_buffers),
    ("sparse", case_sparse),
    ("crafted_sparse", case_crafted_sparse),
    ("kd", case_kd),
    ("bindings", case_bindings),
]


def run_case(seed: int, i: int, verbose: bool) -> str:
    global BAD
    rng = np.random.default_rng([seed, i])
    name, fn = CASES[int(rng.integers(len(CASES)))]
    # Half the cases are well-formed (and reach the kernels); the others draw hostile choices.
    BAD = 0.0 if rng.random() < 0.5 else 0.2
    if verbose:
        print(f"case {i}: {name}", flush=True)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fn(rng)
            return "ok"
        except CLEAN:
            return "clean error"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=None, help="stop after this long")
    ap.add_argument("--iterations", type=int, default=None, help="stop after this many inputs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start", type=int, default=0, help="index of the first case (to replay one)")
    ap.add_argument("--verbose", action="store_true", help="print each case before it runs")
    args = ap.parse_args(argv)
    if args.seconds is None and args.iterations is None:
        args.seconds = 10.0
    if not faulthandler.is_enabled():  # pytest enables it itself
        faulthandler.enable()  # a crash still names the case's Python frame
    _C.set_num_threads(2)
    deadline = time.monotonic() + args.seconds if args.seconds is not None else float("inf")
    counts: dict[str, int] = {}
    i = args.start
    while time.monotonic() < deadline and (args.iterations is None or i - args.start < args.iterations):
        try:
            outcome = run_case(args.seed, i, args.verbose)
        except Exception as e:  # anything but a clean ValueError/TypeError is a finding
            print(
                f"FAIL case {i} (replay: --seed {args.seed} --start {i} --iterations 1 --verbose): "
                f"{type(e).__name__}: {e}",
                flush=True,
            )
            outcome = "FAIL"
        counts[outcome] = counts.get(outcome, 0) + 1
        i += 1
    total = i - args.start
    detail = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    print(f"fuzz_kernel_args: {total} inputs run (seed {args.seed}): {detail}")
    return 1 if counts.get("FAIL") else 0


if __name__ == "__main__":
    sys.exit(main())
