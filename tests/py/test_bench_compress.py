"""slmops bench compress: each row compressed and measured in its own process, evaluated on
both held-out texts."""

import copy
import json

import pytest
import slmops
from slmops.bench import compress
from slmops.zoo.jargon import JARGON_FILE


@pytest.mark.skipif(not JARGON_FILE.exists(), reason="Debian's jargon-text is not installed")
def test_each_row_measured_in_its_own_process_equals_the_compression_done_here(tiny_llama, tmp_path):
    """The rows' perplexities equal compressing the same model on the same calibration
    windows in this process; each row's memory counts its own model copy (a row measured
    in a process that had freed a bigger row's memory would read near zero)."""
    model, tok = copy.deepcopy(tiny_llama[0]), tiny_llama[1]
    model.config.max_position_embeddings = 512  # the bench evaluates windows of 512 tokens
    folder = tmp_path / "tiny"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    out_json, out_md = tmp_path / "c.json", tmp_path / "c.md"
    argv = ["--model", str(folder), "--rows", "gptq-4-sym,rtn-4-sym", "--samples", "4", "--seq-len", "32",
            "--threads", "1", "--json", str(out_json), "--markdown", str(out_md)]  # fmt: skip
    assert compress.main(argv) == 0

    result = json.loads(out_json.read_text())
    assert [r["row"] for r in result["rows"]] == ["fp32", "gptq-4-sym", "rtn-4-sym"]
    fp32, gptq, rtn = result["rows"]
    from slmops.quantize.calibration import calibration_batches

    batches = calibration_batches(tok, None, n_samples=4, seq_len=32, seed=0)
    for row, method, calib in ((gptq, "gptq", {"calibration": batches, "progress": False}), (rtn, "rtn", {})):
        m = copy.deepcopy(model)
        slmops.quantize_model(m, method, **calib, **compress.ROWS[row["row"]][2])
        expected = compress._perplexities(m, tok)
        assert row["perplexity"] == pytest.approx(expected["perplexity"], rel=1e-4)
        assert row["modern_perplexity"] == pytest.approx(expected["modern_perplexity"], rel=1e-4)
        assert row["peak_memory_x_float"] > 0.5  # its deepcopy of the float model at least
    assert fp32["perplexity"] == pytest.approx(compress._perplexities(model, tok)["perplexity"], rel=1e-6)
    for r in result["rows"]:
        assert abs(r["change"] - (r["perplexity"] / fp32["perplexity"] - 1)) < 1e-12
        assert abs(r["modern_change"] - (r["modern_perplexity"] / fp32["modern_perplexity"] - 1)) < 1e-12
    assert gptq["share_of_baseline"] == pytest.approx(gptq["change"] / rtn["change"])
    table = out_md.read_text().splitlines()
    assert "| modern ppl | change |" in table[2]
    assert [line.count("|") for line in table[2:]] == [10] * 5  # header, rule and 3 rows: 9 columns


def test_an_unknown_row_is_refused_before_any_work(capsys):
    with pytest.raises(SystemExit):
        compress.main(["--rows", "rtn-4-sym,gptq-5-sym"])
    assert "gptq-5-sym" in capsys.readouterr().err
