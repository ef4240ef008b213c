"""Hugging Face export of quantized models in the GPTQ layout: the written tensors decoded
with the GPTQ v1 formula (written out here from the format's definition) equal our
dequantized weights, slmops reads the folder back bit-exactly, onnxruntime-genai's model
builder converts it to a model that computes our logits, and bad input fails first."""

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import slmops
import torch
from safetensors.numpy import load_file
from slmops.export import export, load_gptq
from slmops.nn import QuantLinear
from slmops.zoo import train_tokenizer

TEXT = "In the beginning God created the heaven and the earth. And the earth was without form, and void.\n"


@pytest.fixture(scope="module")
def tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = train_tokenizer([TEXT] * 20, vocab_size=300)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=320, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
    )  # fmt: skip
    return LlamaForCausalLM(cfg).eval(), tok


def _gptq_v1_dequantize(qweight, qzeros, scales, g_idx, bits):
    """W[n, k] = scales[g, n] * (q[k, n] - (z[g, n] + 1)), g = g_idx[k]; q packed along K
    and z along N, 32/bits fields per int32, lowest bits first (AutoGPTQ's v1 format)."""
    per, mask = 32 // bits, (1 << bits) - 1
    shifts = np.arange(per) * bits
    q = ((qweight.view(np.uint32)[:, None, :] >> shifts[None, :, None]) & mask).reshape(-1, qweight.shape[1])
    z = ((qzeros.view(np.uint32)[:, :, None] >> shifts[None, None, :]) & mask).reshape(qzeros.shape[0], -1)
    z = (z + 1) & mask
    w = scales.astype(np.float32)[g_idx] * (q.astype(np.float32) - z[g_idx].astype(np.float32))
    return w.T


FORMATS = [
    ("int4", {"group_size": 32, "symmetric": False}),
    ("int4", {"group_size": 64, "symmetric": True}),
    ("int8", {}),
    ("int8", {"group_size": 32}),
    ("q4_0", {}),
    ("q8_0", {}),
]


@pytest.mark.parametrize(("format", "opts"), FORMATS)
def test_written_tensors_decode_to_our_weights_and_read_back_exactly(tmp_path, tiny, format, opts):
    model, tok = tiny
    q = copy.deepcopy(model)
    slmops.quantize_model(q, format=format, **opts)
    export(q, "hf", tmp_path / "gptq", tokenizer=tok, scale_dtype="float32")
    qc = json.loads((tmp_path / "gptq" / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "gptq" and qc["desc_act"] is False
    state = load_file(str(tmp_path / "gptq" / "model.safetensors"))
    back = load_gptq(tmp_path / "gptq")
    for name, m in q.named_modules():
        if not isinstance(m, QuantLinear):
            continue
        ours = m.qweight.dequantize().numpy()
        t = {k: state[f"{name}.{k}"] for k in ("qweight", "qzeros", "scales", "g_idx")}
        np.testing.assert_array_equal(_gptq_v1_dequantize(**t, bits=qc["bits"]), ours)
        got = back.get_submodule(name)
        assert isinstance(got, QuantLinear)
        np.testing.assert_array_equal(got.qweight.dequantize().numpy(), ours)
        if format in ("int4", "int8") and got.qweight.group_size == m.qweight.group_size:
            for key, buf in m.qweight.tensors.items():  # the very codes, scales, zero points
                np.testing.assert_array_equal(got.qweight.tensors[key].numpy(), buf.numpy())
    ids = torch.tensor([tok(TEXT)["input_ids"]])
    with torch.no_grad():
        np.testing.assert_allclose(back(ids).logits.numpy(), q(ids).logits.numpy(), rtol=0, atol=1e-4)


def test_float16_scales_round_only_the_scales(tmp_path, tiny):
    model, tok = tiny
    q = copy.deepcopy(model)
    slmops.quantize_model(q, format="int4", group_size=32, symmetric=False)
    export(q, "hf", tmp_path / "gptq", tokenizer=tok)  # float16 by default
    back = slmops.zoo.load(tmp_path / "gptq")[0]
    for name, m in q.named_modules():
        if isinstance(m, QuantLinear):
            got = back.get_submodule(name).qweight.tensors
            np.testing.assert_array_equal(got["data"].numpy(), m.qweight.tensors["data"].numpy())
            np.testing.assert_array_equal(
                got["zero_points"].numpy(), m.qweight.tensors["zero_points"].numpy()
            )
            scales16 = m.qweight.tensors["scales"].numpy().astype(np.float16).astype(np.float32)
            np.testing.assert_array_equal(got["scales"].numpy(), scales16)


def test_zero_point_zero_survives_the_v1_offset(tmp_path, tiny):
    """An all-positive group gets zero point 0, which v1 stores as 15 (wrapped)."""
    model, tok = tiny
    q = copy.deepcopy(model)
    with torch.no_grad():
        q.model.layers[0].mlp.up_proj.weight[:, :32] = torch.rand(256, 32) + 0.1
    slmops.quantize_model(q, format="int4", group_size=32, symmetric=False)
    man = export(q, "hf", tmp_path / "gptq", tokenizer=tok, scale_dtype="float32")
    assert man["wrapped_zero_points"] >= 256
    back = load_gptq(tmp_path / "gptq")
    name = "model.layers.0.mlp.up_proj"
    np.testing.assert_array_equal(
        back.get_submodule(name).qweight.dequantize().numpy(),
        q.get_submodule(name).qweight.dequantize().numpy(),
    )


def test_unexpressible_models_fail_before_writing(tmp_path, tiny):
    model, tok = tiny
    mixed = copy.deepcopy(model)
    slmops.quantize_model(mixed, format="int4", include=["*self_attn*"])
    slmops.quantize_model(mixed, format="int8")
    with pytest.raises(ValueError, match="one bit width and group size"):
        export(mixed, "hf", tmp_path / "a", tokenizer=tok)
    nf4 = copy.deepcopy(model)
    slmops.quantize_model(nf4, format="nf4")
    with pytest.raises(ValueError, match="GPTQ layout holds"):
        export(nf4, "hf", tmp_path / "b", tokenizer=tok)
    partial = copy.deepcopy(model)
    slmops.quantize_model(partial, format="int4", include=["*self_attn*"])
    with pytest.raises(ValueError, match="every linear of the decoder layers"):
        export(partial, "hf", tmp_path / "c", tokenizer=tok)
    with pytest.raises(ValueError, match="apply to quantized models"):
        export(model, "hf", tmp_path / "d", tokenizer=tok, scale_dtype="float32")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_genai_builder_converts_our_checkpoint(tmp_path):
    """onnxruntime-genai's model builder reads our GPTQ folder; its ONNX model computes the
    logits of the model slmops reads from the same folder (builder at accuracy_level 1,
    lm_head and embedding kept float so that only the GPTQ layers are compared)."""
    pytest.importorskip("onnx_ir")
    pytest.importorskip("onnxruntime_genai.models.builder")
    ort = pytest.importorskip("onnxruntime")
    model, tok = slmops.zoo.load("kjv-teacher")
    slmops.quantize_model(model, format="int4", group_size=32, symmetric=False)
    export(model, "hf", tmp_path / "gptq", tokenizer=tok)
    cmd = [
        sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(tmp_path / "gptq"),
        "-o", str(tmp_path / "onnx"), "-p", "int4", "-e", "cpu", "-c", str(tmp_path / "cache"),
        "--extra_options", "accuracy_level=1", "nodes_to_exclude=/lm_head/MatMul", "shared_embeddings=false",
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    ours = load_gptq(tmp_path / "gptq")
    sess = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    ids = tok(slmops.zoo.eval_text()[:2000], return_tensors="np")["input_ids"][:, :96].astype(np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    for i in range(model.config.num_hidden_layers):
        for kv in ("key", "value"):
            feeds[f"past_key_values.{i}.{kv}"] = np.zeros((1, 2, 0, 64), np.float32)
    (logits,) = sess.run(["logits"], feeds)
    with torch.no_grad():
        ref = ours(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(logits, ref, rtol=0, atol=1e-4)
