"""Structured mutation fuzzing of every reader of untrusted files.

Seeds are valid files slmops writes (a QuantizedTensor file, a quantized slmops checkpoint,
a GPTQ folder, a LoRA adapter, a run config, GGUF files); each input mutates one file of a
seed: bytes flipped or inserted, the file truncated, a JSON value replaced (numbers huge,
negative, of the wrong type; keys dropped), a safetensors header entry rewritten (dtype,
shape, offsets), or a GGUF field (a count, a length, a type id, a dimension, an offset, a
metadata value) set to an extreme or a metadata pair dropped, repeated or added, so
mutations reach the tensor payloads and the parsers, not only the checksums. Readers run
with their checksum verification off (else almost every input stops there); one input in
eight keeps it on.

Every input must end in a load or a clean exception of a documented type (ValueError,
with CorruptedFileError and ConfigError; OSError; KeyError; SafetensorError). Anything
else, a hang (> 10 s), a crash of the process, a documented exception raised from a
MemoryError or RecursionError, or one input raising the process's peak memory by over 1 GiB
is a failure (the address space is capped 4 GiB above the seeds', so that a runaway
allocation is a MemoryError, not the OOM killer); a load whose model computes non-finite
logits from a file that verified is one too.

    python tests/fuzz/fuzz_readers.py --seconds 60            # every target, 60 s each
    python tests/fuzz/fuzz_readers.py --target adapter --iterations 500 --seed 3
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ALLOWED = (ValueError, OSError, KeyError)
HANG_SECONDS = 10
MEMORY_KIB = 1 << 20  # one input may raise the process's peak memory by this much at most
# wrapped in a documented type, still a failure: the reader tried unbounded work
RESOURCE_ERRORS = (MemoryError, RecursionError)


def _allowed() -> tuple[type, ...]:
    from safetensors import SafetensorError

    return (*ALLOWED, SafetensorError)


# -- seeds ----------------------------------------------------------------------------------


def make_seeds(root: Path) -> dict[str, Path | list[Path]]:
    """Valid inputs per target, written by slmops (small: the reference student): a file or
    a folder, or a list of files (each input mutates one and reads that one)."""
    import numpy as np
    import slmops
    from slmops.export import save_checkpoint
    from slmops.finetune import LoRAOptions, add_lora, save_adapter

    seeds = {}
    w = np.random.default_rng(0).standard_normal((8, 256)).astype(np.float32)
    seeds["quantized_tensor"] = root / "qt" / "w.safetensors"
    seeds["quantized_tensor"].parent.mkdir(parents=True)
    slmops.ops.quantize(w, "int4", group_size=32, symmetric=False).save(seeds["quantized_tensor"])

    model, tok = slmops.zoo.load("kjv-student")
    slmops.quantize_model(model, format="int4", progress=False)
    seeds["checkpoint"] = save_checkpoint(model, tok, root / "checkpoint")
    model, tok = slmops.zoo.load("kjv-student")
    slmops.quantize_model(model, format="int4", group_size=32, symmetric=False, progress=False)
    slmops.export_model(model, "hf", root / "gptq", tokenizer=tok)
    seeds["gptq"] = root / "gptq"

    model, _ = slmops.zoo.load("kjv-student")
    add_lora(model, LoRAOptions(r=2, target_modules=["q_proj", "v_proj"]))
    seeds["adapter"] = save_adapter(model, root / "adapter")

    # GGUF: q8_0 everywhere; q4_0 with a float16 embedding and q4_k in the second block, so
    # that the float, block and k-quant dequantizers all see mutated tables
    model, tok = slmops.zoo.load("kjv-student")
    slmops.export_model(model, "gguf", root / "gguf-q8", tokenizer=tok, default_type="q8_0")
    slmops.export_model(
        model, "gguf", root / "gguf-q4", tokenizer=tok, default_type="q4_0",
        tensor_types={"token_embd.weight": "f16", "blk.1.*": "q4_k"},
    )  # fmt: skip
    seeds["gguf"] = []
    for name in ("q8", "q4"):
        seeds["gguf"].append((root / f"gguf-{name}" / "model.gguf").rename(root / f"{name}.gguf"))

    seeds["run_config"] = root / "config.yaml"
    seeds["run_config"].write_text(
        "model: kjv-student\n"
        "data: {eval: {type: eval_slice, max_chars: 2000}}\n"
        "passes:\n  - {type: quantize, format: int4, group_size: 32}\n"
        "evaluate: {data: eval, metrics: [perplexity, size], seq_len: 32,\n"
        "           goals: {perplexity_increase_pct: 5}}\n"
        "search: {space: {quantize.format: [int4, q4_0]}, max_trials: 2}\n"
    )
    return seeds


# -- mutations ------------------------------------------------------------------------------

INTERESTING = [
    0,
    -1,
    1,
    2**31,
    2**63 - 1,
    -(2**63),
    1e308,
    -1e-308,
    float("nan"),
    "",
    "x",
    None,
    [],
    {},
    True,
]


def _mutate_json(value, rng: random.Random):
    if isinstance(value, dict) and value:
        key = rng.choice(list(value))
        if rng.random() < 0.2:
            return {k: v for k, v in value.items() if k != key}
        return {**value, key: _mutate_json(value[key], rng)}
    if isinstance(value, list) and value:
        i = rng.randrange(len(value))
        return value[:i] + [_mutate_json(value[i], rng)] + value[i + 1 :]
    return rng.choice(INTERESTING)


def _mutate_safetensors_header(data: bytes, rng: random.Random) -> bytes:
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    name = rng.choice([k for k in header if k != "__metadata__"] or list(header))
    entry = header[name]
    field = rng.choice(["dtype", "shape", "data_offsets", "value"])
    if field == "dtype":
        entry["dtype"] = rng.choice(
            ["BOOL", "U8", "I8", "I16", "I32", "I64", "F16", "BF16", "F32", "F64", "F8_E4M3", "X"]
        )
    elif field == "shape" and isinstance(entry, dict) and entry.get("shape") is not None:
        entry["shape"] = [rng.choice([0, 1, 3, 2**20, 2**40, -1]) for _ in entry["shape"] or [0]]
    elif field == "data_offsets" and isinstance(entry, dict):
        a, b = entry.get("data_offsets", [0, 0])
        entry["data_offsets"] = [a + rng.choice([-8, -1, 1, 8, 2**32]), b + rng.choice([0, -1, 1, 2**32])]
    else:
        header[name] = _mutate_json(entry, rng)
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data[8 + n :]


# GGUF metadata value types of a fixed width (id -> bytes), of them the floats (id -> format)
_GGUF_WIDTHS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_FLOATS = {6: "<f", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


class GGUFLayout:
    """Where the fields of a valid GGUF file lie, read here and not by the reader under test:
    ``fields`` (kind -> [(offset, width)]: the counts, string and array lengths, type ids,
    dims, tensor offsets, metadata values), ``kvs`` (each metadata pair's byte span),
    ``infos`` (the tensor table's span) and ``data_start`` (slmops writes no alignment)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos, self.fields, self.kvs = data, 24, {}, []
        for kind, offset, width in (("version", 4, 4), ("tensor_count", 8, 8), ("kv_count", 16, 8)):
            self.fields.setdefault(kind, []).append((offset, width))
        n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
        for _ in range(n_kv):
            start = self.pos
            self._field("key_length", 8, skip=True)
            self._value(self._field("value_type", 4), top=True)
            self.kvs.append((start, self.pos))
        start = self.pos
        for _ in range(n_tensors):
            self._field("name_length", 8, skip=True)
            for _ in range(self._field("n_dims", 4)):
                self._field("dim", 8)
            self._field("ggml_type", 4)
            self._field("tensor_offset", 8)
        self.infos = (start, self.pos)
        self.data_start = -(-self.pos // 32) * 32

    def _field(self, kind: str, width: int, skip: bool = False) -> int:
        self.fields.setdefault(kind, []).append((self.pos, width))
        value = int.from_bytes(self.data[self.pos : self.pos + width], "little")
        self.pos += width + (value if skip else 0)  # skip: a length, the bytes it counts follow
        return value

    def _value(self, value_type: int, top: bool = False) -> None:
        # top-level values (block_count, token ids) apart from array items (the vocabulary),
        # else the thousands of items drown the few values the model is built from
        where = "value" if top else "item"
        if value_type in _GGUF_WIDTHS:
            kind = "float" if value_type in _GGUF_FLOATS else "int"
            self._field(f"{where}_{kind}{_GGUF_WIDTHS[value_type]}", _GGUF_WIDTHS[value_type])
        elif value_type == _GGUF_STRING:
            self._field(f"{where}_string_length", 8, skip=True)
        else:
            item_type = self._field("item_type", 4)
            for _ in range(self._field("array_length", 8)):
                self._value(item_type)


_LAYOUTS: dict[int, GGUFLayout] = {}


def _gguf_string(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def _gguf_kv(key: bytes, value_type: int, payload: bytes) -> bytes:
    return _gguf_string(key) + struct.pack("<I", value_type) + payload


def _hostile_kvs(rng: random.Random) -> list[bytes]:
    """Metadata pairs a reader must survive: the alignment of odd values and types, arrays
    nested deep, arrays declaring more items than the file holds, values of the wrong type
    for keys the model is built from, a key that is not UTF-8."""
    depth, huge = rng.choice([2, 50, 3000]), rng.choice([2**32, 2**62, 2**64 - 1])
    nested = struct.pack("<IQ", _GGUF_ARRAY, 1) * (depth - 1) + struct.pack("<IQ", 0, 1) + b"\x07"
    empty_arrays = struct.pack("<IQ", _GGUF_ARRAY, huge) + struct.pack("<IQ", 0, 0) * 64

    def u32(key: bytes, *values: int) -> bytes:
        return _gguf_kv(key, 4, struct.pack("<I", rng.choice(values)))

    def text(key: bytes, *values: bytes) -> bytes:
        return _gguf_kv(key, _GGUF_STRING, _gguf_string(rng.choice(values)))

    return [
        u32(b"general.alignment", 0, 1, 3, 8, 64, 2**31, 2**32 - 1),
        _gguf_kv(b"general.alignment", rng.choice([6, 8, 10]), struct.pack("<Q", 32)),
        _gguf_kv(b"x.nested", _GGUF_ARRAY, nested),
        _gguf_kv(b"x.huge", _GGUF_ARRAY, struct.pack("<IQ", rng.choice([0, 8, 9, 10]), huge)),
        _gguf_kv(b"x.empty_arrays", _GGUF_ARRAY, empty_arrays),
        _gguf_kv(b"x.bad_type", rng.choice([13, 255, 2**32 - 1]), b"\0" * 8),
        u32(b"\xff\xfe.key", 1),
        text(b"general.architecture", b"qwen2", b"llama\0", b""),
        u32(b"general.architecture", 7),
        text(b"general.name", b"mistral"),
        text(b"llama.rope.scaling.type", b"linear", b"yarn", b"x"),
        _gguf_kv(b"llama.rope.scaling.factor", 6, struct.pack("<f", rng.choice([0, -1, float("nan"), 1e30]))),
        u32(b"llama.rope.dimension_count", 0, 1, 63, 2**31),
        text(b"llama.block_count", b"2"),
        _gguf_kv(b"llama.attention.head_count", 12, struct.pack("<d", 4.0)),
        u32(b"tokenizer.ggml.tokens", 3),
        u32(b"tokenizer.ggml.unknown_token_id", 8192, 2**32 - 1),
        _gguf_kv(b"tokenizer.ggml.bos_token_id", 5, struct.pack("<i", -1)),
    ]


def _gguf_value(width: int, old: int, size: int, rng: random.Random) -> int:
    """An extreme for an unsigned field of ``width`` bytes (negative numbers as their two's
    complement): zero, one, the largest, the sign bit, 2**32 and neighbours, the file's size,
    the old value off by one or doubled, random bits."""
    bits = 8 * width
    return rng.choice(
        [0, 1, -1, 2 ** (bits - 1), 2 ** (bits - 1) - 1, 2**32, 2**32 - 1, 2**31, size, size + 1,
         old + 1, old - 1, old * 2, old + size, rng.getrandbits(bits), rng.randrange(64)]
    ) % (1 << bits)  # fmt: skip


def _gguf_position(layout: GGUFLayout, size: int, rng: random.Random) -> int:
    """Mostly in the first 4 KiB (counts, the model's metadata) or the tensor table."""
    r = rng.random()
    if r < 0.6:
        return rng.randrange(min(4096, size))
    if r < 0.85 and layout.infos[0] < layout.infos[1]:
        return rng.randrange(*layout.infos)
    return rng.randrange(size)


def _mutate_gguf(path: Path, data: bytes, rng: random.Random) -> str:
    if hash(data) not in _LAYOUTS:
        _LAYOUTS[hash(data)] = GGUFLayout(data)
    layout, buf = _LAYOUTS[hash(data)], bytearray(data)
    kind = rng.choice(["field", "field", "field", "flip", "flip", "insert", "truncate", "metadata"])
    if kind == "field":  # a kind of field first: else the vocabulary's lengths are all it hits
        name = rng.choice(sorted(layout.fields))
        offset, width = rng.choice(layout.fields[name])
        if name.endswith(("float4", "float8")):
            fmt = "<f" if width == 4 else "<d"
            value = rng.choice([0.0, -1.0, 1e30, -1e-45, float("nan"), float("inf"), float("-inf")])
            buf[offset : offset + width] = struct.pack(fmt, value)
        else:
            old = int.from_bytes(data[offset : offset + width], "little")
            value = _gguf_value(width, old, len(data), rng)
            buf[offset : offset + width] = value.to_bytes(width, "little")
        what = f"gguf {name} at byte {offset}: {value!r}"
    elif kind == "flip":
        spots = [_gguf_position(layout, len(buf), rng) for _ in range(rng.randint(1, 8))]
        for i in spots:
            buf[i] ^= 1 << rng.randrange(8)
        what = f"gguf flip at bytes {spots}"
    elif kind == "insert":
        i, n = _gguf_position(layout, len(buf), rng), rng.randint(1, 16)
        if rng.random() < 0.5:
            buf[i:i] = rng.randbytes(n)
            what = f"gguf insert {n} bytes at byte {i}"
        else:  # bytes gone shift every later field, as bytes added do
            del buf[i : i + n]
            what = f"gguf delete {n} bytes at byte {i}"
    elif kind == "truncate":
        i = rng.randrange(layout.data_start) if rng.random() < 0.5 else rng.randrange(len(buf))
        del buf[i:]
        what = f"gguf truncate at byte {i}"
    else:  # the metadata rewritten: a pair dropped, repeated or added; the tensor data realigned
        kvs = [data[a:b] for a, b in layout.kvs]
        op = rng.choice(["drop", "repeat", "add", "add"]) if kvs else "add"
        i = rng.randrange(len(kvs) or 1)
        align = 32
        if op == "drop":
            what = f"gguf metadata pair {i} ({kvs[i][8:48]!r}) dropped"
            del kvs[i]
        elif op == "repeat":
            what = f"gguf metadata pair {i} ({kvs[i][8:48]!r}) repeated"
            kvs.insert(rng.randrange(len(kvs) + 1), kvs[i])
        else:
            kv = rng.choice(_hostile_kvs(rng))
            what = f"gguf metadata pair added at {i}: {kv[:64]!r}"
            kvs.insert(i, kv)
            if kv.startswith(_gguf_kv(b"general.alignment", 4, b"")):  # data where it says
                align = int.from_bytes(kv[-4:], "little")
        head = data[:16] + struct.pack("<Q", len(kvs)) + b"".join(kvs) + data[slice(*layout.infos)]
        align = align if 0 < align <= 4096 else 32  # the reader refuses the others anyway
        buf = bytearray(head + b"\0" * (-len(head) % align) + data[layout.data_start :])
    path.write_bytes(bytes(buf))
    return what


def mutate(path: Path, rng: random.Random) -> str:
    """Changes one file in place; returns what was done (for a failure's report)."""
    data = path.read_bytes()
    if path.suffix == ".gguf":  # a mix of its own, aimed at the header the parser reads
        return _mutate_gguf(path, data, rng)
    kind = rng.choice(["flip", "flip", "insert", "truncate", "structured"])
    if kind == "structured" and path.suffix == ".json":
        try:
            path.write_text(json.dumps(_mutate_json(json.loads(data), rng)))
            return "json value"
        except ValueError:
            pass
    if kind == "structured" and path.suffix == ".safetensors":
        try:
            path.write_bytes(_mutate_safetensors_header(data, rng))
            return "safetensors header"
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
    if kind == "structured" and path.suffix == ".yaml":
        import yaml

        path.write_text(yaml.safe_dump(_mutate_json(yaml.safe_load(data), rng)))
        return "yaml value"
    buf = bytearray(data)
    if kind == "truncate" and buf:
        del buf[rng.randrange(len(buf)) :]
        path.write_bytes(bytes(buf))
        return "truncate"
    if kind == "insert":
        i = rng.randrange(len(buf) + 1)
        buf[i:i] = rng.randbytes(rng.randint(1, 16))
        path.write_bytes(bytes(buf))
        return "insert"
    # flips, mostly in the payload half (where the tensors are) but anywhere
    for _ in range(rng.randint(1, 8)):
        i = (
            rng.randrange(len(buf))
            if buf and rng.random() < 0.3
            else len(buf) // 2 + rng.randrange(max(len(buf) // 2, 1))
        )
        if i < len(buf):
            buf[i] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(buf))
    return "flip"


# -- readers --------------------------------------------------------------------------------


def _check_model(model) -> None:
    import torch

    with torch.no_grad():
        logits = model(torch.arange(1, 9).unsqueeze(0)).logits
    if not torch.isfinite(logits).all():
        raise AssertionError("a verified load computed non-finite logits")


def read_quantized_tensor(path: Path, verify: bool) -> None:
    import numpy as np
    from slmops.ops import QuantizedTensor

    q = QuantizedTensor.load(path)
    out = q.dequantize()
    if verify and not np.isfinite(out).all():
        raise AssertionError("a loaded QuantizedTensor dequantized to non-finite values")


def read_model_folder(path: Path, verify: bool) -> None:
    import slmops

    model, _ = slmops.zoo.load(path, verify=verify)
    if verify:
        _check_model(model)


_BASES: dict[str, object] = {}


def read_adapter(path: Path, verify: bool) -> None:
    import copy

    import slmops
    from slmops.finetune import load_adapter

    if "student" not in _BASES:
        _BASES["student"] = slmops.zoo.load("kjv-student")[0]
    load_adapter(copy.deepcopy(_BASES["student"]), path, verify=verify)


def read_run_config(path: Path, verify: bool) -> None:
    from slmops.workflow import load_config
    from slmops.workflow.engine import expand_search

    expand_search(load_config(path))


def read_gguf(path: Path, verify: bool) -> None:
    from slmops.models.gguf import load_gguf

    load_gguf(path)  # GGUF has no checksums: nothing to verify


READERS: dict[str, Callable[[Path, bool], None]] = {
    "quantized_tensor": read_quantized_tensor,
    "checkpoint": read_model_folder,
    "gptq": read_model_folder,
    "adapter": read_adapter,
    "run_config": read_run_config,
    "gguf": read_gguf,
}


class Hang(BaseException):
    """Not an Exception: a reader's ``except Exception`` that rewraps errors as ValueError
    must not turn a hang into a clean refusal."""


def _alarm(signum, frame):
    raise Hang(f"no answer in {HANG_SECONDS} s")


def _resource_error(e: BaseException) -> BaseException | None:
    """The MemoryError or RecursionError a documented exception was raised from, if any."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, RESOURCE_ERRORS):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def fuzz(
    target: str,
    seed_path: Path | list[Path],
    work: Path,
    rng: random.Random,
    deadline: float,
    iterations: int,
) -> dict:
    """Runs one target until ``deadline`` or ``iterations``; returns counts and failures."""
    allowed = _allowed()
    stats = {"target": target, "inputs": 0, "loaded": 0, "rejected": 0, "failures": []}
    signal.signal(signal.SIGALRM, _alarm)
    # one working copy of the seed; each input mutates one file and puts it back afterwards
    case = work / f"{target}-case"
    several = isinstance(seed_path, list)  # several seed files: the reader reads the mutated one
    if several:
        case.mkdir()
        files = [Path(shutil.copy(s, case / s.name)) for s in seed_path]
    elif seed_path.is_dir():
        shutil.copytree(seed_path, case)
        path, files = case, sorted(p for p in case.rglob("*") if p.is_file())
    else:
        case.mkdir()
        path = case / seed_path.name
        shutil.copy(seed_path, path)
        files = [path]
    originals = {f: f.read_bytes() for f in files}
    while time.monotonic() < deadline and stats["inputs"] < iterations:
        for f in case.rglob("*"):  # what a reader may have left (none should)
            if f.is_file() and f not in originals:
                f.unlink()
        victim = rng.choice(files)
        victim.write_bytes(originals[victim])
        what = mutate(victim, rng)
        verify = rng.random() < 0.125
        stats["inputs"] += 1
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        error: BaseException | None = None
        signal.alarm(HANG_SECONDS)
        try:
            READERS[target](victim if several else path, verify)
            stats["loaded"] += 1
        except allowed as e:
            error = _resource_error(e)
            stats["rejected"] += error is None
        except (Exception, Hang) as e:  # anything else: a finding, with how to reproduce it
            error = e
        finally:
            signal.alarm(0)
            victim.write_bytes(originals[victim])
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak
        if error is None and grown > MEMORY_KIB:
            error = MemoryError(f"the peak memory grew by {grown >> 10:,} MiB")
        if error is not None:
            stats["failures"].append(
                {"mutation": what, "file": victim.name, "verify": verify,
                 "error": f"{type(error).__name__}: {error}"[:300],
                 "where": "".join(traceback.format_exception(error, limit=-3))[-600:]}
            )  # fmt: skip
    return stats


def _limit_memory(headroom: int = 4 << 30) -> Callable[[], None]:
    """Caps the address space at what the process maps now plus ``headroom``: a reader that
    allocates gigabytes meets a MemoryError (a finding) instead of the OOM killer ending the
    run (and maybe other processes). Returns the undo; a no-op where /proc is missing."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    try:
        status = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return lambda: None
    mapped = int(next(line.split()[1] for line in status if line.startswith("VmSize:"))) << 10
    cap = mapped + headroom if hard == resource.RLIM_INFINITY else min(hard, mapped + headroom)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def main(argv: list[str] | None = None) -> int:
    import logging
    import warnings

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", choices=[*READERS, "all"], default="all")
    parser.add_argument("--seconds", type=float, default=60.0, help="time per target")
    parser.add_argument("--iterations", type=int, default=10**9, help="inputs per target at most")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    targets = list(READERS) if args.target == "all" else [args.target]
    failures = 0
    shm = Path("/dev/shm")  # many small writes: memory is ten times faster than this disk
    with tempfile.TemporaryDirectory(prefix="slmops-fuzz-", dir=shm if shm.is_dir() else None) as tmp:
        seeds = make_seeds(Path(tmp) / "seeds")
        unlimit = _limit_memory()
        try:
            for i, target in enumerate(targets):
                rng = random.Random(args.seed * 1000 + i)
                deadline = time.monotonic() + args.seconds
                stats = fuzz(target, seeds[target], Path(tmp), rng, deadline, args.iterations)
                failures += len(stats["failures"])
                print(
                    f"{target:18s} {stats['inputs']:7d} inputs  {stats['loaded']:6d} loaded  "
                    f"{stats['rejected']:6d} rejected cleanly  {len(stats['failures'])} failures"
                )
                for f in stats["failures"][:5]:
                    print(json.dumps(f, indent=2))
        finally:
            unlimit()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
