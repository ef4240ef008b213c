"""Structured mutation fuzzing of every reader of untrusted files.

Seeds are valid files slmops writes (a QuantizedTensor file, a quantized slmops checkpoint,
a GPTQ folder, a LoRA adapter, a run config); each input mutates one file of a seed: bytes
flipped or inserted, the file truncated, a JSON value replaced (numbers huge, negative, of
the wrong type; keys dropped), or a safetensors header entry rewritten (dtype, shape,
offsets), so mutations reach the tensor payloads and the parsers, not only the checksums.
Readers run with their checksum verification off (else almost every input stops there);
one input in eight keeps it on.

Every input must end in a load or a clean exception of a documented type (ValueError,
with CorruptedFileError and ConfigError; OSError; KeyError; SafetensorError). Anything
else, a hang (> 10 s) or a crash of the process is a failure; a load whose model computes
non-finite logits from a file that verified is one too.

    python tests/fuzz/fuzz_readers.py --seconds 60            # every target, 60 s each
    python tests/fuzz/fuzz_readers.py --target adapter --iterations 500 --seed 3
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ALLOWED = (ValueError, OSError, KeyError)
HANG_SECONDS = 10


def _allowed() -> tuple[type, ...]:
    from safetensors import SafetensorError

    return (*ALLOWED, SafetensorError)


# -- seeds ----------------------------------------------------------------------------------


def make_seeds(root: Path) -> dict[str, Path]:
    """One valid input per target, written by slmops (small: the reference student)."""
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


def mutate(path: Path, rng: random.Random) -> str:
    """Changes one file in place; returns what was done (for a failure's report)."""
    data = path.read_bytes()
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


READERS: dict[str, Callable[[Path, bool], None]] = {
    "quantized_tensor": read_quantized_tensor,
    "checkpoint": read_model_folder,
    "gptq": read_model_folder,
    "adapter": read_adapter,
    "run_config": read_run_config,
}


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang(f"no answer in {HANG_SECONDS} s")


def fuzz(
    target: str, seed_path: Path, work: Path, rng: random.Random, deadline: float, iterations: int
) -> dict:
    """Runs one target until ``deadline`` or ``iterations``; returns counts and failures."""
    allowed = _allowed()
    stats = {"target": target, "inputs": 0, "loaded": 0, "rejected": 0, "failures": []}
    signal.signal(signal.SIGALRM, _alarm)
    # one working copy of the seed; each input mutates one file and puts it back afterwards
    case = work / f"{target}-case"
    if seed_path.is_dir():
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
        signal.alarm(HANG_SECONDS)
        try:
            READERS[target](path, verify)
            stats["loaded"] += 1
        except allowed:
            stats["rejected"] += 1
        except Exception as e:  # anything else: a finding, with how to reproduce it
            stats["failures"].append(
                {"mutation": what, "file": victim.name, "verify": verify,
                 "error": f"{type(e).__name__}: {e}"[:300], "where": traceback.format_exc(limit=-3)[-600:]}
            )  # fmt: skip
        finally:
            signal.alarm(0)
            victim.write_bytes(originals[victim])
    return stats


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
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
