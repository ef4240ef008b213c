"""The readers' fuzzer (tests/fuzz/fuzz_readers.py) for a few seconds a target: every
mutated file loads or is refused with a documented exception. CI also runs it a minute a
target; the pytest keeps it green between CI runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

FUZZ = Path(__file__).parents[1] / "fuzz" / "fuzz_readers.py"


@pytest.fixture(scope="module")
def fuzz_readers():
    spec = importlib.util.spec_from_file_location("fuzz_readers", FUZZ)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_reader_survives_mutated_files(fuzz_readers, capsys):
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    # main() quiets logging and warnings for the whole process (it is a script); undo that
    # here, or later tests that read run.log see no INFO lines
    verbosity = hf_logging.get_verbosity()
    try:
        with warnings.catch_warnings():
            assert fuzz_readers.main(["--seconds", "3", "--seed", "7"]) == 0, capsys.readouterr().out
    finally:
        logging.disable(logging.NOTSET)
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    out = capsys.readouterr().out
    assert all(t in out for t in fuzz_readers.READERS)  # each target ran and reported


def test_a_reader_that_raises_an_undocumented_error_is_reported(fuzz_readers, tmp_path, monkeypatch):
    seed = tmp_path / "seed.json"
    seed.write_text('{"a": 1}')

    def reader(path, verify):
        raise TypeError("not a documented error")

    monkeypatch.setitem(fuzz_readers.READERS, "fake", reader)
    import random
    import time

    stats = fuzz_readers.fuzz("fake", seed, tmp_path, random.Random(0), time.monotonic() + 5, 3)
    assert stats["inputs"] == 3 and len(stats["failures"]) == 3


def test_a_hang_or_a_resource_error_inside_a_documented_one_is_reported(fuzz_readers, tmp_path, monkeypatch):
    import random
    import time

    seed = tmp_path / "seed.json"
    seed.write_text('{"a": 1}')

    def hangs(path, verify):
        try:
            time.sleep(5)
        except Exception as e:  # what a reader that rewraps every error does
            raise ValueError("wrapped") from e

    def recurses(path, verify):
        try:
            recurses(path, verify)
        except RecursionError as e:
            raise ValueError(f"{path} is too deep") from e

    monkeypatch.setattr(fuzz_readers, "HANG_SECONDS", 1)
    for name, reader, error in (("hangs", hangs, "Hang"), ("recurses", recurses, "RecursionError")):
        monkeypatch.setitem(fuzz_readers.READERS, name, reader)
        stats = fuzz_readers.fuzz(name, seed, tmp_path, random.Random(0), time.monotonic() + 10, 1)
        assert stats["rejected"] == 0 and [f["error"].split(":")[0] for f in stats["failures"]] == [error]


def test_several_seed_files_each_reach_the_reader_that_reads_them(fuzz_readers, tmp_path, monkeypatch):
    import random
    import time

    seeds = [tmp_path / "a.gguf", tmp_path / "b.gguf"]
    for s in seeds:
        s.write_bytes(b"GGUF" + bytes(60))
    read = []
    monkeypatch.setitem(fuzz_readers.READERS, "files", lambda path, verify: read.append(path.name))
    fuzz_readers.fuzz("files", seeds, tmp_path, random.Random(0), time.monotonic() + 10, 20)
    assert set(read) == {"a.gguf", "b.gguf"} and len(read) == 20
