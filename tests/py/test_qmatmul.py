"""qmatmul against torch: float64 products of the dequantized weight with the activations
(for activation='int8', with the int8-quantized activations the kernels use)."""

import numpy as np
import pytest
import torch
from conftest import ISAS, gaussian
from slmops import _C
from slmops.ops import qmatmul, quantize

CASES = [
    ("int8", {}),
    ("int8", {"group_size": 64}),
    ("int4", {"group_size": 32}),
    ("int4", {"group_size": 128, "symmetric": False}),
    ("int4", {"group_size": 16}),
    ("nf4", {}),
    ("ternary", {}),
    ("q4_0", {}),
    ("q8_0", {}),
    ("q4_k", {}),
    ("q6_k", {}),
    ("tq2_0", {}),
]


def int8_activations(x: np.ndarray, activation: str = "int8") -> np.ndarray:
    """The activations the int8 paths multiply: int8 in blocks of 32 ('int8') or with one
    scale per row ('int8_row'), dequantized."""
    group = 32 if activation == "int8" else None
    return quantize(x, "int8", group_size=group, isa="ref").dequantize()


def int8_codebook_nf4(q) -> np.ndarray:
    """nf4 as the int8-activation kernels use it: absmax / 127 * round(127 * code value)."""
    data = np.asarray(q.tensors["data"])
    codes = np.stack([data >> 4, data & 0xF], axis=-1).reshape(q.shape)  # first element high nibble
    c8 = np.rint(127 * np.asarray(_C.NF4_CODEBOOK, np.float32))
    scales = np.repeat(np.asarray(q.tensors["scales"]), q.group_size, axis=1)
    return (scales / np.float32(127)) * c8[codes]


def weight_used(q, activation):
    return int8_codebook_nf4(q) if (q.format == "nf4" and activation != "float") else q.dequantize()


def reference(x, q, bias, activation):
    xe = x if activation == "float" else int8_activations(x, activation)
    y = xe.astype(np.float64) @ weight_used(q, activation).astype(np.float64).T
    return y + (bias.astype(np.float64) if bias is not None else 0)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("activation", ["float", "int8", "int8_row"])
@pytest.mark.parametrize(("fmt", "opts"), CASES, ids=[f"{f}{o}" for f, o in CASES])
def test_qmatmul_matches_torch_float64(rng, isa, activation, fmt, opts):
    K = 512 if fmt in ("q4_k", "q6_k", "tq2_0") else 320
    for M, N in [(1, 67), (5, 33), (70, 9)]:
        w = gaussian(rng, (N, K), std=0.05)
        x = gaussian(rng, (M, K))
        bias = gaussian(rng, (N,))
        q = quantize(w, fmt, **opts)
        y = qmatmul(x, q, bias=bias, activation=activation, isa=isa)
        ref = reference(x, q, bias, activation)
        # fp32 accumulation of K products: relative to the sum of |products|, a few ulp per term.
        xe = x if activation == "float" else int8_activations(x, activation)
        mag = np.abs(xe) @ np.abs(weight_used(q, activation)).T * 3 + np.abs(bias)
        assert np.all(np.abs(y - ref) <= (16 + 2 * K) * 2.0**-24 * mag + 1e-30), (M, N)


@pytest.mark.skipif(not _C.build_info()["onednn"], reason="built without oneDNN")
def test_onednn_w8a8_matches_the_kernels(rng):
    w = gaussian(rng, (96, 1000), std=0.05)
    x = gaussian(rng, (37, 1000))
    q = quantize(w, "int8")
    y1 = qmatmul(x, q, activation="int8_row", backend="onednn")
    y2 = qmatmul(x, q, activation="int8_row", backend="kernels")
    ref = reference(x, q, None, "int8_row")
    np.testing.assert_allclose(y1, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(y2, ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="backend 'onednn' needs"):
        qmatmul(x, quantize(w, "int8", group_size=32), activation="int8_row", backend="onednn")
    with pytest.raises(ValueError, match="backend must be"):
        qmatmul(x, q, backend="mkl")


def test_int8_activation_error_is_small_against_the_float_path(rng):
    """The documented cost of activation='int8': per-32-block int8 activations. On Gaussian
    activations the relative error of the outputs is ~ 1/(127*sqrt(3)) * absmax/rms of a
    block ~ 0.5%; the budget is 1.5% of the output rms."""
    w = gaussian(rng, (256, 2048), std=0.02)
    x = gaussian(rng, (16, 2048))
    for fmt in ("int4", "int8", "q4_0", "ternary"):
        q = quantize(w, fmt)
        yf = qmatmul(x, q)
        yi = qmatmul(x, q, activation="int8")
        rel = np.sqrt(np.mean((yi - yf) ** 2) / np.mean(yf**2))
        assert rel < 0.015, (fmt, rel)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_torch_inputs_keep_dtype_and_leading_dims(rng, dtype):
    w = gaussian(rng, (48, 256), std=0.05)
    q = quantize(torch.from_numpy(w), "int4")
    x = torch.from_numpy(gaussian(rng, (2, 3, 256))).to(dtype)
    y = qmatmul(x, q)
    assert y.dtype == dtype and y.shape == (2, 3, 48)
    ref = x.double() @ q.dequantize("float32").double().T
    tol = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
    torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol)


def test_non_contiguous_x_and_zero_rows(rng):
    w = gaussian(rng, (16, 128))
    q = quantize(w, "q8_0")
    x = torch.from_numpy(gaussian(rng, (128, 7))).t()  # strided view
    torch.testing.assert_close(qmatmul(x, q), qmatmul(x.contiguous(), q), rtol=0, atol=0)
    assert qmatmul(np.zeros((0, 128), np.float32), q).shape == (0, 16)


def test_bad_input(rng):
    q = quantize(gaussian(rng, (8, 64)), "int4")
    with pytest.raises(ValueError, match="in_features=64"):
        qmatmul(np.zeros((2, 63), np.float32), q)
    with pytest.raises(ValueError, match="activation must be"):
        qmatmul(np.zeros((2, 64), np.float32), q, activation="int4")
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        qmatmul(np.zeros((2, 64), np.int32), q)
    with pytest.raises(ValueError, match="bias must have shape"):
        qmatmul(np.zeros((2, 64), np.float32), q, bias=np.zeros(7, np.float32))
    with pytest.raises(TypeError, match="QuantizedTensor"):
        qmatmul(np.zeros((2, 64), np.float32), np.zeros((8, 64), np.float32))
