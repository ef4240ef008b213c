"""Weight quantization: ``quantize(w, format) -> QuantizedTensor`` and back.

Formats (the table lives in C++, ``cpp/src/common/quant_formats.cpp``):

==========  ====================================================================
``int8``    symmetric, scale = absmax/127 per output row (or per ``group_size``)
``int4``    group-wise along K in the ONNX Runtime MatMulNBits layout; symmetric
            (scale = signed absmax / -8, zero point 8) or asymmetric (4-bit zero
            points); ``group_size`` a power of two >= 16, default 32
``nf4``     QLoRA NormalFloat4 codebook, absmax per block of 64 (bitsandbytes
            nibble order); ``double_quant=True`` stores the absmax values as int8
``ternary`` BitNet b1.58: {-1, 0, +1} times the tensor's mean |w|, 2 bits a weight
``q4_0`` ``q8_0`` ``q4_k`` ``q6_k`` ``tq2_0``: GGUF blocks, byte layout of ggml
==========  ====================================================================

Rounding: int8/int4/nf4/ternary round half to even; q4_0, q8_0 and tq2_0 follow ggml's
reference quantizers bit for bit (q4_0 truncates x/d + 8.5, q8_0 and tq2_0 round half
away from zero); q4_k and q6_k round half to even. An all-zero group gets scale 0 and
dequantizes to exact zeros, as does a group of weights so small (below ~1e-37) that the
reciprocal of its scale overflows float32. NaN or Inf in the weight raise ``ValueError``, and
so do finite weights past a format's range: a float32 scale that overflows (int4 asymmetric
over a range past 3.4e38), or a GGUF block's float16 scale past 65504 (the error names the
largest magnitude the format holds: q4_0 524032, q8_0 8319008, q4_k 4126752, q6_k
268304384, tq2_0 65504). Byte-swapped or misaligned numpy arrays are read as their values.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import _C
from .._io import atomic_file
from .._tensor import (
    FLOAT_DTYPES,
    check_array,
    dtype_name,
    empty,
    from_numpy,
    is_torch,
    kernel_input,
    to_numpy,
)

FORMATS: dict[str, dict[str, Any]] = {f["name"]: f for f in _C.quant_formats()}
_STORAGE_VERSION = 1
_DQ_KEYS = ("scale_codes", "scale_block_scales", "scale_offset")


def _format_info(format: str) -> dict[str, Any]:
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected one of {', '.join(map(repr, FORMATS))}")
    return FORMATS[format]


class QuantizedTensor:
    """A quantized 2-D weight ``[out_features, in_features]`` and everything needed to
    dequantize it. Its buffers live in the framework (numpy or torch) and on the device
    of the weight it was made from.

    Buffers, by name: ``data`` (codes or GGUF blocks), ``scales`` (float32, absent for
    GGUF formats), ``zero_points`` (int4 asymmetric), and for nf4 with double
    quantization ``scale_codes``/``scale_block_scales``/``scale_offset`` in place of
    ``scales``.
    """

    def __init__(
        self,
        format: str,
        shape: tuple[int, int],
        tensors: Mapping[str, Any],
        *,
        group_size: int = 0,
        symmetric: bool = True,
        dtype: str = "float32",
    ) -> None:
        info = _format_info(format)
        if len(shape) != 2 or min(shape) <= 0:
            raise ValueError(f"shape must be (out_features, in_features) with both > 0, got {tuple(shape)}")
        self.format = format
        self.shape = (int(shape[0]), int(shape[1]))
        self.symmetric = bool(symmetric)
        self.dtype = dtype
        self.layout = _C.quant_layout(
            format, self.shape[1], group_size if info["has_group_size"] else 0, symmetric
        )
        self.group_size = int(self.layout["group_size"])
        self.tensors = dict(tensors)
        self._check_tensors()
        self._packed: Any = None

    # -- properties -----------------------------------------------------------------
    @property
    def _option_group_size(self) -> int:
        """group_size as the kernels take it: 0 for formats whose block size is fixed."""
        return self.group_size if FORMATS[self.format]["has_group_size"] else 0

    @property
    def double_quant(self) -> bool:
        return "scale_codes" in self.tensors

    @property
    def nbytes(self) -> int:
        """Bytes of all buffers: codes, scales and zero points."""
        return int(
            sum(t.numel() * t.element_size() if is_torch(t) else t.nbytes for t in self.tensors.values())
        )

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes / (self.shape[0] * self.shape[1])

    @property
    def framework(self) -> str:
        return "torch" if is_torch(self.tensors["data"]) else "numpy"

    def __repr__(self) -> str:
        opts = f", group_size={self.group_size}" if FORMATS[self.format]["has_group_size"] else ""
        if FORMATS[self.format]["has_symmetric_option"]:
            opts += f", symmetric={self.symmetric}"
        if self.double_quant:
            opts += ", double_quant=True"
        return (
            f"QuantizedTensor(format={self.format!r}, shape={self.shape}{opts}, "
            f"bits_per_weight={self.bits_per_weight:.3f}, nbytes={self.nbytes})"
        )

    def to(self, device: Any) -> QuantizedTensor:
        """The same quantized tensor with its buffers on ``device`` (``"cuda"``, ``"cpu"``, a
        torch.device): where the GPU kernels of qmatmul read it. Torch buffers only."""
        if self.framework != "torch":
            raise TypeError("this QuantizedTensor holds numpy arrays; quantize a torch tensor to move it")
        return QuantizedTensor(
            self.format, self.shape, {name: t.to(device) for name, t in self.tensors.items()},
            group_size=self.group_size, symmetric=self.symmetric, dtype=self.dtype,
        )  # fmt: skip

    # -- dequantize -----------------------------------------------------------------
    def dequantize(self, dtype: str | None = None, *, isa: str = "auto") -> Any:
        """The float weight ``[out_features, in_features]`` in this tensor's framework and
        device; ``dtype`` defaults to the dtype of the quantized weight."""
        dtype = dtype or self.dtype
        if dtype not in FLOAT_DTYPES:
            raise ValueError(f"dtype must be one of {FLOAT_DTYPES}, got {dtype!r}")
        data = self.tensors["data"]
        dst = empty(data, self.shape, dtype)
        stream = None
        if is_torch(data) and data.is_cuda:
            import torch

            stream = torch.cuda.current_stream(data.device).cuda_stream
        _C.dequantize(
            self.format,
            self._option_group_size,
            self.symmetric,
            data,
            self._scales(),
            self.tensors.get("zero_points"),
            dst,
            isa=isa,
            cuda_stream=stream,
        )
        return dst

    def _scales(self) -> Any:
        if not self.double_quant:
            return self.tensors.get("scales")
        t = self.tensors
        codes = to_numpy(t["scale_codes"])
        out = np.empty(codes.shape, dtype=np.float32)
        _C.double_dequantize_scales(
            codes, to_numpy(t["scale_block_scales"]), float(to_numpy(t["scale_offset"])[0]), out
        )
        scales = from_numpy(out, self.framework)
        if is_torch(t["data"]) and t["data"].is_cuda:
            scales = scales.to(t["data"].device)
        return scales

    def __getstate__(self) -> dict[str, Any]:
        # The kernels' pack is a view of these buffers, not data: a copy (copy.deepcopy of a
        # model that already ran) packs its own buffers again on first use.
        return {**self.__dict__, "_packed": None}

    def packed(self) -> Any:
        """The weight packed for the qmatmul kernels (made once, then cached). It borrows
        this tensor's buffers, so write to them only through a new QuantizedTensor."""
        if self._packed is None:
            if is_torch(self.tensors["data"]) and self.tensors["data"].device.type != "cpu":
                raise ValueError(
                    f"qmatmul runs on the CPU; this QuantizedTensor is on {self.tensors['data'].device}"
                )
            self._packed = _C.pack_weight(
                self.format,
                self._option_group_size,
                self.symmetric,
                self.tensors["data"],
                self._scales(),
                self.tensors.get("zero_points"),
                self.shape[0],
                self.shape[1],
            )
        return self._packed

    # -- MatMulNBits interchange --------------------------------------------------------
    def matmulnbits_spec(self) -> tuple[int, int]:
        """``(bits, block_size)`` of this tensor as MatMulNBits codes, without repacking
        anything; ``ValueError`` for a tensor MatMulNBits cannot hold (see to_matmulnbits)."""
        if self.format == "int4":
            return 4, self.group_size
        if self.format in ("q4_0", "q8_0"):
            return (4 if self.format == "q4_0" else 8), 32
        if self.format == "int8":
            block = self.group_size or _largest_pow2_block(self.shape[1])
            if block < 16 or block & (block - 1):
                raise ValueError(
                    f"MatMulNBits needs a power-of-two block >= 16; this int8 weight has "
                    f"{'group_size ' + str(block) if self.group_size else 'K=' + str(self.shape[1])}. "
                    "Quantize with group_size=32 (or another power of two)"
                )
            return 8, block
        raise ValueError(
            f"MatMulNBits holds (q - zero_point) * scale codes: int4, int8, q4_0 and q8_0; "
            f"this tensor is {self.format!r}"
        )

    def to_matmulnbits(self, scale_dtype: str = "float32") -> dict[str, Any]:
        """The tensors and attributes of an ONNX Runtime ``com.microsoft.MatMulNBits`` node:
        ``B`` uint8 [N, k_blocks, block_size * bits / 8], ``scales`` flattened as ORT stores
        them (N * k_blocks), ``zero_points`` uint8 [N, ceil(k_blocks * bits / 8)] or None for
        ORT's default ``2^(bits-1)``, and ``K``, ``N``, ``bits``, ``block_size``.

        Exact for every format MatMulNBits can express, codes are only repacked: ``int4``
        (4 bits, its group size), ``int8`` (8 bits; a per-row scale is repeated over blocks
        of the largest power of two <= 256 dividing K), ``q4_0`` and ``q8_0`` (blocks of 32,
        their float16 scales widened). A float16 ``scale_dtype`` rounds the scales, the only
        loss. nf4, ternary and the k-quants raise ``ValueError``: their dequantization is
        not ``(q - zero_point) * scale``.
        """
        if scale_dtype not in ("float32", "float16"):
            raise ValueError(f"scale_dtype must be 'float32' or 'float16', got {scale_dtype!r}")
        n, k = self.shape
        bits, block = self.matmulnbits_spec()
        data = to_numpy(self.tensors["data"])
        if self.format == "int4":
            kb = self.layout["groups_per_row"]
            B = data.reshape(n, kb, block // 2)
            scales = to_numpy(self.tensors["scales"]).reshape(n, kb)
            zp = None if self.symmetric else to_numpy(self.tensors["zero_points"]).reshape(n, -1)
        elif self.format == "int8":
            zp, kb = None, -(-k // block)
            codes = np.zeros((n, kb * block), dtype=np.uint8)
            codes[:, :k] = data.view(np.uint8) ^ 0x80  # int8 q -> uint8 q + 128
            B = codes.reshape(n, kb, block)
            s = to_numpy(self.tensors["scales"]).reshape(n, -1)
            scales = np.repeat(s, kb, axis=1) if s.shape[1] == 1 else s
        else:  # q4_0, q8_0: ggml blocks of a float16 d, then 32 codes
            kb, zp = self.layout["groups_per_row"], None
            blocks = data.reshape(n, kb, -1)
            scales = blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
            qs = blocks[..., 2:]
            if self.format == "q4_0":  # element j in the low nibble of byte j, j+16 in its high
                nib = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)
                B = nib[..., 0::2] | (nib[..., 1::2] << 4)
            else:
                B = qs ^ 0x80
        return {
            "B": np.ascontiguousarray(B, dtype=np.uint8),
            "scales": np.ascontiguousarray(scales).reshape(-1).astype(scale_dtype),
            "zero_points": None if zp is None else np.ascontiguousarray(zp),
            "K": k,
            "N": n,
            "bits": bits,
            "block_size": block,
        }

    @classmethod
    def from_matmulnbits(
        cls,
        B: Any,
        scales: Any,
        zero_points: Any = None,
        *,
        K: int,
        N: int,
        block_size: int,
        bits: int = 4,
    ) -> QuantizedTensor:
        """Wraps MatMulNBits tensors (numpy) without changing a code: 4 bits as ``int4``
        (symmetric when ``zero_points`` is None, ORT's default 8), 8 bits with the default
        zero point 128 as ``int8`` with ``group_size=block_size``."""
        if bits not in (4, 8):
            raise ValueError(f"only 4- and 8-bit MatMulNBits weights are supported, got bits={bits}")
        kb = -(-K // block_size)
        b = np.asarray(B)
        if b.dtype != np.uint8 or b.size != N * kb * block_size * bits // 8:
            raise ValueError(
                f"B must be uint8 [N, k_blocks, block_size*bits/8] = [{N}, {kb}, {block_size * bits // 8}], "
                f"got {b.dtype} {b.shape}"
            )
        s = np.asarray(scales)
        if s.size != N * kb or s.dtype not in (np.float32, np.float16):
            raise ValueError(
                f"scales must be float32/float16 with N * k_blocks = {N * kb} values, got {s.dtype} {s.shape}"
            )
        s = s.astype(np.float32).reshape(N, kb)
        if bits == 8:
            if zero_points is not None:
                raise ValueError(
                    "8-bit MatMulNBits with zero points has no slmops format (int8 is symmetric)"
                )
            codes = (b.reshape(N, kb * block_size)[:, :K] ^ 0x80).view(np.int8)
            return cls(
                "int8", (N, K), {"data": codes.copy(), "scales": s}, group_size=block_size, symmetric=True
            )
        tensors = {"data": b.reshape(N, -1).copy(), "scales": s}
        if zero_points is not None:
            z = np.asarray(zero_points)
            if z.dtype != np.uint8 or z.size != N * ((kb + 1) // 2):
                raise ValueError(
                    f"zero_points must be uint8 [N, ceil(k_blocks/2)] = [{N}, {(kb + 1) // 2}], "
                    f"got {z.dtype} {z.shape}"
                )
            tensors["zero_points"] = z.reshape(N, -1).copy()
        return cls("int4", (N, K), tensors, group_size=block_size, symmetric=zero_points is None)

    # -- safetensors ----------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes a .safetensors file atomically (temp file, then rename)."""
        from safetensors.numpy import save_file

        meta = {
            "slmops_quantized_tensor": str(_STORAGE_VERSION),
            "format": self.format,
            "shape": json.dumps(list(self.shape)),
            "group_size": str(self.group_size),
            "symmetric": str(self.symmetric).lower(),
            "dtype": self.dtype,
        }
        arrays = {k: np.ascontiguousarray(to_numpy(v)) for k, v in self.tensors.items()}
        with atomic_file(path) as tmp:
            save_file(arrays, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, framework: str = "numpy") -> QuantizedTensor:
        """Reads a file written by :meth:`save`; ``framework`` is 'numpy' or 'torch'."""
        from safetensors import safe_open
        from safetensors.numpy import load_file

        if framework not in ("numpy", "torch"):
            raise ValueError(f"framework must be 'numpy' or 'torch', got {framework!r}")
        try:
            with safe_open(os.fspath(path), framework="numpy") as f:
                meta = f.metadata() or {}
        except Exception as e:  # SafetensorError derives from Exception only
            raise ValueError(f"{os.fspath(path)} is not a valid safetensors file: {e}") from e
        if "slmops_quantized_tensor" not in meta:
            raise ValueError(f"{os.fspath(path)} is not a QuantizedTensor file (no slmops metadata)")
        if int(meta["slmops_quantized_tensor"]) > _STORAGE_VERSION:
            raise ValueError(
                f"{os.fspath(path)} was written by a newer slmops (storage version "
                f"{meta['slmops_quantized_tensor']}); upgrade slmops"
            )
        try:
            arrays = load_file(os.fspath(path))
        except Exception as e:
            raise ValueError(f"{os.fspath(path)} is not a valid safetensors file: {e}") from e
        tensors = {k: from_numpy(v, framework) for k, v in arrays.items()}
        try:
            return cls(
                meta["format"],
                tuple(json.loads(meta["shape"])),
                tensors,
                group_size=int(meta["group_size"]),
                symmetric=meta["symmetric"] == "true",
                dtype=meta["dtype"],
            )
        except (
            TypeError,
            KeyError,
            json.JSONDecodeError,
        ) as e:  # a file's tensors or metadata of the wrong kind
            raise ValueError(f"{os.fspath(path)} is not a valid QuantizedTensor file: {e}") from e

    # -- validation -----------------------------------------------------------------
    def _check_tensors(self) -> None:
        n = self.shape[0]
        L = self.layout
        # int8 codes are signed; every other format packs bytes (the kernels take exactly these)
        expected = {"data": (n * L["data_bytes_per_row"], ("int8",) if self.format == "int8" else ("uint8",))}
        if self.double_quant:
            if self.format != "nf4":
                raise ValueError("double-quantized scales are only defined for format 'nf4'")
            count = n * L["scales_per_row"]
            blocks = -(-count // _C.NF4_DOUBLE_QUANT_BLOCK)
            expected.update(
                {
                    "scale_codes": (count, ("int8",)),
                    "scale_block_scales": (blocks, ("float32",)),
                    "scale_offset": (1, ("float32",)),
                }
            )
        elif L["tensor_scale"] or L["scales_per_row"]:
            expected["scales"] = (1 if L["tensor_scale"] else n * L["scales_per_row"], ("float32",))
        if L["zero_point_bytes_per_row"]:
            expected["zero_points"] = (n * L["zero_point_bytes_per_row"], ("uint8",))
        missing = set(expected) - set(self.tensors)
        extra = set(self.tensors) - set(expected)
        if missing or extra:
            raise ValueError(
                f"{self.format} tensor buffers must be {sorted(expected)}, got {sorted(self.tensors)}"
            )
        for name, (count, dtypes) in expected.items():
            t = self.tensors[name]
            size = t.numel() if is_torch(t) else t.size
            if size != count or dtype_name(t) not in dtypes:
                raise ValueError(
                    f"buffer {name!r} must hold {count} {'/'.join(dtypes)} values, "
                    f"got {dtype_name(t)} with {size}"
                )
            # a damaged file: every dequantized value (a code of at most 255 times a scale) finite
            if dtypes == ("float32",) and size:
                values = to_numpy(t.detach().cpu() if is_torch(t) else t)
                if not np.isfinite(values).all() or np.abs(values).max() > _MAX_SCALE:
                    raise ValueError(
                        f"buffer {name!r} holds scales that are not finite or exceed {_MAX_SCALE:.3g}"
                    )


_MAX_SCALE = float(np.finfo(np.float32).max) / 256


def _largest_pow2_block(k: int) -> int:
    """The largest power of two <= 256 dividing k (MatMulNBits blocks for a per-row scale)."""
    block = 256
    while block > 1 and k % block:
        block //= 2
    return block


def quantize(
    w: Any,
    format: str,
    *,
    group_size: int | None = None,
    symmetric: bool | None = None,
    double_quant: bool = False,
    isa: str = "auto",
) -> QuantizedTensor:
    """Quantizes a 2-D weight ``[out_features, in_features]`` (numpy array or torch CPU
    tensor; float32, float16 or bfloat16) along its input dimension.

    ``group_size``: int4 (default 32), nf4 (default 64) and int8 (default: one scale per
    row). ``symmetric``: int4 only (default True). ``double_quant``: nf4 only. ``isa``
    forces a kernel set ('ref', 'avx2', 'avx512'); the default picks the best one.
    Strided inputs are copied to contiguous memory first.
    """
    info = _format_info(format)
    check_array(w, "weight")
    if len(w.shape) != 2:
        raise ValueError(f"weight must be 2-D [out_features, in_features], got shape {tuple(w.shape)}")
    if min(w.shape) == 0:
        raise ValueError(f"weight is empty, shape {tuple(w.shape)}; nothing to quantize")
    dtype = dtype_name(w)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"weight must be float32, float16 or bfloat16, got {dtype}; convert it first, "
            "e.g. w.astype(np.float32) or w.float()"
        )
    if is_torch(w) and w.device.type != "cpu":
        raise ValueError(f"quantize runs on the CPU; the weight is on {w.device}. Call w.cpu() first")
    if group_size is not None and not info["has_group_size"]:
        raise ValueError(f"format {format!r} has a fixed block size; do not pass group_size")
    if group_size is not None and (not isinstance(group_size, int) or group_size <= 0):
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if symmetric is False and not info["has_symmetric_option"]:
        raise ValueError(f"format {format!r} is symmetric only; symmetric=False is supported by 'int4'")
    if double_quant and format != "nf4":
        raise ValueError("double_quant=True applies to format 'nf4' only")
    sym = True if symmetric is None else bool(symmetric)
    gs = group_size or 0

    n, k = (int(d) for d in w.shape)
    layout = _C.quant_layout(format, k, gs, sym)
    src = kernel_input(w)
    try:
        tensors = {
            "data": empty(src, (n, layout["data_bytes_per_row"]), "int8" if format == "int8" else "uint8")
        }
        if layout["tensor_scale"]:
            tensors["scales"] = empty(src, (1,), "float32")
        elif layout["scales_per_row"]:
            tensors["scales"] = empty(src, (n, layout["scales_per_row"]), "float32")
        if layout["zero_point_bytes_per_row"]:
            tensors["zero_points"] = empty(src, (n, layout["zero_point_bytes_per_row"]), "uint8")
    except RuntimeError as e:
        # A group far past K pads every row to it (int4 groups of 2^31: 1 GiB a row); torch's
        # allocator says so with a RuntimeError, numpy with the MemoryError raised here too.
        raise MemoryError(
            f"{format} storage of {n} rows x {layout['data_bytes_per_row']} bytes does not fit in memory"
        ) from e
    _C.quantize(
        src, format, gs, sym, tensors["data"], tensors.get("scales"), tensors.get("zero_points"), isa=isa
    )

    if double_quant:
        scales = to_numpy(tensors.pop("scales")).reshape(-1)
        codes = np.empty(scales.shape, dtype=np.int8)
        block_scales = np.empty(-(-scales.size // _C.NF4_DOUBLE_QUANT_BLOCK), dtype=np.float32)
        offset = _C.double_quantize_scales(scales, codes, block_scales)
        framework = "torch" if is_torch(src) else "numpy"
        tensors.update(
            {
                "scale_codes": from_numpy(codes, framework),
                "scale_block_scales": from_numpy(block_scales, framework),
                "scale_offset": from_numpy(np.array([offset], dtype=np.float32), framework),
            }
        )
    return QuantizedTensor(
        format, (n, k), tensors, group_size=layout["group_size"], symmetric=sym, dtype=dtype
    )


def dequantize(qw: QuantizedTensor, dtype: str | None = None) -> Any:
    """Same as ``qw.dequantize(dtype)``."""
    if not isinstance(qw, QuantizedTensor):
        raise TypeError(f"expected a QuantizedTensor, got {type(qw).__name__}")
    return qw.dequantize(dtype)
