"""Fine-tuning: LoRALinear against its formula and autograd on the dequantized weight,
adapters against peft (both directions), target selection errors, several adapters,
merging and re-quantizing, the data forms, and finetune end to end (evaluation loss falls,
QLoRA's frozen base size, resume, two processes, the CLI and the workflow pass)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import slmops
import torch
from safetensors.torch import load_file
from slmops.cli import main as cli_main
from slmops.finetune import (
    LoRAOptions,
    QLoRAOptions,
    add_lora,
    count_parameters,
    find_targets,
    load_adapter,
    load_finetune_examples,
    lora_layers,
    merge_lora,
    quantize_base,
    save_adapter,
    set_adapter,
)
from slmops.nn import LoRALinear, QuantLinear
from slmops.zoo.corpus import kjv_split, modern_style

# a style the reference models never saw: the KJV in modern English
TEXT = modern_style(kjv_split("train")[:60000])
EVAL_TEXT = modern_style(kjv_split("test")[:8000])
SMALL = {"batch_size": 4, "seq_len": 32}


@pytest.fixture(scope="module")
def student():
    return slmops.zoo.load("kjv-student")


def fresh():
    return slmops.zoo.load("kjv-student")[0]


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


IDS = torch.arange(5, 37).reshape(2, 16)


# ---- LoRALinear -------------------------------------------------------------------------


@pytest.mark.parametrize("rslora", [False, True])
def test_lora_linear_is_base_plus_scaled_low_rank_product(rslora):
    torch.manual_seed(0)
    base = torch.nn.Linear(24, 10)
    layer = LoRALinear(base, r=4, alpha=8.0, use_rslora=rslora, init=False)
    x = torch.randn(3, 5, 24)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    scaling = 8.0 / (4**0.5 if rslora else 4)
    ref = x @ base.weight.T + base.bias + scaling * (x @ a.T @ b.T)
    torch.testing.assert_close(layer(x), ref)
    fresh_layer = LoRALinear(base, r=4)  # peft's init: B = 0, the base unchanged
    torch.testing.assert_close(fresh_layer(x), base(x))
    layer(x).sum().backward()
    assert base.weight.grad is None and base.bias.grad is None and a.grad is not None and b.grad is not None


@pytest.mark.parametrize("fmt", ["nf4", "int4"])
def test_lora_on_a_quantized_base_matches_autograd_on_the_dequantized_weight(fmt):
    torch.manual_seed(1)
    q = QuantLinear.from_linear(torch.nn.Linear(64, 48), fmt)
    layer = LoRALinear(q, r=8, alpha=16, init=False)
    w = q.qweight.dequantize("float32")
    x = torch.randn(70, 64, requires_grad=True)  # 70 rows: the dequantize-then-GEMM forward
    y = layer(x)
    x_ref = x.detach().clone().requires_grad_()
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    y_ref = x_ref @ w.T + q.bias + 2.0 * (x_ref @ a.detach().T @ b.detach().T)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-4)
    merged = layer.merged()
    torch.testing.assert_close(merged(x.detach()), y.detach(), rtol=1e-4, atol=1e-4)


def test_lora_linear_errors():
    with pytest.raises(TypeError, match="wraps an nn.Linear"):
        LoRALinear(torch.nn.Conv1d(2, 2, 1))
    layer = LoRALinear(torch.nn.Linear(4, 4), r=2)
    with pytest.raises(ValueError, match="already has an adapter"):
        layer.add_adapter("default")
    with pytest.raises(KeyError, match="no adapter named 'b'"):
        layer.set_adapter("b")
    with pytest.raises(ValueError, match="rank r"):
        layer.add_adapter("b", r=0)


# ---- targets, adapters, peft --------------------------------------------------------------


def test_targets_name_what_exists(student):
    model = student[0]
    names = find_targets(model, "all-linear")
    assert len(names) == 7 * model.config.num_hidden_layers and "lm_head" not in names
    assert find_targets(model, ["q_proj", "v_proj"]) == [n for n in names if n.endswith(("q_proj", "v_proj"))]
    assert find_targets(model, r".*\.0\.mlp\..*") == [n for n in names if ".0.mlp." in n]
    listed = r"'qkv_proj'.*match no linear layer.*k_proj, lm_head, o_proj, q_proj"
    with pytest.raises(ValueError, match=listed):
        find_targets(model, ["qkv_proj", "o_proj"])  # the Phi-3 trap: fused names on a Llama
    with pytest.raises(ValueError, match="pattern 'attn' matches no linear layer"):
        find_targets(model, "attn")


def test_adapter_loads_in_peft_with_the_same_outputs(student, tmp_path):
    from peft import PeftModel

    model = fresh()
    torch.manual_seed(2)
    add_lora(model, LoRAOptions(r=4, alpha=8, init=False, target_modules=["q_proj", "v_proj", "down_proj"]))
    ours = logits(model, IDS)
    save_adapter(model, tmp_path / "a")
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and sorted(config["target_modules"]) == [
        "down_proj",
        "q_proj",
        "v_proj",
    ]
    peft_model = PeftModel.from_pretrained(fresh(), str(tmp_path / "a")).eval()
    torch.testing.assert_close(logits(peft_model, IDS), ours, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(ours, logits(fresh(), IDS), atol=1e-3)  # the adapter does change the model


def test_peft_adapter_loads_here_with_the_same_outputs(tmp_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    config = LoraConfig(
        r=8, lora_alpha=32, use_rslora=True, init_lora_weights=False, target_modules="all-linear"
    )
    peft_model = get_peft_model(fresh(), config).eval()
    peft_model.save_pretrained(str(tmp_path / "p"))
    model = fresh()
    paths = load_adapter(model, tmp_path / "p", "mine")
    assert len(paths) == 7 * model.config.num_hidden_layers
    torch.testing.assert_close(logits(model, IDS), logits(peft_model, IDS), rtol=1e-4, atol=1e-4)


def test_several_adapters_switch_at_run_time_and_merge(tmp_path):
    torch.manual_seed(4)
    one, two = fresh(), fresh()
    add_lora(one, LoRAOptions(r=2, init=False, target_modules=["o_proj"]))
    add_lora(two, LoRAOptions(r=6, init=False, target_modules=["up_proj", "k_proj"]))
    save_adapter(one, tmp_path / "one")
    save_adapter(two, tmp_path / "two")
    model = fresh()
    load_adapter(model, tmp_path / "one", "one")
    load_adapter(model, tmp_path / "two", "two")
    base = logits(fresh(), IDS)
    for name, ref in (("one", one), ("two", two)):
        set_adapter(model, name)
        torch.testing.assert_close(logits(model, IDS), logits(ref, IDS), rtol=1e-5, atol=1e-5)
    set_adapter(model, None)
    torch.testing.assert_close(logits(model, IDS), base, rtol=1e-5, atol=1e-5)
    with pytest.raises(KeyError, match="no adapter named 'three'"):
        set_adapter(model, "three")
    set_adapter(model, "two")
    merged = merge_lora(model)
    assert not lora_layers(merged) and isinstance(merged.model.layers[0].mlp.up_proj, torch.nn.Linear)
    torch.testing.assert_close(logits(merged, IDS), logits(two, IDS), rtol=1e-4, atol=1e-4)


def test_load_adapter_errors(tmp_path):
    model = fresh()
    add_lora(model, LoRAOptions(r=2, target_modules=["o_proj"]))
    save_adapter(model, tmp_path / "a")
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ValueError, match="use_dora"):
        load_adapter(fresh(), tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="not a peft adapter folder"):
        load_adapter(fresh(), tmp_path)
    from transformers import LlamaConfig, LlamaForCausalLM

    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(config))
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2)  # fmt: skip
    other = LlamaForCausalLM(cfg)
    with pytest.raises(ValueError, match="does not have as linear layers"):
        load_adapter(other, tmp_path / "a")


def test_qlora_base_merge_and_requantize():
    model = fresh()
    float_bytes = sum(p.numel() * 4 for p in model.parameters())
    info = quantize_base(model, QLoRAOptions(format="nf4"))
    assert info["quantized_layers"] == 7 * model.config.num_hidden_layers
    assert isinstance(model.model.layers[0].self_attn.q_proj, QuantLinear)
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16
    torch.manual_seed(5)
    add_lora(model, LoRAOptions(r=4, init=False))
    counts = count_parameters(model)
    # nf4 linears and a bf16 embedding; the embedding is 64% of this student's weights, so the
    # ratio is higher than on the teacher (bench finetune)
    quantized = sum(m.qweight.nbytes for m in model.modules() if isinstance(m, QuantLinear))
    embedding = model.get_input_embeddings().weight.numel() * 2
    assert embedding + quantized <= counts.frozen_bytes < embedding + quantized + 0.01 * float_bytes
    adapted = logits(model, IDS)
    merged = merge_lora(model)
    assert isinstance(merged.get_input_embeddings(), torch.nn.Embedding)
    assert merged.lm_head.weight is merged.get_input_embeddings().weight  # tied again
    torch.testing.assert_close(logits(merged, IDS), adapted, rtol=1e-3, atol=1e-3)
    slmops.quantize_model(merged, format="int8", progress=False)
    requantized = logits(merged, IDS)
    assert (requantized - adapted).abs().mean() < 0.05 * adapted.abs().mean()


# ---- data ----------------------------------------------------------------------------------


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_data_forms_and_completion_masks(student, tmp_path):
    _, tok = student
    tok = type(tok).from_pretrained(slmops.zoo.path("kjv-student"))
    tok.chat_template = CHAT_TEMPLATE
    rows = [
        {"messages": [{"role": "user", "content": "who made the light"},
                      {"role": "assistant", "content": "God made the light"}]},
        {"prompt": "In the beginning", "completion": " God created the heaven"},
    ]  # fmt: skip
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    full = load_finetune_examples(path, tok, 64)
    masked = load_finetune_examples(path, tok, 64, completion_only=True)
    assert [(e.labels != -100).all() for e in full] == [True, True]
    completion = tok(" God created the heaven", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert masked[1].labels[masked[1].labels != -100].tolist() == completion
    assistant = tok("God made the light<|end|>", add_special_tokens=False)["input_ids"]
    assert masked[0].labels[masked[0].labels != -100].tolist() == assistant
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"q": "a" * 40, "a": "b" * 40}) + "\n")
    templated = load_finetune_examples(qa, tok, 8, text_template="Q: {q} A: {a}")
    assert tok.decode(templated[0].ids).startswith("Q: a")
    with pytest.raises(ValueError, match="needs field 'answer'"):
        load_finetune_examples(qa, tok, 8, text_template="{q} {answer}")
    with pytest.raises(ValueError, match="completion_only needs"):
        load_finetune_examples(TEXT, tok, 8, completion_only=True)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1: the last message must be the assistant's"):
        load_finetune_examples(bad, tok, 8)


# ---- finetune ------------------------------------------------------------------------------


def _adapter(folder):
    return load_file(str(folder / "adapter" / "adapter_model.safetensors"))


def test_finetune_lowers_the_evaluation_loss_and_loads_in_peft(student, tmp_path):
    from peft import PeftModel

    training = {"steps": 25, "lr": 5e-3, "warmup_steps": 2, "batch_size": 8, "seq_len": 64}
    result = slmops.finetune_model(
        fresh(), student[1], TEXT, out_dir=tmp_path, eval_data=EVAL_TEXT, training=training, progress=False
    )
    s = result.summary
    assert s["eval_loss_after"] < s["eval_loss_before"] - 0.05
    assert s["trainable_params"] == sum(p.numel() for p in result.model.parameters() if p.requires_grad)
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 26))
    peft_model = PeftModel.from_pretrained(fresh(), str(result.adapter_dir)).eval()
    torch.testing.assert_close(logits(peft_model, IDS), logits(result.model, IDS), rtol=1e-4, atol=1e-4)


def test_qlora_trains_on_a_small_frozen_base(student, tmp_path):
    training = {"steps": 6, "lr": 3e-3, "warmup_steps": 1, "gradient_checkpointing": True, **SMALL}
    result = slmops.finetune_model(
        fresh(), student[1], TEXT, out_dir=tmp_path, method="qlora", eval_data=EVAL_TEXT,
        training=training, lora={"r": 4}, progress=False,
    )  # fmt: skip
    s = result.summary
    assert s["frozen_base_ratio"] < 0.4 and s["quantization"]["format"] == "nf4"
    assert s["eval_loss_after"] < s["eval_loss_before"]


def test_gradient_checkpointing_and_accumulation_keep_the_gradient(student, tmp_path, monkeypatch):
    # Compares the gradient each optimizer step receives. Not the adapters afterwards: AdamW's
    # update g / (sqrt(v) + eps) is ill-conditioned where |g| is near eps (1e-8), and after a
    # first step with lora_B = 0 many lora_A gradients are ~4e-9, so float32 summation order
    # alone (micro-batches, another attention kernel) moves those weights by 2e-3 of the lr.
    base = {"steps": 2, "lr": 1e-2, "eval_fraction": 0.0, **SMALL}
    lora = {"dropout": 0.0}
    grads: dict[str, list[list[torch.Tensor]]] = {}
    adamw_step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        grads[name].append([p.grad.clone() for g in self.param_groups for p in g["params"]])
        return adamw_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    for name, extra in (("a", {}), ("b", {"gradient_checkpointing": True, "micro_batch_size": 1})):
        grads[name] = []
        slmops.finetune_model(fresh(), student[1], TEXT, out_dir=tmp_path / name, training={**base, **extra},
                              lora=lora, progress=False)  # fmt: skip
    assert len(grads["a"]) == len(grads["b"]) == 2
    for step_a, step_b in zip(grads["a"], grads["b"], strict=True):
        assert any(g.abs().max() > 0 for g in step_a)
        for ga, gb in zip(step_a, step_b, strict=True):
            assert float((gb - ga).norm()) <= 1e-5 * float(ga.norm()) + 1e-12
    a, b = _adapter(tmp_path / "a"), _adapter(tmp_path / "b")
    for key, w in a.items():  # the weights follow, up to the eps-regime elements above
        assert float((b[key] - w).norm()) <= 1e-3 * float(w.norm()), key


def test_resume_reproduces_one_uninterrupted_run(student, tmp_path):
    opts = {"steps": 4, "save_every": 2, "eval_fraction": 0.0, "lr": 1e-2, **SMALL}
    kw = dict(lora={"dropout": 0.0}, progress=False)
    slmops.finetune_model(fresh(), student[1], TEXT, out_dir=tmp_path / "a", training=opts, **kw)
    slmops.finetune_model(
        fresh(), student[1], TEXT, out_dir=tmp_path / "b", training={**opts, "steps": 2}, **kw
    )
    summary = slmops.finetune_model(
        fresh(), student[1], TEXT, out_dir=tmp_path / "b", training=opts, resume=True, **kw
    ).summary
    assert summary["resumed_from_step"] == 2
    a, b = _adapter(tmp_path / "a"), _adapter(tmp_path / "b")
    for key, w in a.items():
        torch.testing.assert_close(b[key], w, rtol=1e-4, atol=1e-6, msg=key)
    with pytest.raises(ValueError, match="lr"):
        slmops.finetune_model(fresh(), student[1], TEXT, out_dir=tmp_path / "b", training={**opts, "lr": 1.0},
                              resume=True, **kw)  # fmt: skip


def test_finetune_errors(student, tmp_path):
    with pytest.raises(ValueError, match="method must be one of"):
        slmops.finetune_model(fresh(), student[1], TEXT, out_dir=tmp_path, method="dora")
    with pytest.raises(ValueError, match="unknown training options"):
        slmops.finetune_model(fresh(), student[1], TEXT, out_dir=tmp_path, training={"epochs": 1})
    with pytest.raises(ValueError, match="match no linear layer"):
        slmops.finetune_model(
            fresh(), student[1], TEXT, out_dir=tmp_path, lora={"target_modules": ["qkv_proj"]}
        )
    with pytest.raises(ValueError, match="a model object needs its tokenizer"):
        slmops.finetune_model(fresh(), None, TEXT, out_dir=tmp_path)


def test_cli_two_processes_agree_with_one(tmp_path):
    data = tmp_path / "train.txt"
    data.write_text(TEXT[:20000])
    args = ["finetune", "--model", "kjv-student", "--data", str(data), "--steps", "2", "--batch-size", "4",
            "--seq-len", "32", "--lora-dropout", "0", "--eval-fraction", "0", "--lr", "1e-2",
            "--quiet"]  # fmt: skip
    assert cli_main([*args, "-o", str(tmp_path / "one"), "--merge"]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "slmops.cli", *args, "-o", str(tmp_path / "two")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    one, two = _adapter(tmp_path / "one"), _adapter(tmp_path / "two")
    for key, w in one.items():
        torch.testing.assert_close(two[key], w, rtol=1e-3, atol=1e-5)  # summation order only
    assert json.loads((tmp_path / "two" / "finetune_summary.json").read_text())["processes"] == 2
    merged, _ = slmops.zoo.load(tmp_path / "one" / "merged")
    assert isinstance(merged.model.layers[0].self_attn.q_proj, torch.nn.Linear)
