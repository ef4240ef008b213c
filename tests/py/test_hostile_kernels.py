"""Hostile input at the kernel entry points, through slmops.ops and slmops._C: sizes that
overflow int64, crafted files and buffers, byte-swapped and misaligned arrays, weights past
a format's range, NaN activations and distillation rows, buffers resized under a packed
weight. Each test names what went wrong before; .ci/sanitizers runs this file under
ASan+UBSan, where the memory errors among them were reports rather than wrong results."""

import os
import sys

import gguf
import numpy as np
import pytest
import quant_reference as ref
import torch
from conftest import ISAS, gaussian
from safetensors.numpy import save_file
from slmops import _C
from slmops.nn import SparseLinear
from slmops.ops import (
    QuantizedTensor,
    SparseTensor,
    TeacherTopK,
    fused_linear_kd_loss,
    kd_loss,
    qmatmul,
    quantize,
    sparsify,
    spmm,
)

BIG_ENDIAN = ">" if sys.byteorder == "little" else "<"
GGUF_TYPES = {
    "q4_0": gguf.GGMLQuantizationType.Q4_0,
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
    "q4_k": gguf.GGMLQuantizationType.Q4_K,
    "q6_k": gguf.GGMLQuantizationType.Q6_K,
    "tq2_0": gguf.GGMLQuantizationType.TQ2_0,
}


def misaligned(a):
    """a's values in memory one byte past an aligned address (np.frombuffer at offset 1)."""
    buf = bytearray(a.nbytes + 1)
    out = np.frombuffer(buf, a.dtype, count=a.size, offset=1).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned
    return out


def byte_swapped(a):
    out = a.astype(a.dtype.newbyteorder(BIG_ENDIAN))
    assert not out.dtype.isnative
    return out


# ---- 1. sizes ---------------------------------------------------------------------------


def test_int8_group_size_near_int64_max_is_one_group_per_row(rng):
    # K + group_size - 1 wrapped: zero groups, no scales, a store through a null pointer.
    w = gaussian(rng, (4, 256))
    q = quantize(w, "int8", group_size=2**63 - 1)
    codes, scales = ref.int8(w)
    np.testing.assert_array_equal(q.tensors["data"], codes)
    np.testing.assert_array_equal(np.asarray(q.tensors["scales"]).reshape(-1), scales.reshape(-1))


def test_crafted_file_with_a_huge_group_size_is_refused_at_load(tmp_path, rng):
    # The file loaded (zero groups: no scales expected) and dequantize crashed.
    path = tmp_path / "q.safetensors"
    meta = {
        "slmops_quantized_tensor": "1",
        "format": "int8",
        "shape": "[4, 256]",
        "group_size": str(2**63 - 1),
        "symmetric": "true",
        "dtype": "float32",
    }
    save_file({"data": rng.integers(-127, 128, (4, 256)).astype(np.int8)}, str(path), metadata=meta)
    with pytest.raises(ValueError, match="buffers must be"):
        QuantizedTensor.load(path)


@pytest.mark.parametrize(
    "call",
    [
        # rows * bytes per row wrapped to 0, so empty buffers passed and the kernels ran 2^62 rows
        lambda: _C.pack_weight(
            "int8", 0, True, np.empty(0, np.int8), np.empty(0, np.float32), None, 2**62, 256
        ),
        lambda: _C.quant_layout("q8_0", (2**63 - 1) // 32 * 32, 0, True),
        lambda: _C.pack_csr(
            2**63 - 1, 8, np.zeros(1, np.int64), np.zeros(0, np.int16), np.zeros(0, np.float32)
        ),
        lambda: _C.pack_nm(
            2, 4, 2**40, 2**40, "float32", np.zeros(0, np.float32), None, None, 0, np.zeros(0, np.uint8)
        ),
    ],
    ids=["pack_weight_rows", "gguf_row_bytes", "csr_rows_plus_one", "nm_values"],
)
def test_size_products_past_int64_raise(call):
    with pytest.raises(ValueError, match="overflows 64-bit sizes"):
        call()


def test_negative_sparse_group_is_refused():
    # -16 passed "a multiple of 16" and gave negative buffer sizes.
    codes, idx = np.zeros(64, np.int8), np.zeros(16, np.uint8)
    with pytest.raises(ValueError, match="quantization group"):
        _C.pack_nm(2, 4, 2, 64, "int8", codes, np.ones(8, np.float32), None, -16, idx)


def test_fused_chunk_rows_of_an_empty_vocabulary_raises():
    # The doubling loop never ended for vocab <= 0.
    with pytest.raises(ValueError, match="vocab > 0"):
        _C.fused_kd_chunk_rows(8, 0)


# ---- 2. NaN in, NaN out -------------------------------------------------------------------


def assert_finite_rows_match_torch(y, x, w, activation):
    """Rows 2.. of y against torch's float64 x @ w.T; the int8 modes round each activation by
    up to half a step of absmax / 127, so their bound is 1% of sum |x| |w| per output."""
    x, w = torch.from_numpy(x[2:]).double(), torch.from_numpy(w).double()
    bound = (1e-5 if activation == "float" else 1e-2) * (x.abs() @ w.abs().T) + 1e-6
    assert ((torch.from_numpy(np.asarray(y[2:])).double() - x @ w.T).abs() <= bound).all()


def hostile_rows(rng, m, k):
    """x [m, k] with NaN in row 0 (a column no sparse weight below touches) and -Inf in row 1."""
    x = gaussian(rng, (m, k))
    x[0, 1] = np.nan
    x[1, 2] = -np.inf
    return x


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", ["int4", "int8", "nf4", "ternary", "q4_0", "q8_0", "q6_k"])
@pytest.mark.parametrize("activation", ["float", "int8", "int8_row"])
@pytest.mark.parametrize("m", [3, 80])
def test_qmatmul_nan_rows_are_nan_on_every_path(rng, isa, fmt, activation, m):
    # int8 / int8_row coded a NaN row into finite output rows; float mode gave NaN.
    q = quantize(gaussian(rng, (20, 256), std=0.05), fmt)
    x = hostile_rows(rng, m, 256)
    y = qmatmul(x, q, activation=activation, isa=isa)
    assert np.isnan(y[:2]).all()
    assert_finite_rows_match_torch(y, x, q.dequantize(), activation)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(
    "pattern,values,activation",
    [
        ("csr", "float32", "float"),
        ("2:4", "float32", "float"),
        ("2:4", "int8", "int8"),
        ("2:4", "int4", "int8"),
        ("4:8", "int4", "int8"),
    ],
)
@pytest.mark.parametrize("m", [3, 9])
def test_spmm_nan_rows_are_nan_on_every_path(rng, isa, pattern, values, activation, m):
    # Columns 0..3 of the weight are zero: a NaN in x[0, 1] met no stored weight, so the row
    # stayed finite (the int8 mode hid it everywhere), unlike torch's dense product.
    w = gaussian(rng, (16, 64))
    w[:, :4] = 0
    sw = sparsify(w, pattern, values=values, prune=pattern != "csr")
    x = hostile_rows(rng, m, 64)
    y = spmm(x, sw, activation=activation, isa=isa)
    dense = sw.to_dense()
    assert torch.isnan(torch.from_numpy(x[:2]) @ torch.from_numpy(dense).T).all()  # torch's rule
    assert np.isnan(y[:2]).all()
    assert_finite_rows_match_torch(y, x, dense, activation)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_top_k_nan_log_probability_gives_nan_loss_and_gradient(isa, divergence):
    # The row's loss was 0.0 with NaN gradients: a NaN that vanished from the loss.
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 50, generator=g) * 3, torch.randn(4, 50, generator=g) * 3
    lp, ids = torch.log_softmax(t.double(), -1).topk(5, -1)
    lp = lp.float()
    lp[1, 2] = float("nan")
    teacher = TeacherTopK(ids, lp)
    loss, grad = kd_loss(s, teacher, divergence=divergence, reduction="none", return_grad=True, isa=isa)
    # torch on the same definition (float64, k ids plus the tail) propagates the NaN too
    lq = torch.log_softmax(s.double(), -1)
    assert torch.isnan((lp.double().exp() * (lp.double() - lq.gather(-1, ids))).sum(-1))[1]
    assert torch.isnan(loss[1]) and torch.isnan(grad[1]).all()
    assert torch.isfinite(loss[[0, 2, 3]]).all() and torch.isfinite(grad[[0, 2, 3]]).all()
    total, _ = kd_loss(s, teacher, divergence=divergence, return_grad=True, isa=isa)
    assert torch.isnan(total)


@pytest.mark.parametrize("isa", ISAS)
def test_nan_student_or_teacher_rows_are_nan_in_every_form(isa):
    # The scalar kernels turned NaN logits into a loss of 1e30 or 0 (SIMD gave NaN).
    g = torch.Generator().manual_seed(1)
    hidden, head = torch.randn(3, 8, generator=g), torch.randn(40, 8, generator=g)
    s, t = torch.randn(3, 40, generator=g), torch.randn(3, 40, generator=g)
    s[0, 3], t[2, 5] = float("nan"), float("nan")
    loss, grad = kd_loss(s, t, reduction="none", return_grad=True, isa=isa)
    assert torch.isnan(loss[[0, 2]]).all() and torch.isnan(grad[[0, 2]]).all() and torch.isfinite(loss[1])
    hidden[1, 0] = float("nan")
    loss, _, _ = fused_linear_kd_loss(hidden, head, t, reduction="none", isa=isa)
    assert torch.isnan(loss[[1, 2]]).all() and torch.isfinite(loss[0])


# ---- 3. byte order and alignment ----------------------------------------------------------


@pytest.mark.parametrize("fmt", ["int8", "int4", "nf4", "q4_0"])
@pytest.mark.parametrize("memory", [byte_swapped, misaligned])
def test_byte_swapped_and_misaligned_weights_quantize_as_their_values(rng, fmt, memory):
    # '>f4' was read as little-endian (a false NaN error or garbage codes); a misaligned
    # array was read through misaligned float loads (UBSan: misaligned-pointer-use).
    w = gaussian(rng, (8, 256))
    q = quantize(memory(w), fmt)
    np.testing.assert_array_equal(q.tensors["data"], quantize(w, fmt).tensors["data"])
    if fmt == "int8":
        np.testing.assert_array_equal(q.tensors["data"], ref.int8(w)[0])


@pytest.mark.parametrize("memory", [byte_swapped, misaligned])
def test_byte_swapped_and_misaligned_activations_multiply_as_their_values(rng, memory):
    q = quantize(gaussian(rng, (16, 64), std=0.05), "int4")
    x = gaussian(rng, (5, 64))
    want = torch.from_numpy(x).double() @ torch.from_numpy(q.dequantize()).double().T
    np.testing.assert_allclose(qmatmul(memory(x), q), want.numpy(), rtol=1e-5, atol=1e-5)
    sw = sparsify(
        np.where(np.arange(64) % 4 < 2, 1.0, 0.0).astype(np.float32) * gaussian(rng, (16, 64)), "2:4"
    )
    want = torch.from_numpy(x).double() @ torch.from_numpy(sw.to_dense()).double().T
    np.testing.assert_allclose(spmm(memory(x), sw), want.numpy(), rtol=1e-5, atol=1e-5)
    z, t = gaussian(rng, (4, 30)), gaussian(rng, (4, 30))
    np.testing.assert_allclose(kd_loss(memory(z), memory(t)), kd_loss(z, t), rtol=1e-6)


def test_misaligned_torch_tensor_is_read_from_an_aligned_copy(rng):
    w = gaussian(rng, (4, 64))
    buf = bytearray(w.nbytes + 1)
    t = torch.frombuffer(buf, dtype=torch.float32, offset=1, count=w.size).reshape(4, 64)
    t.copy_(torch.from_numpy(w))
    assert t.data_ptr() % 4
    np.testing.assert_array_equal(np.asarray(quantize(t, "int8").tensors["data"]), ref.int8(w)[0])


def test_buffers_that_require_grad_are_read_as_their_values(rng):
    # DLPack export of a tensor that requires grad raised BufferError out of the bindings.
    q = quantize(torch.from_numpy(gaussian(rng, (4, 64))), "int8")
    tensors = {**q.tensors, "scales": q.tensors["scales"].clone().requires_grad_()}
    crafted = QuantizedTensor("int8", (4, 64), tensors)
    torch.testing.assert_close(crafted.dequantize(), q.dequantize(), rtol=0, atol=0)
    x = torch.ones(2, 64)
    torch.testing.assert_close(qmatmul(x, crafted), qmatmul(x, q), rtol=0, atol=0)


@pytest.mark.parametrize("memory", [byte_swapped, misaligned])
def test_outputs_that_would_be_written_to_a_copy_are_refused(rng, memory):
    q = quantize(gaussian(rng, (4, 64)), "int8")
    dst = memory(np.zeros((4, 64), np.float32))
    with pytest.raises(ValueError, match="cannot be written in place"):
        _C.dequantize("int8", 0, True, q.tensors["data"], q.tensors["scales"], None, dst)


# ---- 4. GGUF fp16 scale overflow ----------------------------------------------------------

# The largest weight magnitude each GGUF format holds: 65504 (fp16's largest) times the
# largest code its overflowing scale multiplies (q4_k: the block minimum, for negative weights).
LIMITS = {"q4_0": 524032.0, "q8_0": 8319008.0, "q4_k": -4126752.0, "q6_k": 268304384.0, "tq2_0": 65504.0}


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", list(LIMITS))
def test_gguf_weights_past_the_fp16_scale_raise_naming_the_limit(rng, isa, fmt):
    # tq2_0 at 7e4 and q4_0 at 6e5 dequantized to Inf from finite weights.
    limit = LIMITS[fmt]
    w = gaussian(rng, (3, 512), std=0.1)
    w[1] = limit
    q = quantize(w, fmt, isa=isa)
    data = np.asarray(q.tensors["data"])
    np.testing.assert_array_equal(
        gguf.quants.dequantize(data, GGUF_TYPES[fmt])[1], w[1]
    )  # exact at the limit
    w[2, 300] = limit * 1.07
    with pytest.raises(ValueError, match=rf"format '{fmt}'.*row 2.*up to {abs(int(limit))}"):
        quantize(w, fmt, isa=isa)


def test_issue_examples_raise():
    with pytest.raises(ValueError, match="'tq2_0'.*65504"):
        quantize(np.full((4, 256), 7e4, np.float32), "tq2_0")
    with pytest.raises(ValueError, match="'q4_0'.*524032"):
        quantize(np.full((4, 256), 6e5, np.float32), "q4_0")


def test_int4_asymmetric_range_past_float32_raises(rng):
    w = gaussian(rng, (2, 64))
    w[1, :2] = [-3e38, 3e38]  # (max - min) / 15 is Inf in float32: codes would decode to NaN
    with pytest.raises(ValueError, match="overflows float32"):
        quantize(w, "int4", symmetric=False)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", ["int8", "int4", "nf4", "q4_0", "q8_0", "q4_k", "q6_k", "tq2_0"])
def test_groups_too_small_for_their_scale_quantize_to_zero(rng, isa, fmt):
    # 1 / scale overflowed for weights below ~1e-37: codes from x * Inf (undefined in C++,
    # INT_MIN in SIMD) decoded to values of the wrong sign. Such groups now hold zeros, and
    # the other rows quantize as the reference does.
    w = gaussian(rng, (3, 256))
    w[1] *= 1e-40
    q = quantize(w, fmt, isa=isa)
    out = q.dequantize()
    np.testing.assert_array_equal(out[1], np.zeros(256, np.float32))
    np.testing.assert_array_equal(out[[0, 2]], quantize(w[[0, 2]], fmt).dequantize())
    if fmt == "int8":
        np.testing.assert_array_equal(np.asarray(q.tensors["data"])[[0, 2]], ref.int8(w[[0, 2]])[0])


# ---- 5. memory safety ---------------------------------------------------------------------


def crafted_csr():
    """row_ptr [0, 100, 5] over 5 nonzeros: row 0 claims 100 of them."""
    return {
        "row_ptr": np.array([0, 100, 5], np.int64),
        "cols": np.arange(5, dtype=np.int16),
        "values": np.ones(5, np.float32),
    }


def test_crafted_csr_row_pointers_are_refused_before_columns_are_read():
    # validate_csr read row 0's 100 columns from a buffer of 5 (heap-buffer-overflow).
    with pytest.raises(ValueError, match=r"row_ptr must not decrease: row_ptr\[2\] = 5 < row_ptr\[1\] = 100"):
        SparseTensor("csr", (2, 8), crafted_csr())


def test_crafted_csr_checkpoint_is_refused_at_load():
    layer = SparseLinear.from_linear(torch.nn.Linear(8, 2), "csr")
    state = {
        k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in layer.state_dict().items()
    }
    state.update({f"sparse_{k}": torch.from_numpy(v) for k, v in crafted_csr().items()})
    layer.load_state_dict(state)
    with pytest.raises(ValueError, match="row_ptr must not decrease"):
        layer(torch.ones(1, 8))


def test_csr_indices_written_after_packing_do_not_reach_the_kernels(rng):
    # The pack borrowed row_ptr and cols: an in-place write after validation sent the
    # kernels past the buffers. It now holds its own validated copy.
    w = gaussian(rng, (6, 40))
    w[np.abs(w) < 1] = 0
    sw = sparsify(w, "csr")
    x = gaussian(rng, (3, 40))
    want = spmm(x, sw)
    sw.tensors["row_ptr"][1:] = 2**40
    sw.tensors["cols"][:] = -1
    np.testing.assert_array_equal(spmm(x, sw), want)
    np.testing.assert_allclose(want, x @ w.T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("framework", ["numpy", "torch"])
@pytest.mark.parametrize("fmt", ["int8", "int4", "nf4", "ternary", "q6_k"])
def test_buffers_resized_after_packing_are_refused(rng, framework, fmt):
    # The packed weight kept the old data pointer: the next qmatmul read freed memory.
    w = gaussian(rng, (8, 256))
    q = quantize(torch.from_numpy(w) if framework == "torch" else w, fmt)
    x = torch.ones(2, 256) if framework == "torch" else np.ones((2, 256), np.float32)
    qmatmul(x, q)
    data = q.tensors["data"]
    if framework == "torch":
        data.resize_(data.numel() * 64)
    else:
        data.resize(data.size * 64, refcheck=False)
    with pytest.raises(ValueError, match="resized or reallocated after the weight was packed"):
        qmatmul(x, q)


def test_sparse_values_resized_after_packing_are_refused(rng):
    w = gaussian(rng, (8, 64))
    w[:, 1::2] = 0
    sw = sparsify(w, "2:4")
    sw = SparseTensor(
        "2:4", sw.shape, {k: np.array(v) for k, v in sw.tensors.items()}
    )  # arrays that own memory
    x = np.ones((2, 64), np.float32)
    spmm(x, sw)
    sw.tensors["values"].resize(4096, refcheck=False)
    with pytest.raises(ValueError, match="resized or reallocated"):
        spmm(x, sw)


# ---- 7. the fuzzer stays green --------------------------------------------------------------


def test_fuzz_kernel_args_runs_clean_for_a_few_seconds(capsys):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "fuzz"))
    try:
        import fuzz_kernel_args
    finally:
        sys.path.pop(0)
    assert fuzz_kernel_args.main(["--seconds", "3", "--seed", "1234"]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out
    assert int(out.split("fuzz_kernel_args: ")[1].split()[0]) > 20
