"""slmops bench compress: one compression per row, evaluated on both held-out texts."""

import copy
import json

import slmops
import slmops.quantize.calibration
import torch
from conftest import CALIBRATION_TEXT
from slmops.bench import compress

MODERN = "The hacker culture is a loosely networked collection of subcultures.\n"


def test_every_row_has_both_perplexities_of_one_compressed_model(tiny_llama, monkeypatch, tmp_path):
    model, tok = copy.deepcopy(tiny_llama[0]), tiny_llama[1]
    model.config.max_position_embeddings = (
        512  # the bench evaluates windows of 512 tokens (rotary: any length)
    )
    monkeypatch.setattr(slmops.zoo, "load", lambda name: (copy.deepcopy(model), tok))
    monkeypatch.setattr(slmops.zoo, "eval_text", lambda: CALIBRATION_TEXT * 30)
    monkeypatch.setattr(slmops.zoo, "modern_eval_text", lambda: MODERN * 30)
    batches = torch.randint(0, len(tok), (4, 32), generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(slmops.quantize.calibration, "calibration_batches", lambda *a, **k: batches)
    evaluated = []  # (model, text) for every evaluation
    real = slmops.evaluate_model

    def evaluate(m, tokenizer, **kw):
        evaluated.append((id(m), kw["data"]))
        return real(m, tokenizer, **kw)

    monkeypatch.setattr(slmops, "evaluate_model", evaluate)
    out_json, out_md = tmp_path / "c.json", tmp_path / "c.md"
    rows = "rtn-4-sym,gptq-4-sym"
    assert (
        compress.main(["--rows", rows, "--threads", "1", "--json", str(out_json), "--markdown", str(out_md)])
        == 0
    )

    # fp32 and each row: one model, evaluated once on each text, KJV slice first.
    assert len(evaluated) == 6
    for i in range(0, 6, 2):
        assert evaluated[i][0] == evaluated[i + 1][0]
        assert (evaluated[i][1], evaluated[i + 1][1]) == (CALIBRATION_TEXT * 30, MODERN * 30)
    result = json.loads(out_json.read_text())
    assert [r["row"] for r in result["rows"]] == ["fp32", "rtn-4-sym", "gptq-4-sym"]
    fp32 = result["rows"][0]
    for r in result["rows"]:
        assert r["perplexity"] > 1 and r["modern_perplexity"] > 1
        assert abs(r["change"] - (r["perplexity"] / fp32["perplexity"] - 1)) < 1e-12
        assert abs(r["modern_change"] - (r["modern_perplexity"] / fp32["modern_perplexity"] - 1)) < 1e-12
    assert fp32["change"] == fp32["modern_change"] == 0
    table = out_md.read_text().splitlines()
    assert "| modern ppl | change |" in table[2]
    assert [line.count("|") for line in table[2:]] == [10] * 5  # header, rule and 3 rows: 9 columns
    assert f"| {result['rows'][1]['modern_perplexity']:.3f} |" in table[5]
