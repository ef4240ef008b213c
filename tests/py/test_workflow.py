"""The workflow layer: config validation, the engine (ordering, caching, resume, search,
Pareto selection) with fake passes on a tiny random model, and the CLI end to end."""

import json
import math
import random
from pathlib import Path

import pytest
import slmops
import torch
from slmops.cli import main as cli
from slmops.workflow import (
    ConfigError,
    Pass,
    PassOptions,
    PassOutput,
    expand_search,
    load_config,
    pareto_front,
    parse_config,
    register_pass,
    run_workflow,
)

TEXT = "In the beginning God created the heaven and the earth. And the earth was without form, and void.\n"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A random 2-layer Llama (hidden 64) with a 300-token byte-level BPE tokenizer."""
    from slmops.zoo import train_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny")
    tok = train_tokenizer([TEXT] * 20, vocab_size=300)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch) -> Path:
    """Each test its own user cache (the input model's evaluations are kept there)."""
    monkeypatch.setenv("SLMOPS_CACHE", str(tmp_path / "user-cache"))
    return tmp_path / "user-cache"


@pytest.fixture
def text_file(tmp_path) -> Path:
    p = tmp_path / "eval.txt"
    p.write_text(TEXT * 8)
    return p


# -- fake passes: they record every real run in a file, so caching is observable -------------

CALLS: list[str] = []


class ScaleOptions(PassOptions):
    factor: float = 1.0
    fail_marker: str | None = None  # fail while this file does not exist


@register_pass
class ScaleMLP(Pass):
    """Multiplies every down_proj weight by ``factor``."""

    type = "test_scale_mlp"
    Options = ScaleOptions

    def run(self, model, tokenizer, options, ctx):
        CALLS.append(f"{self.type}:{options.factor}")
        if options.fail_marker and not Path(options.fail_marker).exists():
            raise RuntimeError("the fake pass fails until its marker file exists")
        with torch.no_grad():
            for layer in model.model.layers:
                layer.mlp.down_proj.weight.mul_(options.factor)
        (ctx.artifacts_dir / "note.txt").write_text(f"scaled by {options.factor}")
        return PassOutput(model, tokenizer, info={"factor": options.factor}, artifacts={"note": "note.txt"})


class ShiftOptions(PassOptions):
    shift: float = 0.0


@register_pass
class ShiftMLP(Pass):
    """Adds ``shift`` to every down_proj weight: applied after a scale, order shows."""

    type = "test_shift_mlp"
    Options = ShiftOptions

    def run(self, model, tokenizer, options, ctx):
        CALLS.append(f"{self.type}:{options.shift}")
        with torch.no_grad():
            for layer in model.model.layers:
                layer.mlp.down_proj.weight.add_(options.shift)
        return PassOutput(model, tokenizer)


def first_token_nll(model, tokenizer, text):
    """A custom metric: negative log-likelihood of the second token of the text."""
    ids = torch.tensor([tokenizer(text)["input_ids"][:2]])
    with torch.no_grad():
        return -float(torch.log_softmax(model(ids).logits[0, 0], -1)[ids[0, 1]])


def _config(model: Path, text_file: Path, out: Path, **extra) -> dict:
    cfg = {
        "model": str(model),
        "data": {"eval": {"type": "text", "path": str(text_file)}},
        "passes": [{"type": "test_scale_mlp", "factor": 2.0}, {"type": "test_shift_mlp", "shift": 0.01}],
        "evaluate": {"data": "eval", "metrics": ["perplexity", "size"], "seq_len": 64},
        "output_dir": str(out),
    }
    cfg.update(extra)
    return cfg


# -- config validation ------------------------------------------------------------------------


def test_a_good_config_parses_from_yaml_and_json(tmp_path, tiny_model, text_file):
    import yaml

    raw = _config(tiny_model, text_file, tmp_path / "out")
    raw["passes"].append({"type": "quantize", "format": "int4", "group_size": 32})
    raw["search"] = {
        "space": {
            "quantize.format": ["int4", "q4_0"],
            "test_scale_mlp.factor": {"min": 1, "max": 3, "step": 1},
        }
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "c.json").write_text(json.dumps(raw))
    a, b = load_config(tmp_path / "c.yaml"), load_config(tmp_path / "c.json")
    assert a == b
    assert a.pass_names() == ["test_scale_mlp", "test_shift_mlp", "quantize"]
    assert len(expand_search(a)) == 6


@pytest.mark.parametrize(
    "change, where, message",
    [
        ({"modle": "x"}, "modle", "unknown key"),
        ({"evaluate": {"seq_len": "long"}}, "evaluate.seq_len", "valid integer"),
        ({"evaluate": {"metrics": ["perplexity", "bleu"]}}, "evaluate.metrics", "[1] 'bleu' is not one of"),
        ({"passes": [{"type": "quantise"}]}, "passes[0].type", "unknown pass type 'quantise'; available: ["),
        ({"passes": [{"type": "quantize", "nbits": 4}]}, "passes[0].nbits", "unknown option"),
        ({"passes": [{"type": "quantize", "format": "int3"}]}, "passes[0].format", "format must be one of"),
        ({"passes": [{"type": "quantize", "algorithm": "magic"}]}, "passes[0].algorithm", "'rtn'"),
        ({"passes": [{"type": "quantize"}, {"type": "quantize"}]}, "passes[1].name", "used twice"),
        (
            {"search": {"space": {"prune.sparsity": [0.5]}}},
            "search.space.prune.sparsity",
            "no pass named 'prune'",
        ),
        (
            {"search": {"space": {"test_scale_mlp.bits": [1]}}},
            "search.space.test_scale_mlp.bits",
            "no option 'bits'",
        ),
        ({"evaluate": {"data": "calib"}}, "evaluate.data", "no dataset named 'calib'"),
        (
            {"search": {"space": {"test_scale_mlp.factor": {"min": 1, "max": 2}}}},
            "search.space.test_scale_mlp.factor",
            "a range is {min, max, step}",
        ),
        (
            {"data": {"eval": {"type": "text", "path": "/nonexistent.txt"}}},
            "data.eval.path",
            "does not exist",
        ),
        ({"data": {"eval": {"type": "csv"}}}, "data.eval.type", "'kjv'"),
    ],
)
def test_bad_configs_say_what_and_where(tmp_path, tiny_model, text_file, change, where, message):
    raw = _config(tiny_model, text_file, tmp_path / "out")
    raw.update(change)
    with pytest.raises(ConfigError) as e:
        parse_config(raw, source="my.yaml")
    text = str(e.value)
    assert text.startswith("my.yaml: ")
    line = next((ln for ln in text.splitlines() if ln.strip().startswith(where + ":")), None)
    assert line is not None, text
    assert message in line, text


def test_unreadable_config_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(tmp_path / "list.yaml")


# -- the engine -----------------------------------------------------------------------------


def _down_proj(folder: Path) -> torch.Tensor:
    model, _ = slmops.zoo.load(folder)
    return model.model.layers[0].mlp.down_proj.weight.detach().clone()


def test_passes_run_in_order_and_are_cached(tmp_path, tiny_model, text_file):
    CALLS.clear()
    cfg = parse_config(_config(tiny_model, text_file, tmp_path / "out"))
    result = run_workflow(cfg, progress=False)
    assert CALLS == ["test_scale_mlp:2.0", "test_shift_mlp:0.01"]
    # Order matters: (w * 2) + 0.01, not (w + 0.01) * 2.
    torch.testing.assert_close(_down_proj(tmp_path / "out" / "model"), _down_proj(tiny_model) * 2 + 0.01)
    cand = result.candidates[0]
    assert cand.status == "ok" and result.best == cand.id
    assert Path(cand.artifacts["test_scale_mlp.note"]).read_text() == "scaled by 2.0"
    history = json.loads((tmp_path / "out" / "run_history.json").read_text())
    assert history["best"] == cand.id and history["candidates"][0]["metrics"]["perplexity"] > 1
    assert (tmp_path / "out" / "run.log").read_text().count("done in") == 2

    CALLS.clear()
    again = run_workflow(cfg, progress=False)  # everything comes from the cache
    assert CALLS == []
    assert again.candidates[0].metrics == cand.metrics

    CALLS.clear()
    changed = _config(tiny_model, text_file, tmp_path / "out")
    changed["passes"][1]["shift"] = 0.02  # only the second pass reruns
    run_workflow(parse_config(changed), progress=False)
    assert CALLS == ["test_shift_mlp:0.02"]


def test_a_run_resumes_after_a_failure_in_the_middle(tmp_path, tiny_model, text_file):
    CALLS.clear()
    marker = tmp_path / "fixed"
    raw = _config(tiny_model, text_file, tmp_path / "out")
    raw["passes"] = [
        {"type": "test_shift_mlp", "shift": 0.5},
        {"type": "test_scale_mlp", "factor": 3.0, "fail_marker": str(marker)},
    ]
    first = run_workflow(parse_config(raw), progress=False)
    assert first.candidates[0].status == "failed" and "marker" in first.candidates[0].error
    assert first.best is None
    assert not any(
        p.name.startswith(".") for p in (tmp_path / "out" / "cache").iterdir()
    )  # no half-written entry
    marker.write_text("")
    CALLS.clear()
    second = run_workflow(parse_config(raw), progress=False)
    assert CALLS == ["test_scale_mlp:3.0"]  # the first pass came from the cache
    assert second.candidates[0].status == "ok"
    torch.testing.assert_close(_down_proj(tmp_path / "out" / "model"), (_down_proj(tiny_model) + 0.5) * 3)


def test_search_goals_pareto_and_best(tmp_path, tiny_model, text_file):
    raw = _config(tiny_model, text_file, tmp_path / "out")
    raw["passes"] = [{"type": "quantize", "format": "int8"}]
    raw["search"] = {
        "space": {"quantize.format": ["int8", "int4", "ternary", "q4_0"], "quantize.group_size": [32, 64]}
    }
    raw["evaluate"]["metrics"] = [
        "perplexity",
        "size",
        {"name": "nll1", "function": "test_workflow:first_token_nll"},
    ]
    raw["evaluate"]["goals"] = {"perplexity_increase_pct": 2.0, "size_ratio": 0.5}
    with pytest.raises(PermissionError, match="allow_code"):  # a custom metric runs code: opt in
        run_workflow(parse_config(raw), progress=False)
    result = run_workflow(parse_config(raw), progress=False, allow_code=True)
    # q4_0 and ternary ignore group_size: 8 combinations, 6 distinct candidates.
    formats = [
        (c.passes[0]["options"]["format"], c.passes[0]["options"].get("group_size"))
        for c in result.candidates
    ]
    assert formats == [
        ("int8", 32),
        ("int8", 64),
        ("int4", 32),
        ("int4", 64),
        ("ternary", None),
        ("q4_0", None),
    ]
    ok = [c for c in result.candidates if c.status == "ok"]
    assert len(ok) == 6
    for c in ok:
        assert math.isfinite(c.metrics["nll1"])
        assert c.metrics["size_ratio"] < 1
    # The front, recomputed by brute force over (perplexity, size).
    rows = [c.metrics for c in ok]

    def dominated(m):
        p, w = m["perplexity"], m["weight_bytes"]
        return any(
            o["perplexity"] <= p and o["weight_bytes"] <= w and (o["perplexity"] < p or o["weight_bytes"] < w)
            for o in rows
        )

    front = {c.id for c in ok if not dominated(c.metrics)}
    assert set(result.front) == front
    feasible = [c for c in ok if c.metrics["perplexity_change_pct"] <= 2.0 and c.metrics["size_ratio"] <= 0.5]
    assert all((c in feasible) == (not c.missed_goals) for c in ok)
    if feasible:
        assert result.best == min(feasible, key=lambda c: c.metrics["perplexity"]).id
    else:
        assert result.best is None
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| c0 |" in report and "Pareto" in report
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 1  # perplexity vs size (no speed measured)


def test_pareto_front_against_brute_force():
    rng = random.Random(0)
    rows = [{"a": rng.randint(0, 5), "b": rng.randint(0, 5), "c": rng.random()} for _ in range(40)]
    rows.append({"a": 1})  # a row missing an objective is never on the front
    objectives = [("a", False), ("b", False), ("c", True)]
    got = set(pareto_front(rows, objectives))

    def dominates(x, y):
        le = x["a"] <= y["a"] and x["b"] <= y["b"] and x["c"] >= y["c"]
        return le and (x["a"] < y["a"] or x["b"] < y["b"] or x["c"] > y["c"])

    full = [i for i, r in enumerate(rows) if len(r) == 3]
    assert got == {i for i in full if not any(dominates(rows[j], rows[i]) for j in full)}


def test_search_expansion_grid_random_and_ranges(tmp_path, tiny_model, text_file):
    raw = _config(tiny_model, text_file, tmp_path / "out")
    raw["search"] = {"space": {"test_scale_mlp.factor": {"min": 0.5, "max": 2.0, "step": 0.5},
                               "test_shift_mlp.shift": [0, 1]}}  # fmt: skip
    grid = expand_search(parse_config(raw))
    assert [c["test_scale_mlp"]["factor"] for c in grid] == [0.5, 0.5, 1.0, 1.0, 1.5, 1.5, 2.0, 2.0]
    raw["search"].update(strategy="random", max_trials=3, seed=7)
    picked = expand_search(parse_config(raw))
    assert len(picked) == 3 and all(p in grid for p in picked)
    assert picked == expand_search(parse_config(raw))  # the seed fixes the sample


def test_a_search_by_a_list_of_candidates(tmp_path, tiny_model, text_file):
    raw = _config(tiny_model, text_file, tmp_path / "out")
    raw["search"] = {"candidates": [{"test_scale_mlp.factor": 3}, {"test_shift_mlp.shift": 1,
                                    "test_scale_mlp.factor": 0.5}, {}]}  # fmt: skip
    assert expand_search(parse_config(raw)) == [
        {"test_scale_mlp": {"factor": 3}},
        {"test_shift_mlp": {"shift": 1}, "test_scale_mlp": {"factor": 0.5}},
        {},
    ]
    raw["search"].update(strategy="random", max_trials=2, seed=1)
    assert len(expand_search(parse_config(raw))) == 2
    raw["search"] = {"candidates": [{"test_scale_mlp.factor": 3}, {"quantize.bits": 4}]}
    with pytest.raises(ConfigError, match=r"search.candidates.quantize.bits: no pass named 'quantize'"):
        parse_config(raw)
    raw["search"] = {"candidates": [{"test_scale_mlp.factor": 3}], "space": {"test_shift_mlp.shift": [1]}}
    with pytest.raises(ConfigError, match="a space or a list of candidates, not both"):
        parse_config(raw)


# -- the CLI ----------------------------------------------------------------------------------


def test_cli_quantize_gptq_flags_reach_the_pass(tmp_path, tiny_model, text_file):
    args = ["quantize", "-m", str(tiny_model), "-f", "int4", "--algorithm", "gptq", "--bits", "3", "--mse",
            "--act-order", "--group-size", "32", "--calibration", str(text_file), "--n-samples", "4",
            "--seq-len", "32", "-o", str(tmp_path / "q"), "-q"]  # fmt: skip
    assert cli(args) == 0
    history = json.loads((tmp_path / "q" / "run_history.json").read_text())
    options = history["config"]["passes"][0]
    assert (options["bits"], options["mse"], options["act_order"], options["group_size"]) == (
        3,
        True,
        True,
        32,
    )
    model, _ = slmops.zoo.load(tmp_path / "q" / "model")
    assert model.model.layers[0].mlp.down_proj.qweight.format == "int4"


def test_cli_quantize_optimize_evaluate_end_to_end(tmp_path, tiny_model, text_file, capsys):
    assert (
        cli(["quantize", "--model", str(tiny_model), "--format", "int8", "-o", str(tmp_path / "q"), "-q"])
        == 0
    )
    model, _ = slmops.zoo.load(tmp_path / "q" / "model")
    assert isinstance(model.model.layers[0].mlp.down_proj, slmops.nn.QuantLinear)
    assert (tmp_path / "q" / "report.html").is_file()

    code = cli(
        [
            "optimize",
            "-m",
            str(tiny_model),
            "-p",
            "int4",
            "--data",
            str(text_file),
            "-o",
            str(tmp_path / "o"),
            "-q",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "best: c0" in out and "perplexity" in out
    history = json.loads((tmp_path / "o" / "run_history.json").read_text())
    assert history["candidates"][0]["passes"][0]["options"]["format"] == "int4"
    assert history["candidates"][0]["passes"][0]["options"]["activation"] == "int8"  # the preset's fast path
    model, _ = slmops.zoo.load(tmp_path / "o" / "model")
    assert model.model.layers[0].mlp.down_proj.activation == "int8"

    assert cli(["evaluate", "-m", str(tmp_path / "o" / "model"), "--data", str(text_file),
                "--json", str(tmp_path / "e.json")]) == 0  # fmt: skip
    ppl = json.loads((tmp_path / "e.json").read_text())["perplexity"]["perplexity"]
    assert ppl == pytest.approx(history["candidates"][0]["metrics"]["perplexity"], rel=1e-6)

    # --activation overrides the preset
    argv = [
        "optimize",
        "-m",
        str(tiny_model),
        "-p",
        "int4",
        "--activation",
        "float",
        "--data",
        str(text_file),
    ]
    assert cli([*argv, "-o", str(tmp_path / "f"), "-q"]) == 0
    history = json.loads((tmp_path / "f" / "run_history.json").read_text())
    assert history["candidates"][0]["passes"][0]["options"]["activation"] == "float"


def test_cli_export_and_the_export_pass(tmp_path, tiny_model, text_file, capsys):
    assert (
        cli(
            [
                "export",
                "-m",
                str(tiny_model),
                "-t",
                "gguf",
                "--default-type",
                "q8_0",
                "-o",
                str(tmp_path / "g"),
            ]
        )
        == 0
    )
    assert "model.gguf" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "g" / "manifest.json").read_text())
    assert {f["path"] for f in manifest["files"]} == {"model.gguf", "Modelfile"}
    raw = _config(tiny_model, text_file, tmp_path / "run")
    raw["passes"] = [{"type": "quantize", "format": "q8_0"}, {"type": "export", "target": "gguf"}]
    result = run_workflow(parse_config(raw), progress=False)
    assert result.best == "c0"
    assert (tmp_path / "run" / "export-gguf" / "model.gguf").is_file()
    assert "export-gguf" in (tmp_path / "run" / "report.md").read_text()
    raw["passes"][0]["format"] = "int4"  # GGUF cannot hold int4: the candidate fails, with the reason
    failed = run_workflow(parse_config(raw), progress=False)
    assert failed.best is None and "cannot hold exactly" in failed.candidates[0].error
    # ... unless the pass may skip a format its target cannot hold: then the model goes on,
    # exported to the targets that hold it.
    raw["passes"][1]["skip_unsupported_formats"] = True
    raw["passes"].append({"type": "export", "name": "onnx", "target": "onnx-genai", "lm_head": "float"})
    raw["output_dir"] = str(tmp_path / "mixed")
    mixed = run_workflow(parse_config(raw), progress=False)
    assert mixed.best == "c0"
    export_info = mixed.candidates[0].passes[1]["info"]
    assert "cannot hold exactly" in export_info["skipped"] and "files" not in export_info
    assert not (tmp_path / "mixed" / "export-gguf").exists()
    assert (tmp_path / "mixed" / "onnx-onnx-genai" / "model.onnx").is_file()
    assert "Not exported by export: model.layers.0" in (tmp_path / "mixed" / "report.md").read_text()


def test_cli_exit_codes(tmp_path, tiny_model, text_file, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"model: {tiny_model}\npasses:\n  - {{type: quantize, bitz: 4}}\n")
    assert cli(["run", str(bad)]) == 2
    assert "passes[0].bitz: unknown option" in capsys.readouterr().err
    assert cli(["evaluate", "-m", str(tmp_path / "nothing")]) == 1
    assert "does not exist" in capsys.readouterr().err
    strict = tmp_path / "strict.yaml"
    raw = _config(tiny_model, text_file, tmp_path / "s")
    raw["passes"] = [{"type": "quantize", "format": "ternary"}]
    raw["evaluate"]["goals"] = {"perplexity_increase_pct": 0.0}  # ternary cannot be free
    strict.write_text(json.dumps(raw))
    assert cli(["run", str(strict), "-q"]) == 3
    assert "no candidate met the goals" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli(["optimize", "--model", "x", "--precision", "int3", "-o", str(tmp_path)])
    assert e.value.code == 2


@pytest.mark.slow
def test_demo_end_to_end_on_the_reference_teacher(tmp_path, capsys):
    assert cli(["demo", "-o", str(tmp_path / "demo"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "best: " in out
    history = json.loads((tmp_path / "demo" / "run_history.json").read_text())
    ok = [c for c in history["candidates"] if c["status"] == "ok"]
    assert len(ok) == 6
    best = next(c for c in ok if c["id"] == history["best"])
    assert best["metrics"]["perplexity_change_pct"] <= 5 and best["metrics"]["size_ratio"] <= 0.5
    model, tok = slmops.zoo.load(tmp_path / "demo" / "model")
    result = slmops.evaluate_model(model, tok, data=slmops.zoo.eval_text(), seq_len=512)
    ppl = result["perplexity"]["perplexity"]
    assert ppl == pytest.approx(best["metrics"]["perplexity"], rel=1e-6)
    assert "report" in (tmp_path / "demo" / "report.html").read_text()
    # The chosen model also went out as GGUF, its weights the same bytes.
    import gguf

    reader = gguf.GGUFReader(str(tmp_path / "demo" / "export-gguf" / "model.gguf"))
    down = next(t for t in reader.tensors if t.name == "blk.0.ffn_down.weight")
    ours = model.model.layers[0].mlp.down_proj.qweight
    assert down.tensor_type.name == ours.format.upper()
    assert bytes(down.data) == ours.tensors["data"].numpy().tobytes()


def test_gptq_pass_calibrates_on_a_named_dataset(tmp_path, tiny_model, text_file):
    raw = _config(tiny_model, text_file, tmp_path / "out")
    raw["data"]["calib"] = {"type": "text", "path": str(text_file)}
    raw["passes"] = [{"type": "quantize", "algorithm": "gptq", "format": "int4", "group_size": 32, "bits": 3,
                      "mse": True, "calibration": "calib", "n_samples": 4, "seq_len": 32}]  # fmt: skip
    result = run_workflow(parse_config(raw), progress=False)
    info = result.candidates[0].passes[0]["info"]
    assert info["layers_quantized"] == 14 and "(gptq)" in info["summary"]
    model, _ = slmops.zoo.load(tmp_path / "out" / "model")
    assert model.model.layers[0].self_attn.q_proj.qweight.format == "int4"
    bad = _config(tiny_model, text_file, tmp_path / "bad")
    bad["passes"] = [{"type": "quantize", "algorithm": "gptq", "calibration": "nowhere"}]
    with pytest.raises(ConfigError, match=r"passes\[0\].calibration: no dataset named 'nowhere'"):
        parse_config(bad)


@pytest.mark.parametrize(
    "algorithm, extra", [("awq", {"group_size": 32, "duo_scaling": False}), ("smoothquant", {"alpha": 0.6})]
)
def test_awq_and_smoothquant_passes_calibrate(tmp_path, tiny_model, text_file, algorithm, extra):
    raw = _config(tiny_model, text_file, tmp_path / "out")
    raw["data"]["calib"] = {"type": "text", "path": str(text_file)}
    fmt = "int8" if algorithm == "smoothquant" else "int4"
    raw["passes"] = [{"type": "quantize", "algorithm": algorithm, "format": fmt, "calibration": "calib",
                      "n_samples": 4, "seq_len": 32, **extra}]  # fmt: skip
    result = run_workflow(parse_config(raw), progress=False)
    info = result.candidates[0].passes[0]["info"]
    assert info["layers_quantized"] == 14 and f"({algorithm})" in info["summary"]


def test_distill_pass_trains_a_student_on_a_named_dataset(tmp_path, tiny_model, text_file):
    raw = _config(tiny_model, text_file, tmp_path / "out")
    raw["data"]["train"] = {"type": "text", "path": str(text_file)}
    raw["passes"] = [{"type": "distill", "student": str(tiny_model), "data": "train", "steps": 2,
                      "batch_size": 2, "seq_len": 16, "init": "scratch", "seed": 1}]  # fmt: skip
    result = run_workflow(parse_config(raw), progress=False)
    info = result.candidates[0].passes[0]["info"]
    assert info["steps"] == 2 and info["tokens_trained"] == 2 * 2 * 16 and info["final_loss"] > 0
    model, _ = slmops.zoo.load(tmp_path / "out" / "model")
    teacher, _ = slmops.zoo.load(tiny_model)
    # a student trained from scratch, not the teacher passed through
    assert not torch.equal(model.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    bad = _config(tiny_model, text_file, tmp_path / "bad")
    bad["passes"] = [{"type": "distill", "student": str(tiny_model), "data": "nowhere", "divergence": "kl"}]
    with pytest.raises(ConfigError, match=r"passes\[0\]\.data: no dataset named 'nowhere'"):
        parse_config(bad)


def test_prune_pass_and_cli(tmp_path, tiny_model, text_file):
    raw = _config(tiny_model, text_file, tmp_path / "out")
    raw["data"]["calib"] = {"type": "text", "path": str(text_file)}
    raw["passes"] = [{"type": "prune", "method": "wanda", "pattern": "2:4", "sparse": True,
                      "calibration": "calib", "n_samples": 4, "seq_len": 32}]  # fmt: skip
    result = run_workflow(parse_config(raw), progress=False)
    info = result.candidates[0].passes[0]["info"]
    assert info["layers_pruned"] == 14 and info["sparsity"] == 0.5 and info["sparse_format"] == "2:4"
    model, _ = slmops.zoo.load(tmp_path / "out" / "model")  # the checkpoint rebuilds the SparseLinear layers
    layer = model.model.layers[1].mlp.gate_proj
    assert isinstance(layer, slmops.nn.SparseLinear) and layer.sparse_weight.pattern == "2:4"
    dense = layer.sparse_weight.to_dense()
    assert ((dense.reshape(dense.shape[0], -1, 4) != 0).sum(-1) <= 2).all()
    ids = torch.arange(1, 17).reshape(1, -1)
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()

    assert cli(["prune", "-m", str(tiny_model), "--sparsity", "0.6", "-o", str(tmp_path / "p"), "-q"]) == 0
    pruned, _ = slmops.zoo.load(tmp_path / "p" / "model")
    w = pruned.model.layers[0].self_attn.o_proj.weight
    assert isinstance(pruned.model.layers[0].self_attn.o_proj, torch.nn.Linear)
    assert float((w == 0).float().mean()) == pytest.approx(0.6, abs=1e-3)
    out = str(tmp_path / "c")
    assert cli(["prune", "-m", str(tiny_model), "--sparsity", "0.9", "--sparse", "-o", out, "-q"]) == 0
    csr, _ = slmops.zoo.load(tmp_path / "c" / "model")
    assert csr.model.layers[0].mlp.up_proj.sparse_weight.pattern == "csr"
    bad = _config(tiny_model, text_file, tmp_path / "bad")
    bad["passes"] = [{"type": "prune", "pattern": "3:4"}]
    with pytest.raises(ConfigError, match="pattern must be one of"):
        parse_config(bad)


def test_finetune_pass_merges_the_adapter(tmp_path, tiny_model, text_file):
    raw = _config(tiny_model, text_file, tmp_path / "out")
    raw["data"]["train"] = {"type": "text", "path": str(text_file)}
    raw["passes"] = [{"type": "finetune", "method": "qlora", "data": "train", "steps": 3, "batch_size": 2,
                      "seq_len": 32, "lr": 1e-2, "target_modules": ["q_proj", "down_proj"]}]  # fmt: skip
    result = run_workflow(parse_config(raw), progress=False)
    candidate = result.candidates[0]
    info = candidate.passes[0]["info"]
    assert info["method"] == "qlora" and info["trainable_params"] > 0
    model, _ = slmops.zoo.load(tmp_path / "out" / "model")  # merged: a plain float model
    assert isinstance(model.model.layers[0].self_attn.q_proj, torch.nn.Linear)
    assert isinstance(model.get_input_embeddings(), torch.nn.Embedding)
    assert (tmp_path / "out" / "finetune-adapter" / "adapter_config.json").is_file()
    bad = _config(tiny_model, text_file, tmp_path / "bad")
    bad["passes"] = [{"type": "finetune", "method": "dora"}]
    with pytest.raises(ConfigError, match="method must be one of"):
        parse_config(bad)


# -- hostile inputs: each a reproducer of a finding of the 2026-12-04 probe ---------------------


def test_pass_names_are_single_path_components(tmp_path, tiny_model, text_file):
    for bad in ("/abs/path/target", "../up", "a/b", ".hidden", "x" * 65):
        raw = _config(tiny_model, text_file, tmp_path / "out")
        raw["passes"][0]["name"] = bad
        with pytest.raises(ConfigError, match=r"passes\[0\]\.name"):
            parse_config(raw)


def test_yaml_aliases_and_unbounded_search_spaces_are_refused_at_once(tmp_path, tiny_model, text_file):
    bomb = tmp_path / "bomb.yaml"
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 12)]
    bomb.write_text("\n".join(lines) + f"\nmodel: {tiny_model}\n")
    with pytest.raises(ConfigError, match="aliases"):
        load_config(bomb)
    raw = _config(tiny_model, text_file, tmp_path / "out")
    raw["search"] = {"space": {"test_scale_mlp.factor": {"min": 1, "max": 1e12, "step": 1}}, "max_trials": 2}
    assert [c["test_scale_mlp"]["factor"] for c in expand_search(parse_config(raw))] == [1, 2]
    raw["search"]["strategy"] = "random"
    assert len(expand_search(parse_config(raw))) == 2  # sampled without building the grid
    del raw["search"]["max_trials"]
    with pytest.raises(ValueError, match="max_trials"):
        expand_search(parse_config(raw))


def test_a_damaged_cache_entry_is_computed_again(tmp_path, tiny_model, text_file):
    raw = _config(tiny_model, text_file, tmp_path / "out")
    first = run_workflow(parse_config(raw), progress=False).candidates[0]
    weights = Path(first.model_dir) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-64:] = bytes(range(64))  # the last tensor's bytes, header intact
    weights.write_bytes(bytes(data))
    CALLS.clear()
    again = run_workflow(parse_config(raw), progress=False).candidates[0]
    assert CALLS == ["test_shift_mlp:0.01"]  # the damaged entry ran again, its parent did not
    assert again.metrics["perplexity"] == first.metrics["perplexity"]
    slmops.zoo.load(again.model_dir)  # whole again: verifies
    eval_files = list((tmp_path / "out" / "cache" / "eval").glob("*.json"))
    for f in eval_files:
        f.write_text(f.read_text()[:20])  # truncated: measured again, not a failed candidate
    assert run_workflow(parse_config(raw), progress=False).candidates[0].status == "ok"
    import shutil

    shutil.rmtree(again.model_dir)  # a missing cached model: computed again, not an aborted run
    assert run_workflow(parse_config(raw), progress=False).candidates[0].status == "ok"


def test_the_cache_follows_the_data_files_content(tmp_path, tiny_model, text_file):
    raw = _config(tiny_model, text_file, tmp_path / "out")
    first = run_workflow(parse_config(raw), progress=False)
    text_file.write_text(text_file.read_text()[: len(text_file.read_text()) // 2])
    second = run_workflow(parse_config(raw), progress=False)
    assert second.input["metrics"]["perplexity"] != first.input["metrics"]["perplexity"]


def test_a_run_never_replaces_a_model_folder_it_did_not_write(tmp_path, tiny_model, text_file):
    out = tmp_path / "out"
    (out / "model").mkdir(parents=True)
    (out / "model" / "thesis.txt").write_text("years of work")
    raw = _config(tiny_model, text_file, out)
    CALLS.clear()
    with pytest.raises(FileExistsError, match="overwrite"):
        run_workflow(parse_config(raw), progress=False)
    assert CALLS == []  # refused before any work
    assert (out / "model" / "thesis.txt").read_text() == "years of work"
    run_workflow(parse_config(raw), progress=False, overwrite=True)
    assert not (out / "model" / "thesis.txt").exists()


def test_cli_quantize_rejects_impossible_options_before_any_work(tmp_path, capsys):
    assert (
        cli(["quantize", "-m", "kjv-teacher", "-f", "int4", "--group-size", "24", "-o", str(tmp_path)]) == 2
    )
    assert "power of two" in capsys.readouterr().err
    assert cli(["quantize", "-m", "kjv-teacher", "-f", "int8", "--group-size", str(2**63 - 1),
                "-o", str(tmp_path)]) == 2  # fmt: skip
    assert not (tmp_path / "cache").exists()
    with pytest.raises(ValueError, match="unknown format"):
        slmops.quantize_model(slmops.zoo.load("kjv-teacher")[0], format="int5")


@pytest.mark.parametrize(
    ("kind", "reader"), [("eval_slice", "eval_text"), ("modern_slice", "modern_eval_text")]
)
def test_the_shipped_held_out_texts_as_run_config_data(tmp_path, tiny_model, text_file, kind, reader):
    from slmops.workflow.engine import read_data

    try:
        expected = getattr(slmops.zoo, reader)()
    except FileNotFoundError as e:  # the modern text's Debian package is not installed here
        pytest.skip(str(e))
    raw = _config(tiny_model, text_file, tmp_path / "out")
    raw["data"]["held_out"] = {"type": kind, "max_chars": 1000}
    assert read_data(parse_config(raw).data["held_out"]) == expected[:1000]


def test_the_input_models_evaluation_is_reused_across_runs(tmp_path, tiny_model, text_file, monkeypatch):
    """A second run on the same model and data, in another folder with other passes, takes
    the input's metrics from the user cache; other data or another thread count measure."""
    from slmops.workflow.engine import Engine

    measured = []
    real = Engine._evaluate
    monkeypatch.setattr(Engine, "_evaluate", lambda self, d: measured.append(Path(d)) or real(self, d))
    raw = _config(tiny_model, text_file, tmp_path / "one")
    first = run_workflow(parse_config(raw), progress=False, report=False)
    assert len(measured) == 2  # the input and the candidate
    raw = _config(tiny_model, text_file, tmp_path / "two", passes=[{"type": "test_shift_mlp", "shift": 0.5}])
    second = run_workflow(parse_config(raw), progress=False, report=False)
    assert len(measured) == 3 and measured[-1] == Path(second.candidates[0].model_dir)
    assert second.input["metrics"] == first.input["metrics"]
    torch.set_num_threads(torch.get_num_threads() + 1)
    try:
        run_workflow(
            parse_config({**raw, "output_dir": str(tmp_path / "three")}), progress=False, report=False
        )
    finally:
        torch.set_num_threads(torch.get_num_threads() - 1)
    assert len(measured) == 5  # the input measured again at the other thread count
    text_file.write_text(TEXT * 4)
    run_workflow(parse_config({**raw, "output_dir": str(tmp_path / "four")}), progress=False, report=False)
    assert len(measured) == 7


def test_a_quiet_run_shows_no_progress_bars(tmp_path, tiny_model, text_file, capfd):
    from transformers.utils import logging as hf_logging

    run_workflow(parse_config(_config(tiny_model, text_file, tmp_path / "out")), progress=False, report=False)
    assert "it/s]" not in capfd.readouterr().err  # neither ours nor transformers' loading bars
    assert hf_logging.is_progress_bar_enabled()  # and transformers' setting is as it was
    run_workflow(parse_config(_config(tiny_model, text_file, tmp_path / "loud")), progress=True, report=False)
    assert "it/s]" in capfd.readouterr().err
