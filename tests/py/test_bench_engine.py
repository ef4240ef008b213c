"""slmops bench engine runs on the bundled teacher, as its docstring shows (its prompts must
fit the teacher's 8192-token vocabulary and 512-token context)."""

import json

from slmops.bench import engine as bench


def test_the_bench_runs_on_the_teacher_and_fits_its_context_and_vocabulary(tmp_path):
    out = tmp_path / "engine.json"
    argv = [
        "--model",
        "kjv-teacher",
        "--formats",
        "q4_0",
        "--threads",
        "1",
        "--rounds",
        "1",
        "--json",
        str(out),
    ]
    assert bench.main(argv) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["format"] == "q4_0" and row["threads"] == 1
    for key in ("decode", "prefill", "batch8", "batch32", "torch_decode"):
        assert row[key] > 0
    assert bench._prompt(4096, 0, 8192).max() < 8192


def test_the_prefill_prompt_is_cut_to_what_the_context_holds():
    class Engine:
        max_context = 512

    assert bench.prefill_tokens(Engine()) == 511
    Engine.max_context = 4096
    assert bench.prefill_tokens(Engine()) == bench.PREFILL_PROMPT
