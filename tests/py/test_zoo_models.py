"""The shipped reference models, the zoo API and the training recipe."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import slmops
import torch
from slmops.zoo import kjv_chapters, kjv_eval_slice, kjv_split, train_tokenizer
from slmops.zoo.train import ModelRecipe, train_model

needs_bible = pytest.mark.skipif(shutil.which("bible") is None, reason="Debian's bible-kjv is not installed")


def test_the_zoo_ships_a_teacher_and_a_quarter_size_student():
    assert {"kjv-teacher", "kjv-student"} <= set(slmops.zoo.list())
    sizes = {}
    for name in ("kjv-teacher", "kjv-student"):
        folder = slmops.zoo.path(name)
        cfg = json.loads((folder / "config.json").read_text())
        assert cfg["architectures"] == ["LlamaForCausalLM"]
        assert cfg["hidden_size"] % 256 == 0 and cfg["intermediate_size"] % 256 == 0
        for f in ("generation_config.json", "tokenizer_config.json", "README.md", "training_log.jsonl"):
            assert (folder / f).is_file(), f
        h, i, n = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
        kv = cfg["num_key_value_heads"] * h // cfg["num_attention_heads"]
        sizes[name] = n * (2 * h * h + 2 * h * kv + 3 * h * i)  # non-embedding linear weights
    assert 0.2 < sizes["kjv-student"] / sizes["kjv-teacher"] < 0.3
    total = sum(f.stat().st_size for f in (slmops.zoo.registry.MODELS_DIR).rglob("*") if f.is_file())
    assert total < 40e6


@pytest.mark.parametrize("name", ["kjv-teacher", "kjv-student"])
def test_shipped_model_matches_its_card_and_beats_chance(name):
    model, tok = slmops.zoo.load(name)
    assert len(tok) == model.config.vocab_size == 8192
    assert next(model.parameters()).dtype == torch.float32
    log = [
        json.loads(line) for line in (slmops.zoo.path(name) / "training_log.jsonl").read_text().splitlines()
    ]
    best_val = min(r["val_loss"] for r in log if "val_loss" in r)
    card = (slmops.zoo.path(name) / "README.md").read_text()
    assert "validation" in card and "Sample" in card
    # Held-out text: a trained model is far better than the uniform 8192-way guess and close
    # to its own validation loss (a corrupted or untrained checkpoint is neither).
    result = slmops.evaluate_model(model, tok, data=slmops.zoo.eval_text(), seq_len=512, stride=256)
    ppl = result["perplexity"]
    assert ppl["tokens"] > 8000
    assert math.log(ppl["perplexity"]) < best_val + 0.5
    assert ppl["perplexity"] < 8192 / 50


def test_teacher_beats_student_on_held_out_text():
    text = slmops.zoo.eval_text()
    ppl = {}
    for name in ("kjv-teacher", "kjv-student"):
        model, tok = slmops.zoo.load(name)
        ppl[name] = slmops.evaluate_model(model, tok, data=text, seq_len=512)["perplexity"]["perplexity"]
    assert ppl["kjv-teacher"] < ppl["kjv-student"]


@needs_bible
def test_shipped_eval_slice_is_the_held_out_test_chapters():
    assert slmops.zoo.eval_text() == kjv_eval_slice()
    test_chapters = set(kjv_split("test").split("\n\n"))
    slice_chapters = slmops.zoo.eval_text().rstrip("\n").split("\n\n")
    assert len(slice_chapters) == 12 and set(slice_chapters) <= test_chapters
    assert slice_chapters[0] == "\n".join(kjv_chapters()[0][1])


def test_zoo_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="no reference model named 'kjv-giant'.*kjv-teacher"):
        slmops.zoo.path("kjv-giant")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        slmops.zoo.load(tmp_path / "absent")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="lacks model.safetensors, tokenizer.json"):
        slmops.zoo.load(tmp_path)


def _tiny_folder(tmp_path: Path, vocab_size: int, tokenizer_vocab: int) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
    )  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    text = "In the beginning God created the heaven and the earth, and the earth was without form."
    train_tokenizer([text] * 50, vocab_size=tokenizer_vocab).save_pretrained(tmp_path)
    return tmp_path


def test_tokenizer_that_does_not_fit_the_model_is_an_error(tmp_path):
    folder = _tiny_folder(tmp_path, vocab_size=270, tokenizer_vocab=300)
    with pytest.raises(ValueError, match="tokenizer has 3.. tokens but the model's vocabulary is 270"):
        slmops.zoo.load(folder)


def test_training_recipe_writes_a_loadable_folder_with_log_and_card(tmp_path):
    text = "And God said, Let there be light: and there was light. And God saw the light, that it was good.\n"
    tok = train_tokenizer([text] * 30, vocab_size=300)
    stream = np.asarray(tok(text * 60, add_special_tokens=False)["input_ids"], dtype=np.int64)
    recipe = ModelRecipe(256, 256, 1, 4, 2, steps=4, batch_size=2, warmup_steps=1, eval_every=2, lr=1e-2)
    facts = train_model("tiny", recipe, tok, stream, stream, tmp_path / "tiny")
    model, tok2 = slmops.zoo.load(tmp_path / "tiny")
    assert tok2.get_vocab() == tok.get_vocab()
    log = [json.loads(line) for line in (tmp_path / "tiny" / "training_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert [r["step"] for r in log if "val_loss" in r] == [2, 4]
    assert log[-1]["loss"] < log[0]["loss"]  # a repeated sentence is learned within 4 steps
    # The card states the validation loss of the weights as shipped (float16, evaluated in fp32).
    assert f"loss {facts['validation_loss']}" in (tmp_path / "tiny" / "README.md").read_text()
    assert json.loads((tmp_path / "tiny" / "config.json").read_text())["dtype"] == "float16"
