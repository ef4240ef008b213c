"""The Python API around the kernels: interop, bad input, storage, MatMulNBits."""

import numpy as np
import pytest
import torch
from conftest import gaussian
from slmops import _C
from slmops.ops import QuantizedTensor, dequantize, quantize

ALL_FORMATS = ["int8", "int4", "nf4", "ternary", "q4_0", "q8_0", "q4_k", "q6_k", "tq2_0"]


# ---- interop -------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ALL_FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_torch_inputs_give_the_numpy_result_in_torch(rng, fmt, dtype):
    w = torch.from_numpy(gaussian(rng, (9, 512), std=0.02)).to(dtype)
    q = quantize(w, fmt)
    assert all(isinstance(t, torch.Tensor) for t in q.tensors.values())
    # The same values as fp32 numpy must give the same codes: half inputs are widened exactly.
    q_np = quantize(w.float().numpy(), fmt)
    for k, t in q.tensors.items():
        np.testing.assert_array_equal(t.numpy(), q_np.tensors[k], err_msg=k)
    dq = q.dequantize()
    assert dq.dtype == dtype and dq.shape == w.shape
    # Dequantizing to a half type rounds the fp32 result to nearest (even).
    torch.testing.assert_close(dq, torch.from_numpy(q_np.dequantize()).to(dtype), rtol=0, atol=0)


@pytest.mark.parametrize("fmt", ["int4", "q8_0", "nf4"])
def test_non_contiguous_inputs(rng, fmt):
    base = gaussian(rng, (512, 64))
    t = torch.from_numpy(base).t()  # [64, 512] view with strides (1, 64)
    assert not t.is_contiguous()
    expected = quantize(t.contiguous(), fmt)
    got = quantize(t, fmt)
    np.testing.assert_array_equal(got.tensors["data"].numpy(), expected.tensors["data"].numpy())
    np.testing.assert_array_equal(quantize(base.T, fmt).tensors["data"], expected.tensors["data"].numpy())
    # Layer 1 itself refuses strided memory with a message saying how to fix it.
    data = np.empty((64, _C.quant_layout(fmt, 512)["data_bytes_per_row"]), np.uint8)
    scales = np.empty((64, max(1, _C.quant_layout(fmt, 512)["scales_per_row"])), np.float32)
    with pytest.raises(ValueError, match="contiguous"):
        _C.quantize(t, fmt, 0, True, data, scales, None)


def test_requires_grad_and_readonly_inputs(rng):
    w = torch.from_numpy(gaussian(rng, (8, 64))).requires_grad_()
    quantize(w, "int8")
    a = gaussian(rng, (8, 64))
    a.flags.writeable = False
    quantize(a, "int8")


def test_numpy_bfloat16_output_is_refused_with_a_reason(rng):
    q = quantize(gaussian(rng, (4, 64)), "int8")
    with pytest.raises(TypeError, match="bfloat16"):
        q.dequantize("bfloat16")
    assert dequantize(q, "float16").dtype == np.float16


# ---- bad input ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("w", "kwargs", "error", "match"),
    [
        (np.zeros(64, np.float32), {}, ValueError, r"2-D \[out_features, in_features\], got shape \(64,\)"),
        (np.zeros((2, 2, 64), np.float32), {}, ValueError, "2-D"),
        (np.zeros((4, 64), np.int32), {}, TypeError, "float32, float16 or bfloat16, got int32"),
        (np.zeros((4, 64), np.float64), {}, TypeError, "float64"),
        (np.zeros((0, 64), np.float32), {}, ValueError, "empty"),
        (np.zeros((4, 0), np.float32), {}, ValueError, "empty"),
        ([[1.0, 2.0]], {}, TypeError, "numpy array or a torch tensor"),
        (np.zeros((4, 64), np.float32), {"format": "int3"}, ValueError, "unknown format 'int3'"),
        (np.zeros((4, 896), np.float32), {"format": "q4_k"}, ValueError, "multiple of 256"),
        (np.zeros((4, 48), np.float32), {"format": "q4_0"}, ValueError, "multiple of 32"),
        (np.zeros((4, 100), np.float32), {"format": "nf4"}, ValueError, "not a multiple of group_size 64"),
        (np.zeros((4, 64), np.float32), {"format": "int4", "group_size": 48}, ValueError, "power of two"),
        (np.zeros((4, 64), np.float32), {"format": "int4", "group_size": 8}, ValueError, ">= 16"),
        (np.zeros((4, 64), np.float32), {"format": "int4", "group_size": -1}, ValueError, "positive"),
        (np.zeros((4, 64), np.float32), {"format": "q4_0", "group_size": 32}, ValueError, "fixed block size"),
        (np.zeros((4, 64), np.float32), {"format": "q8_0", "symmetric": False}, ValueError, "symmetric only"),
        (np.zeros((4, 64), np.float32), {"format": "int4", "double_quant": True}, ValueError, "nf4"),
        (np.zeros((4, 64), np.float32), {"isa": "sse9"}, ValueError, "unknown CPU ISA"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(w, kwargs, error, match):
    kwargs = {"format": "int8", **kwargs}
    with pytest.raises(error, match=match):
        quantize(w, kwargs.pop("format"), **kwargs)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_non_finite_weights_are_refused_with_their_position(bad, dtype):
    w = torch.zeros(5, 64, dtype=dtype)
    w[3, 17] = bad
    with pytest.raises(ValueError, match=r"NaN or Inf at \[3, 17\]"):
        quantize(w, "q8_0")


def test_layer1_validates_buffers():
    w = np.zeros((4, 64), np.float32)
    good = {"data": np.empty((4, 64), np.int8), "scales": np.empty((4, 1), np.float32)}
    with pytest.raises(ValueError, match="must hold 256 elements"):
        _C.quantize(w, "int8", 0, True, np.empty((4, 63), np.int8), good["scales"], None)
    with pytest.raises(TypeError, match="scales must be float32"):
        _C.quantize(w, "int8", 0, True, good["data"], np.empty((4, 1), np.float16), None)
    ro = np.empty((4, 64), np.int8)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        _C.quantize(w, "int8", 0, True, ro, good["scales"], None)
    with pytest.raises(TypeError, match="required, got None"):
        _C.quantize(w, "int8", 0, True, good["data"], None, None)
    with pytest.raises(ValueError, match="1-D|2-D"):
        _C.dequantize("int8", 0, True, good["data"], good["scales"], None, np.empty(256, np.float32))


def test_quantized_tensor_checks_its_buffers(rng):
    q = quantize(gaussian(rng, (4, 64)), "int4", symmetric=False)
    with pytest.raises(ValueError, match="buffers must be"):
        QuantizedTensor(
            "int4",
            (4, 64),
            {"data": q.tensors["data"], "scales": q.tensors["scales"]},
            group_size=32,
            symmetric=False,
        )
    with pytest.raises(ValueError, match="'scales' must hold 8 float32"):
        QuantizedTensor(
            "int4", (4, 64), {**q.tensors, "scales": q.tensors["scales"][:1]}, group_size=32, symmetric=False
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")
def test_cuda_dequantize_matches_cpu(rng):
    for fmt in ALL_FORMATS:
        q = quantize(torch.from_numpy(gaussian(rng, (7, 512))), fmt)
        on_gpu = QuantizedTensor(
            q.format,
            q.shape,
            {k: v.cuda() for k, v in q.tensors.items()},
            group_size=q.group_size,
            symmetric=q.symmetric,
        )
        for dtype in ("float32", "float16", "bfloat16"):
            torch.testing.assert_close(on_gpu.dequantize(dtype).cpu(), q.dequantize(dtype), rtol=0, atol=0)


def test_cuda_tensor_to_quantize_is_refused_or_skipped():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible")
    with pytest.raises(ValueError, match="CPU"):
        quantize(torch.zeros(4, 64, device="cuda"), "int8")


# ---- safetensors storage ------------------------------------------------------------
@pytest.mark.parametrize(
    ("fmt", "opts"),
    [
        ("int4", {"symmetric": False}),
        ("nf4", {"double_quant": True}),
        ("ternary", {}),
        ("q6_k", {}),
        ("int8", {"group_size": 32}),
    ],
)
@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_save_load_round_trip(tmp_path, rng, fmt, opts, framework):
    w = gaussian(rng, (6, 512))
    q = quantize(torch.from_numpy(w) if framework == "torch" else w, fmt, **opts)
    path = tmp_path / "w.safetensors"
    q.save(path)
    back = QuantizedTensor.load(path, framework=framework)
    assert (back.format, back.shape, back.group_size, back.symmetric, back.nbytes) == (
        q.format,
        q.shape,
        q.group_size,
        q.symmetric,
        q.nbytes,
    )
    assert repr(back) == repr(q)
    np.testing.assert_array_equal(np.asarray(back.dequantize()), np.asarray(q.dequantize()))
    assert list(tmp_path.iterdir()) == [path]  # no temp files left behind


def test_load_refuses_bad_files(tmp_path, rng):
    q = quantize(gaussian(rng, (4, 64)), "q8_0")
    good = tmp_path / "good.safetensors"
    q.save(good)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(ValueError, match="not a valid"):
        QuantizedTensor.load(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a valid"):
        QuantizedTensor.load(garbage)
    from safetensors.numpy import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"x": np.zeros(3, np.float32)}, plain)
    with pytest.raises(ValueError, match="not a QuantizedTensor file"):
        QuantizedTensor.load(plain)


def test_failed_save_leaves_nothing(tmp_path, rng, monkeypatch):
    import safetensors.numpy

    q = quantize(gaussian(rng, (4, 64)), "q8_0")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        q.save(tmp_path / "w.safetensors")
    assert list(tmp_path.iterdir()) == []


# ---- MatMulNBits ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("K", "block", "symmetric"), [(64, 32, True), (100, 32, False), (256, 128, False), (80, 16, True)]
)
def test_matmulnbits_round_trip_is_exact(rng, K, block, symmetric):
    q = quantize(gaussian(rng, (9, K)), "int4", group_size=block, symmetric=symmetric)
    m = q.to_matmulnbits()
    assert m["B"].shape == (9, -(-K // block), block // 2)
    back = QuantizedTensor.from_matmulnbits(m["B"], m["scales"], m["zero_points"], K=K, N=9, block_size=block)
    for k, t in q.tensors.items():
        np.testing.assert_array_equal(back.tensors[k], t)
    np.testing.assert_array_equal(back.dequantize(), q.dequantize())
    with pytest.raises(ValueError, match="B must be uint8"):
        QuantizedTensor.from_matmulnbits(
            m["B"][:, :1], m["scales"], m["zero_points"], K=K, N=9, block_size=block
        )


@pytest.mark.parametrize(
    ("format", "K", "opts"),
    [("int8", 96, {}), ("int8", 100, {"group_size": 32}), ("q4_0", 64, {}), ("q8_0", 96, {})],
)
def test_matmulnbits_holds_int8_and_ggml_blocks(rng, format, K, opts):
    """int8 and ggml's q4_0/q8_0 become 8- or 4-bit MatMulNBits codes with the same values."""
    q = quantize(gaussian(rng, (5, K)), format, **opts)
    m = q.to_matmulnbits()
    back = QuantizedTensor.from_matmulnbits(
        m["B"], m["scales"], m["zero_points"], K=K, N=5, block_size=m["block_size"], bits=m["bits"]
    )
    np.testing.assert_array_equal(back.dequantize(), q.dequantize())


def test_matmulnbits_rejects_formats_it_cannot_express(rng):
    for format in ("nf4", "q4_k", "ternary"):
        with pytest.raises(ValueError, match="MatMulNBits holds"):
            quantize(gaussian(rng, (2, 256)), format).to_matmulnbits()
    with pytest.raises(ValueError, match="power-of-two block"):
        quantize(gaussian(rng, (2, 72)), "int8").to_matmulnbits()  # 72 = 8 * 9


@pytest.mark.parametrize(
    ("format", "K", "opts"),
    [
        ("int4", 64, {"group_size": 32, "symmetric": True}),
        ("int4", 96, {"group_size": 32, "symmetric": False}),
        ("int4", 256, {"group_size": 128, "symmetric": False}),
        ("int8", 96, {}),
        ("int8", 100, {"group_size": 32}),
        ("q4_0", 64, {}),
        ("q8_0", 96, {}),
    ],
)
def test_onnxruntime_matmulnbits_decodes_our_weights(rng, format, K, opts):
    """ONNX Runtime, the public implementation, multiplies by our exported tensors: with
    A = identity it returns the dequantized weight, which must equal ours."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    N = 24
    q = quantize(gaussian(rng, (N, K)), format, **opts)
    m = q.to_matmulnbits()
    inits = [
        helper.make_tensor("B", TensorProto.UINT8, m["B"].shape, m["B"].tobytes(), raw=True),
        helper.make_tensor("scales", TensorProto.FLOAT, m["scales"].shape, m["scales"].tobytes(), raw=True),
    ]
    inputs = ["A", "B", "scales"]
    if m["zero_points"] is not None:
        zp = m["zero_points"].reshape(-1)
        inits.append(helper.make_tensor("zp", TensorProto.UINT8, zp.shape, zp.tobytes(), raw=True))
        inputs.append("zp")
    node = helper.make_node(
        "MatMulNBits",
        inputs,
        ["Y"],
        domain="com.microsoft",
        K=K,
        N=N,
        bits=m["bits"],
        block_size=m["block_size"],
        accuracy_level=0,
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [K, K])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [K, N])],
        inits,
    )
    model = helper.make_model(
        graph,
        ir_version=10,  # onnx writes newer IRs than ORT reads
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
    )
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"A": np.eye(K, dtype=np.float32)})
    np.testing.assert_allclose(y.T, q.dequantize(), rtol=0, atol=1e-6)


def test_to_moves_every_buffer_and_keeps_the_values():
    w = torch.randn(8, 64)
    q = quantize(w, "nf4", group_size=32, double_quant=True)
    moved = q.to("cpu")
    assert moved is not q and set(moved.tensors) == set(q.tensors)
    assert (moved.group_size, moved.symmetric, moved.format) == (q.group_size, q.symmetric, q.format)
    assert torch.equal(moved.dequantize(), q.dequantize())
    with pytest.raises(TypeError, match="numpy"):
        quantize(w.numpy(), "int8").to("cpu")
