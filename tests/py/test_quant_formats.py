"""Each format against an independent reference: our own formats against the numpy
implementations in quant_reference.py, the GGUF formats against the gguf package."""

import gguf
import numpy as np
import pytest
import quant_reference as ref
from conftest import ISAS, gaussian, normalized_mse
from slmops.ops import FORMATS, quantize

# Shapes: tails for the formats that allow any K, block multiples for the rest.
ANY_K = [(1, 1), (3, 7), (5, 31), (2, 33), (7, 65), (4, 1000)]


def with_edge_cases(w):
    """An all-zero row, a +-max tie and an outlier: the inputs that break rounding rules."""
    w = w.copy()
    if w.shape[0] > 1:
        w[1] = 0
    if w.shape[1] >= 2:
        w[0, :2] = [0.5, -0.5]
    w[-1, -1] = 8.0
    # Rows whose step is exactly 1 (absmax 127: 8-bit formats; signed max -8: 4-bit ones),
    # filled with k + 0.5 so every element is a rounding tie and the tie rule is tested.
    for r, head in ((2, 127.0), (3, -8.0)):
        if w.shape[0] > r:
            w[r] = (np.arange(w.shape[1]) % 7 - 3) + 0.5
            w[r, ::16] = head
    return w


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", ANY_K)
@pytest.mark.parametrize("group_size", [0, 32])
def test_int8_matches_reference(rng, isa, shape, group_size):
    w = with_edge_cases(gaussian(rng, shape))
    q = quantize(w, "int8", group_size=group_size or None, isa=isa)
    codes, scales = ref.int8(w, group_size)
    np.testing.assert_array_equal(q.tensors["data"], codes)
    np.testing.assert_array_equal(q.tensors["scales"], scales)
    g = group_size or shape[1]
    expected = codes.astype(np.float32) * np.repeat(scales, g, axis=1)[:, : shape[1]]
    np.testing.assert_array_equal(q.dequantize(isa=isa), expected)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", ANY_K)
@pytest.mark.parametrize(
    ("group_size", "symmetric"), [(16, True), (32, True), (64, False), (128, True), (128, False)]
)
def test_int4_matches_reference_and_matmulnbits(rng, isa, shape, group_size, symmetric):
    w = with_edge_cases(gaussian(rng, shape))
    q = quantize(w, "int4", group_size=group_size, symmetric=symmetric, isa=isa)
    codes, scales, zp = ref.int4(w, group_size, symmetric)
    np.testing.assert_array_equal(
        q.tensors["data"].reshape(codes.shape[0], -1),
        ref.pack_nibbles_low_first(codes).reshape(codes.shape[0], -1),
    )
    np.testing.assert_array_equal(q.tensors["scales"], scales)
    m = q.to_matmulnbits()
    expected = ref.matmulnbits_dequantize(
        m["B"], m["scales"], m["zero_points"], shape[1], shape[0], group_size
    )
    np.testing.assert_array_equal(q.dequantize(isa=isa), expected)
    if not symmetric:
        np.testing.assert_array_equal(ref.unpack_nibbles_low_first(m["zero_points"])[:, : zp.shape[1]], zp)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(("shape", "block"), [((3, 64), 64), ((5, 192), 64), ((2, 48), 16), ((4, 4096), 64)])
def test_nf4_matches_reference(rng, isa, shape, block):
    w = with_edge_cases(gaussian(rng, shape))
    q = quantize(w, "nf4", group_size=block, isa=isa)
    codes, absmax = ref.nf4(w, block)
    packed = ((codes[:, 0::2] << 4) | codes[:, 1::2]).astype(np.uint8)  # first element high nibble
    np.testing.assert_array_equal(q.tensors["data"], packed)
    np.testing.assert_array_equal(q.tensors["scales"], absmax)
    expected = ref.NF4[codes] * np.repeat(absmax, block, axis=1)
    np.testing.assert_array_equal(q.dequantize(isa=isa), expected)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", ANY_K)
def test_ternary_matches_bitnet_absmean(rng, isa, shape):
    w = gaussian(rng, shape)
    q = quantize(w, "ternary", isa=isa)
    codes, scale = ref.ternary(w)
    np.testing.assert_array_equal(q.tensors["scales"], [scale])
    np.testing.assert_array_equal(q.dequantize(isa=isa), codes.astype(np.float32) * scale)
    padded = np.pad(codes + 1, ((0, 0), (0, (-shape[1]) % 4)), constant_values=1).reshape(shape[0], -1, 4)
    packed = padded[..., 0] | padded[..., 1] << 2 | padded[..., 2] << 4 | padded[..., 3] << 6
    np.testing.assert_array_equal(q.tensors["data"], packed.astype(np.uint8))


GGUF_TYPES = {
    "q4_0": gguf.GGMLQuantizationType.Q4_0,
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
    "q4_k": gguf.GGMLQuantizationType.Q4_K,
    "q6_k": gguf.GGMLQuantizationType.Q6_K,
    "tq2_0": gguf.GGMLQuantizationType.TQ2_0,
}
# The gguf package quantizes these bit-exactly like ggml's reference C code.
GGUF_QUANTIZERS = ("q4_0", "q8_0", "tq2_0")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", list(GGUF_TYPES))
@pytest.mark.parametrize("rows", [1, 3, 17])
def test_gguf_blocks_match_the_gguf_package(rng, isa, fmt, rows):
    block = FORMATS[fmt]["block_size"]
    w = with_edge_cases(gaussian(rng, (rows, 3 * block), std=0.02))
    q = quantize(w, fmt, isa=isa)
    data = np.asarray(q.tensors["data"])
    if fmt in GGUF_QUANTIZERS:
        np.testing.assert_array_equal(data, gguf.quants.quantize(w, GGUF_TYPES[fmt]))
    # Every format: our blocks decode with the gguf package's dequantizer to our values.
    theirs = gguf.quants.dequantize(data, GGUF_TYPES[fmt])
    np.testing.assert_array_equal(q.dequantize(isa=isa), theirs)


def test_tq2_0_is_lossless_on_ternary_weights(rng):
    # The block scale is stored as fp16, so the ternary scale must be fp16-representable.
    w = (rng.integers(-1, 2, size=(4, 512)) * 0.03125).astype(np.float32)
    np.testing.assert_array_equal(quantize(w, "tq2_0").dequantize(), w)


# Round-trip error budgets: normalized MSE on unit Gaussian weights [64, 4096]. Each is the
# uniform-quantizer estimate step^2/12 / sigma^2 for the format's step (absmax of the group
# over its number of levels; E[absmax] of n Gaussians is ~2.1 sigma for n=32, ~3.6 for
# n=4096) with about 1.5x headroom; a layout bug gives O(1) errors, far above all of them.
NMSE_BUDGET = {
    ("int8", ()): 1.5e-4,  # (3.6/127)^2/12 = 6.7e-5
    ("int8", (("group_size", 128),)): 1e-4,
    (
        "int4",
        (("group_size", 32),),
    ): 1.2e-2,  # signed absmax/8 step: (2.1/8)^2/12 = 5.7e-3 (+ clipping of +max)
    ("int4", (("group_size", 128), ("symmetric", False))): 1.5e-2,  # range 5.3 sigma / 15 levels
    ("nf4", ()): 1.5e-2,  # QLoRA's NF4 on N(0,1): ~0.009
    ("nf4", (("double_quant", True),)): 1.5e-2,
    ("q4_0", ()): 1.2e-2,  # as int4 g32 symmetric, fp16 scale
    ("q8_0", ()): 5e-5,  # (2.1/127)^2/12 = 2.3e-5
    ("q4_k", ()): 1.5e-2,  # min/max over 32 in 15 steps + 6-bit sub-scales
    ("q6_k", ()): 8e-4,  # (1.9/32)^2/12 = 2.9e-4 + 8-bit sub-scales
}


@pytest.mark.parametrize(("fmt", "opts"), list(NMSE_BUDGET))
def test_round_trip_error_budget(rng, fmt, opts):
    w = gaussian(rng, (64, 4096))
    q = quantize(w, fmt, **dict(opts))
    err = normalized_mse(w, q.dequantize())
    assert err < NMSE_BUDGET[(fmt, opts)], f"{fmt} {opts}: normalized MSE {err:.3g}"


def test_bits_per_weight_and_nbytes(rng):
    w = gaussian(rng, (128, 4096))
    expected_bpw = {
        "int8": 8 + 32 / 4096,
        "q4_0": 4.5,
        "q8_0": 8.5,
        "q4_k": 4.5,
        "q6_k": 6.5625,
        "tq2_0": 2.0625,
        "nf4": 4.5,
        "ternary": 2 + 32 / (128 * 4096),
    }
    for fmt, bpw in expected_bpw.items():
        q = quantize(w, fmt)
        assert q.bits_per_weight == pytest.approx(bpw), fmt
        assert q.nbytes == sum(np.asarray(t).nbytes for t in q.tensors.values())
    assert quantize(w, "int4", group_size=32).bits_per_weight == pytest.approx(5.0)
    assert quantize(w, "int4", group_size=128, symmetric=False).bits_per_weight == pytest.approx(
        4 + 32 / 128 + 4 / 128
    )
    # Double quantization: 8-bit codes + one fp32 per 256 blocks: 4 + 8/64 + 32/(64*256) + 32/N*K.
    assert quantize(w, "nf4", double_quant=True).bits_per_weight == pytest.approx(
        4 + 8 / 64 + 32 / (64 * 256), abs=1e-4
    )
