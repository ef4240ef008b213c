"""GGUF files in: a llama.cpp model file loads as a float transformers model with its
tokenizer (slmops.models.load_model, every CLI -m, run configs), and a GGUF that slmops
exported loads back to the model it came from."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import slmops
import torch
from slmops.models import is_gguf_file, load_model
from slmops.nn import QuantLinear

TEXT = "In the beginning God created the heaven and the earth. And the earth was without form"


@pytest.fixture(scope="module")
def teacher():
    return slmops.zoo.load("kjv-teacher")


@pytest.fixture(scope="module")
def float_gguf(teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf") / "f32"
    slmops.export_model(teacher[0], "gguf", out, teacher[1], default_type="f32")
    return out / "model.gguf"


def test_a_float_gguf_loads_back_to_the_same_logits_and_token_ids(teacher, float_gguf):
    model, tokenizer = teacher
    loaded, loaded_tok = load_model(float_gguf)
    assert type(loaded).__name__ == "LlamaForCausalLM" and not loaded.training
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    assert torch.equal(loaded_tok(TEXT, return_tensors="pt").input_ids, ids)
    assert loaded_tok.chat_template == tokenizer.chat_template
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)  # f32 storage: exact


@pytest.mark.parametrize("format", ["q8_0", "q4_0"])
def test_ggml_blocks_load_back_exactly(teacher, tmp_path, format):
    q = copy.deepcopy(teacher[0])
    slmops.quantize_model(q, format=format, progress=False)
    slmops.export_model(q, "gguf", tmp_path / "q", teacher[1])
    loaded, _ = load_model(tmp_path / "q" / "model.gguf")
    name = "model.layers.0.mlp.down_proj"
    layer = q.get_submodule(name)
    assert isinstance(layer, QuantLinear) and layer.qweight.format == format
    # the dequantized blocks bit for bit: our kernel's values are what the file holds
    assert torch.equal(loaded.get_submodule(name).weight, torch.as_tensor(layer.qweight.dequantize()))
    ids = teacher[1](TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, q(ids).logits, rtol=1e-4, atol=1e-4)


def test_a_workflow_takes_a_gguf_and_converts_it_once(float_gguf, tmp_path):
    def run() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "slmops.cli", "quantize", "-m", str(float_gguf), "-f", "int8", "-o",
             str(tmp_path / "out"), "--overwrite", "-q"],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip

    first = run()
    assert first.returncode == 0, first.stderr[-2000:]
    converted = list((tmp_path / "out" / "cache").glob("gguf-*"))
    assert len(converted) == 1 and (converted[0] / "config.json").is_file()
    stamp = (converted[0] / "model.safetensors").stat().st_mtime_ns
    assert run().returncode == 0
    assert (converted[0] / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rewritten
    history = json.loads((tmp_path / "out" / "run_history.json").read_text())
    assert history["input"]["model"] == str(float_gguf)


def test_a_file_that_is_not_gguf_is_a_clear_error(tmp_path, float_gguf):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    assert is_gguf_file(fake)
    with pytest.raises(ValueError, match="not a GGUF file"):
        load_model(fake)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(float_gguf.read_bytes()[:4096])  # the header, no tensors
    with pytest.raises((ValueError, OSError)):
        load_model(cut)
    run = subprocess.run(
        [sys.executable, "-m", "slmops.cli", "evaluate", "-m", str(cut), "--metrics", "memory"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 1 and "Traceback" not in run.stderr and "cut.gguf" in run.stderr
