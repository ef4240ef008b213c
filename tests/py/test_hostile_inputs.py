"""Reproducers of the 2026-12-04 hostile-input probe for the file and folder paths: output
folders slmops did not write, damaged checkpoints and adapters, interrupted writes, and the
CLI's errors. Each failed before its fix."""

from __future__ import annotations

import json
import os
import stat
import struct
import subprocess
import sys

import pytest
import slmops
import torch
from safetensors.torch import load_file, save_file
from slmops._io import CorruptedFileError, OutputExistsError, atomic_dir
from slmops.cli import main as cli
from slmops.export import save_checkpoint
from slmops.finetune import (
    LoRAOptions,
    add_lora,
    load_adapter,
    lora_layers,
    read_adapter_config,
    save_adapter,
)


@pytest.fixture(scope="module")
def teacher():
    return slmops.zoo.load("kjv-teacher")


def _quantized(teacher, folder):
    model, tok = slmops.zoo.load("kjv-teacher")
    slmops.quantize_model(model, format="int4", progress=False)
    return save_checkpoint(model, tok, folder)


# -- output folders ---------------------------------------------------------------------------


def test_export_refuses_a_folder_it_did_not_write(teacher, tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "thesis.txt").write_text("years of work")
    with pytest.raises(OutputExistsError, match="overwrite"):
        slmops.export_model(*teacher[:1], "slmops", out, tokenizer=teacher[1])
    assert (out / "thesis.txt").read_text() == "years of work"
    slmops.export_model(teacher[0], "slmops", tmp_path / "e", tokenizer=teacher[1])
    slmops.export_model(teacher[0], "slmops", tmp_path / "e", tokenizer=teacher[1])  # ours: replaced
    (tmp_path / "e" / "notes.txt").write_text("mine")  # ours plus a user's file: refused
    with pytest.raises(OutputExistsError):
        slmops.export_model(teacher[0], "slmops", tmp_path / "e", tokenizer=teacher[1])
    slmops.export_model(teacher[0], "slmops", out, tokenizer=teacher[1], overwrite=True)
    assert not (out / "thesis.txt").exists()


def test_the_working_folder_its_parents_and_files_are_never_replaced(teacher, tmp_path, monkeypatch):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    (work / "keep.txt").write_text("x")
    monkeypatch.chdir(work)
    for target in (".", "..", str(tmp_path)):
        with pytest.raises(OutputExistsError, match="working folder"):
            save_checkpoint(teacher[0], teacher[1], target, overwrite=True)
    (work / "file.txt").write_text("a file")
    with pytest.raises(OutputExistsError, match="a file"):
        save_checkpoint(teacher[0], teacher[1], "file.txt")
    assert (work / "file.txt").read_text() == "a file" and (work / "keep.txt").exists()


def test_cli_export_refuses_then_overwrites_with_the_flag(tmp_path, capsys):
    out = tmp_path / "d"
    out.mkdir()
    (out / "thesis.txt").write_text("x")
    args = ["export", "-m", "kjv-student", "-t", "slmops", "-o", str(out)]
    assert cli(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err  # one clear line, no traceback
    assert (out / "thesis.txt").exists()
    assert cli([*args, "--overwrite"]) == 0 and not (out / "thesis.txt").exists()


def test_outputs_follow_the_umask_and_stale_temporaries_are_cleaned(tmp_path):
    old = os.umask(0o022)
    try:
        stale = tmp_path / ".out.slmops-tmp-999999999-abc"  # a writer killed mid-write
        stale.mkdir()
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "w.bin").write_bytes(b"1234")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "out" / "w.bin").stat().st_mode) == 0o644
    assert not stale.exists()


def test_an_interrupted_write_leaves_the_old_output_and_no_temporary(tmp_path):
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a.bin").write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a.bin").write_bytes(b"new")
        raise RuntimeError("killed")
    assert (tmp_path / "out" / "a.bin").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# -- damaged checkpoints ----------------------------------------------------------------------


def test_flipped_bytes_in_a_checkpoint_name_the_file_and_tensor(teacher, tmp_path):
    folder = _quantized(teacher, tmp_path / "q")
    weights = folder / "model.safetensors"
    manifest = json.loads((folder / "manifest.json").read_text())
    entry = next(f for f in manifest["files"] if f["path"] == "model.safetensors")
    victim = "model.layers.1.mlp.down_proj.qweight_data"
    assert victim in entry["tensors"]
    header_len = int.from_bytes(weights.read_bytes()[:8], "little")
    begin = json.loads(weights.read_bytes()[8 : 8 + header_len])[victim]["data_offsets"][0]
    data = bytearray(weights.read_bytes())
    data[8 + header_len + begin + 5] ^= 0x40
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptedFileError, match=f"model.safetensors.*{victim}"):
        slmops.zoo.load(folder)
    slmops.zoo.load(folder, verify=False)  # the opt-out loads it as it is


def test_a_damaged_quantization_config_is_an_error_not_random_weights(teacher, tmp_path):
    folder = _quantized(teacher, tmp_path / "q")
    config = json.loads((folder / "config.json").read_text())
    del config["quantization_config"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="quantization_config"):
        slmops.zoo.load(folder)
    assert cli(["evaluate", "-m", str(folder), "--metrics", "memory"]) == 1


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("vocab_size", 10**9, "config.json describes"),
        ("num_hidden_layers", 10**6, "layers; the weights hold"),
    ],
)
def test_a_config_far_larger_than_the_weights_is_refused_before_allocating(
    teacher, tmp_path, key, value, message
):
    """The fuzzer's find: vocab_size 10^9 in config.json made the loader allocate 4 GB."""
    from slmops.evaluate.metrics import peak_rss_bytes, reset_peak_rss

    folder = _quantized(teacher, tmp_path / "q")
    config = json.loads((folder / "config.json").read_text())
    config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    tracked, before = reset_peak_rss(), peak_rss_bytes()
    with pytest.raises(ValueError, match=message):
        slmops.zoo.load(folder)
    if tracked and before is not None:
        assert peak_rss_bytes() - before < 256 * 2**20


def test_wrong_tensor_dtypes_in_a_checkpoint_are_rejected(teacher, tmp_path):
    folder = _quantized(teacher, tmp_path / "q")
    state = load_file(str(folder / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj.qweight_data"
    state[name] = state[name].to(torch.bool)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=f"{name}.*bool"):
        slmops.zoo.load(folder, verify=False)


def test_a_malformed_checkpoint_is_one_line_from_the_cli(tmp_path):
    folder = tmp_path / "m"
    save_checkpoint(*slmops.zoo.load("kjv-student"), folder)
    (folder / "model.safetensors").write_bytes(b"\xff" * 64)
    run = subprocess.run(
        [sys.executable, "-m", "slmops.cli", "evaluate", "-m", str(folder), "--metrics", "memory"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 1
    assert "Traceback" not in run.stderr and "model.safetensors" in run.stderr


# -- adapters ---------------------------------------------------------------------------------


def test_a_failed_load_adapter_leaves_the_model_as_it_was(tmp_path):
    model = slmops.zoo.load("kjv-student")[0]
    add_lora(model, LoRAOptions(r=2))
    save_adapter(model, tmp_path / "a")
    weights = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    last = sorted(weights)[-1]
    weights[last] = weights[last][
        :, :1
    ].contiguous()  # one tensor of a wrong shape, found after many good ones
    save_file(weights, str(tmp_path / "a" / "adapter_model.safetensors"))
    target = slmops.zoo.load("kjv-student")[0]
    before = {n: p.detach().clone() for n, p in target.named_parameters()}
    with pytest.raises(ValueError, match="needs"):
        load_adapter(target, tmp_path / "a", verify=False)
    assert lora_layers(target) == {}
    assert {n: p for n, p in target.named_parameters()}.keys() == before.keys()
    save_adapter(model, tmp_path / "a", overwrite=True)
    assert len(load_adapter(target, tmp_path / "a")) == len(lora_layers(model))  # the retry works


def test_a_huge_adapter_rank_fails_before_allocating(tmp_path):
    model = slmops.zoo.load("kjv-student")[0]
    add_lora(model, LoRAOptions(r=2))
    save_adapter(model, tmp_path / "a")
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({**config, "r": 100000}))
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError, match=r"\(100000, "):
        load_adapter(slmops.zoo.load("kjv-student")[0], tmp_path / "a")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 200_000  # KiB: no gigabytes


@pytest.mark.parametrize(
    "change, message",
    [
        ({"lora_alpha": {"a": 1}}, "lora_alpha must be a finite number"),  # found by the fuzzer
        ({"lora_alpha": None}, "lora_alpha must be a finite number"),
        ({"lora_alpha": float("nan")}, "lora_alpha must be a finite number"),
        ({"lora_alpha": -4}, "alpha must be > 0"),
        ({"lora_dropout": "0.1"}, "lora_dropout must be a finite number"),
        ({"use_rslora": "yes"}, "use_rslora must be true or false"),
        ({"r": True}, "r must be an integer"),
    ],
)
def test_adapter_config_values_of_the_wrong_type_are_refused(tmp_path, change, message):
    model = slmops.zoo.load("kjv-student")[0]
    add_lora(model, LoRAOptions(r=2))
    save_adapter(model, tmp_path / "a")
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({**config, **change}))
    target = slmops.zoo.load("kjv-student")[0]
    with pytest.raises(ValueError, match=message):
        load_adapter(target, tmp_path / "a", verify=False)
    assert lora_layers(target) == {}


def test_an_adapter_config_that_is_not_an_object_is_refused(tmp_path):
    (tmp_path / "adapter_config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a JSON object"):
        read_adapter_config(tmp_path)


def test_token_id_lists_as_calibration_are_refused_not_read_as_text():
    from slmops.quantize.calibration import calibration_text

    with pytest.raises(TypeError, match="LongTensor"):
        calibration_text([[1, 2, 3], [4, 5, 6]])
    assert calibration_text(["a", "b"]) == "a\n\nb"


def test_quantized_tensor_files_follow_the_umask(tmp_path):
    import numpy as np

    old = os.umask(0o022)
    try:
        slmops.ops.quantize(np.ones((2, 256), np.float32), "int8").save(tmp_path / "w.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "w.safetensors").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_a_quantized_tensor_file_with_a_damaged_scale_is_refused(tmp_path):
    import numpy as np
    from safetensors import safe_open
    from safetensors.numpy import load_file as load_np
    from safetensors.numpy import save_file as save_np

    path = tmp_path / "w.safetensors"
    slmops.ops.quantize(np.ones((2, 256), np.float32), "int8").save(path)
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata()
    arrays = load_np(str(path))
    for bad in (np.inf, np.nan, 3e38):  # 3e38 x a code of 127 is Inf
        arrays["scales"][0] = bad
        save_np(arrays, str(path), metadata=meta)
        with pytest.raises(ValueError, match="scales"):
            slmops.ops.QuantizedTensor.load(path)


def test_a_crafted_group_size_in_a_checkpoint_config_is_no_crash(tmp_path):
    model, tok = slmops.zoo.load("kjv-student")
    slmops.quantize_model(model, format="int8", progress=False)  # one scale per row
    folder = save_checkpoint(model, tok, tmp_path / "q")
    config = json.loads((folder / "config.json").read_text())
    for spec in config["quantization_config"]["layers"].values():
        spec["group_size"] = 2**63 - 1  # one group per row again, written absurdly
    (folder / "config.json").write_text(json.dumps(config))
    run = subprocess.run(
        [sys.executable, "-m", "slmops.cli", "evaluate", "-m", str(folder), "--metrics", "memory"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]  # was 139 (SIGSEGV)
    ids = torch.arange(1, 17).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(slmops.zoo.load(folder)[0](ids).logits, model(ids).logits)
    for spec in config["quantization_config"]["layers"].values():
        spec["group_size"] = 96  # groups that do not match the stored scales: an error
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError):
        slmops.zoo.load(folder)


def test_cli_finetune_merge_refuses_a_users_folder_before_training(tmp_path, capsys):
    (tmp_path / "out" / "merged").mkdir(parents=True)
    (tmp_path / "out" / "merged" / "thesis.txt").write_text("x")
    data = tmp_path / "train.txt"
    data.write_text("In the beginning was the word. " * 200)
    args = ["finetune", "--model", "kjv-student", "--data", str(data), "--steps", "1", "--merge", "--quiet",
            "-o", str(tmp_path / "out")]  # fmt: skip
    assert cli(args) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert not (tmp_path / "out" / "adapter").exists()  # no training happened
    assert cli([*args, "--overwrite", "--batch-size", "2", "--seq-len", "16"]) == 0
    assert (tmp_path / "out" / "merged" / "config.json").is_file()
    assert not (tmp_path / "out" / "merged" / "thesis.txt").exists()


# -- GGUF files (found by tests/fuzz/fuzz_readers.py --target gguf) ---------------------------


def _gguf_string(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def _gguf_kv(key: bytes, value_type: int, payload: bytes) -> bytes:
    return _gguf_string(key) + struct.pack("<I", value_type) + payload


def _gguf_tensor(name: bytes, dims: list[int], ggml_type: int = 0, offset: int = 0) -> bytes:
    shape = struct.pack(f"<I{len(dims)}Q", len(dims), *dims)
    return _gguf_string(name) + shape + struct.pack("<IQ", ggml_type, offset)


def _gguf(kvs=(), tensors=(), n_kv=None, n_tensors=None) -> bytes:
    """A GGUF v3 file of raw metadata pairs and tensor entries, 32 bytes of float data after."""
    counts = struct.pack("<IQQ", 3, len(tensors) if n_tensors is None else n_tensors,
                         len(kvs) if n_kv is None else n_kv)  # fmt: skip
    head = b"GGUF" + counts + b"".join(kvs) + b"".join(tensors)
    return head + b"\0" * (-len(head) % 32) + b"\0" * 32


NESTED = struct.pack("<IQ", 9, 1) * 2999 + struct.pack("<IQ", 0, 1) + b"\x07"


@pytest.mark.parametrize(
    "data, message",
    [
        # failed before: a RecursionError (each level of nesting a frame of the parse)
        (_gguf([_gguf_kv(b"x.nested", 9, NESTED)]), "x.nested nests arrays deeper than 8"),
        # failed before: a name with a newline made a two-line message
        (_gguf(tensors=[_gguf_tensor(b"a\nb", [8], ggml_type=99)]), r"tensor a\\nb has ggml type 99"),
        # bounds the parser keeps: declared lengths and counts against the file's size, before
        # any allocation or loop
        (
            _gguf([_gguf_kv(b"x.huge", 9, struct.pack("<IQ", 8, 2**62))]),
            "the 4,611,686,018,427,387,904 items",
        ),
        (_gguf([_gguf_kv(b"x.name", 8, struct.pack("<Q", 2**63))]), "a string at byte"),
        (_gguf(n_kv=2**64 - 1), "declares 18,446,744,073,709,551,615 metadata pairs"),
        (_gguf([_gguf_kv(b"general.alignment", 4, struct.pack("<I", 0))]), "general.alignment is 0"),
        (_gguf(tensors=[_gguf_tensor(b"w", [8] * 5)]), "tensor w has 5 dimensions; ggml has at most 4"),
        (_gguf(tensors=[_gguf_tensor(b"w", [2**63, 2**63])]), "cut short: tensor w ends at byte"),
        (_gguf(tensors=[_gguf_tensor(b"w", [8], offset=2**40)]), "cut short: tensor w ends at byte"),
        (_gguf(tensors=[_gguf_tensor(b"w", [8], offset=4)]), "offset 4 is not 32-aligned"),
        (_gguf(tensors=[_gguf_tensor(b"w", [8], ggml_type=99)]), "tensor w has ggml type 99"),
        (_gguf(tensors=[_gguf_tensor(b"w", [48], ggml_type=8)]), "rows of 48 values, not whole Q8_0 blocks"),
        (_gguf(tensors=[_gguf_tensor(b"w", [8])] * 2), "has the tensor w twice"),
        (_gguf()[:10], "cut short or malformed: the header"),
    ],
    ids=str.split(
        "nested newline array string pairs alignment n_dims dims offset unaligned type blocks twice header"
    ),
)
def test_a_malformed_gguf_header_is_a_one_line_error_naming_the_file(tmp_path, data, message):
    from slmops.models import load_gguf

    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=message) as e:
        load_gguf(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


@pytest.fixture(scope="module")
def student_gguf(tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf")
    model, tok = slmops.zoo.load("kjv-student")
    slmops.export_model(model, "gguf", out, tokenizer=tok, default_type="q8_0")
    return (out / "model.gguf").read_bytes()


@pytest.mark.parametrize(
    "key, value, message",
    [
        # failed before: transformers built a 3.7M x 256 embedding (3.6 GB) from the file's word
        (
            "llama.vocab_size",
            3_774_336,
            r"token_embd.weight has shape \[8192, 256\]; .* needs \[3774336, 256\]",
        ),
        # failed before: billions of parameter names, a hang and then the memory
        ("llama.block_count", 2**32 - 1, "declares 4,294,967,295 blocks but has only 20 tensors"),
        # was "ZeroDivisionError: integer modulo by zero" from transformers, wrapped
        ("llama.attention.head_count", 0, "head_count is 0, not a positive integer"),
    ],
)
def test_gguf_metadata_sizes_are_checked_against_the_tensors_before_allocating(
    student_gguf, tmp_path, key, value, message
):
    import resource
    import signal

    from slmops.models import load_gguf

    entry = _gguf_string(key.encode()) + struct.pack("<I", 4)  # a u32 pair, patched in place
    at = student_gguf.index(entry) + len(entry)
    path = tmp_path / "sizes.gguf"
    path.write_bytes(student_gguf[:at] + struct.pack("<I", value) + student_gguf[at + 4 :])

    def stop(signum, frame):  # a hang fails the test (its message does not match), not CI
        raise TimeoutError("no answer in 20 s")

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(20)
    try:
        with pytest.raises(ValueError, match=message) as e:
            load_gguf(path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert str(path) in str(e.value)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 200_000  # KiB: no gigabytes
