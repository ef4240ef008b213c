"""slmops bench export's side-by-side arithmetic: rounds interleave the folders and the
ratio to the builder is taken round by round (hand-computed references; the export and
runtime themselves are tested in test_export_onnx_genai)."""

from pathlib import Path

import pytest

pytest.importorskip("onnxruntime_genai")
from slmops.bench import export as bench  # noqa: E402


def test_speeds_interleave_rounds_and_take_per_round_ratios(monkeypatch):
    order = []
    # (prompt tok/s, decode tok/s) per call; the first call of each folder is the warm-up.
    speeds = {"ours": iter([(0, 0), (300, 90), (310, 60), (320, 100)]),
              bench.BUILDER_ROW: iter([(0, 0), (300, 100), (300, 50), (320, 100)])}  # fmt: skip

    class FakeModel:
        def __init__(self, path):
            self.label = Path(path).name

    def fake_generate(model, prompt):
        order.append(model.label)
        return speeds[model.label].__next__()

    import onnxruntime_genai

    monkeypatch.setattr(onnxruntime_genai, "Model", FakeModel)
    monkeypatch.setattr(bench, "generate_once", fake_generate)
    folders = {"ours": Path("ours"), bench.BUILDER_ROW: Path(bench.BUILDER_ROW)}
    out = bench._speeds(folders, [1, 2, 3], rounds=3)
    assert order == ["ours", bench.BUILDER_ROW] * 4  # warm-up, then rounds in turn
    assert out["ours"]["decode_tok_s"] == 90  # median of 90, 60, 100
    assert out["ours"]["decode_vs_builder"] == pytest.approx(1.0)  # median of 0.9, 1.2, 1.0
    assert out["ours"]["prompt_vs_builder"] == pytest.approx(1.0)  # median of 1.0, 310/300, 1.0
    assert out[bench.BUILDER_ROW]["decode_vs_builder"] == 1.0


def test_markdown_shows_errors_and_blank_cells():
    result = {
        "machine": {"cpu": "cpu", "threads": 2, "slmops": "0"},
        "model": "m",
        "rounds": 5,
        "rows": [
            {"row": "float", "perplexity": 10.0, "change_pct": 0.0},
            {"row": "ours", "perplexity": 11.0, "change_pct": 10.0, "export_peak_x_float": 0.5},
            {"row": bench.BUILDER_ROW, "error": "no builder"},
        ],
    }
    text = bench.markdown(result)
    assert "| float | 10.000 | +0.00% |  |  |  |  |  |  |\n" in text
    assert "| ours | 11.000 | +10.00% |  |  |  |  |  | 0.50x |\n" in text
    assert f"| {bench.BUILDER_ROW} | unavailable: no builder |" in text
    assert "m; slmops 0, cpu, 2 threads, 5 interleaved rounds." in text
