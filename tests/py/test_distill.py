"""The distillation workflow on the reference teacher and student: stage 1's records against
the teacher's own distribution, stage 2's first loss against an eager float64 computation
from the full logits, accumulation / resume / two processes against one uninterrupted
single-process run, the CLI, and the errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import slmops
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from slmops._training import step_examples
from slmops.cli import main as cli_main
from slmops.distill import GenerationOptions, TrainingOptions, generate_teacher_data, train_student
from slmops.distill.data import decode_topk, load_examples
from slmops.zoo.corpus import kjv_split

TEXT = kjv_split("train")[:60000]
SMALL = {"batch_size": 4, "seq_len": 32, "lr": 1e-3, "warmup_steps": 0, "min_lr_ratio": 1.0}


@pytest.fixture(scope="module")
def teacher():
    return slmops.zoo.load("kjv-teacher")


@pytest.fixture(scope="module")
def student():
    return slmops.zoo.load("kjv-student")


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    lines = [
        {"prompt": "And God said"},
        {"prompt": "In the beginning"},
        {"messages": [{"role": "user", "content": "Who made the light?"}]},
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def fresh(pair):
    """An untouched copy of a zoo model (training changes the model it is given)."""
    return slmops.zoo.load(Path(pair[0].name_or_path))


def weights(out_dir: Path) -> dict:
    return load_file(str(out_dir / "model" / "model.safetensors"))


def test_stage1_records_hold_the_teachers_answers_and_distribution(teacher, prompts_file, tmp_path):
    model, tok = teacher
    out = tmp_path / "records.jsonl"
    opts = GenerationOptions(max_new_tokens=6, temperature=0.0, batch_size=2, logprobs_k=4)
    summary = generate_teacher_data(model, tok, prompts_file, out, opts, progress=False)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["records"] == len(records) == 3
    assert records[2]["input"]["messages"][0]["content"] == "Who made the light?"
    for r in records:
        ids = r["prompt_ids"] + r["completion_ids"]
        with torch.no_grad():
            logprobs = F.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        first = len(r["prompt_ids"]) - 1
        top_ids, top_lp = decode_topk(r["topk"], len(r["completion_ids"]))
        for i, token in enumerate(r["completion_ids"]):
            ref_lp, ref_ids = logprobs[first + i].topk(4)
            assert top_ids[i, 0] == token  # greedy: the answer is the teacher's most likely id
            np.testing.assert_array_equal(top_ids[i], ref_ids.numpy())
            np.testing.assert_allclose(top_lp[i], ref_lp.numpy(), atol=2e-2)  # stored as float16
        assert r["completion"] == tok.decode(r["completion_ids"], skip_special_tokens=True)


def eager_first_loss(student, teacher, examples, opts: TrainingOptions) -> float:
    """The first step's loss from full float64 logits, written from the definitions."""
    batch = step_examples(examples, opts.batch_size, opts.seed, 0)
    total, count = 0.0, 0
    T = opts.temperature
    for e in batch:
        x = torch.from_numpy(e.ids[:-1]).unsqueeze(0)
        y = torch.from_numpy(e.labels)
        with torch.no_grad():
            zs = student(x).logits[0].double()
            zt = teacher(x).logits[0].double()
        lq, lp = F.log_softmax(zs / T, -1), F.log_softmax(zt / T, -1)
        soft = (lp.exp() * (lp - lq)).sum(-1) * T * T
        ce = -F.log_softmax(zs, -1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
        rows = (1 - opts.hard_weight) * soft + opts.hard_weight * ce
        keep = y != -100
        total += float(rows[keep].sum())
        count += int(keep.sum())
    return total / count


@pytest.mark.parametrize("hard_weight", [0.0, 0.3, 1.0])
def test_first_step_loss_matches_eager_full_logits(teacher, student, tmp_path, hard_weight):
    s_model, tok = fresh(student)
    opts = TrainingOptions(steps=1, temperature=2.0, hard_weight=hard_weight, **SMALL)
    examples = load_examples(TEXT, tok, opts.seq_len)
    expected = eager_first_loss(s_model, teacher[0], examples, opts)
    _, summary = train_student(s_model, tok, examples, tmp_path, opts, teacher=teacher[0], progress=False)
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["loss"] == pytest.approx(expected, rel=1e-4)
    assert summary["final_loss"] == pytest.approx(expected, rel=1e-4)


def test_accumulation_and_resume_reproduce_one_uninterrupted_run(teacher, student, tmp_path):
    _, tok = student
    base = TrainingOptions(steps=4, temperature=2.0, hard_weight=0.2, save_every=2, **SMALL)
    examples = load_examples(TEXT, tok, base.seq_len)
    train_student(fresh(student)[0], tok, examples, tmp_path / "a", base, teacher=teacher[0], progress=False)
    micro = TrainingOptions(**{**base.__dict__, "micro_batch_size": 1})
    train_student(fresh(student)[0], tok, examples, tmp_path / "b", micro, teacher=teacher[0], progress=False)
    short = TrainingOptions(**{**base.__dict__, "steps": 2})
    train_student(fresh(student)[0], tok, examples, tmp_path / "c", short, teacher=teacher[0], progress=False)
    _, summary = train_student(
        fresh(student)[0],
        tok,
        examples,
        tmp_path / "c",
        base,
        teacher=teacher[0],
        resume=True,
        progress=False,
    )
    assert summary["resumed_from_step"] == 2
    a = weights(tmp_path / "a")
    for other in ("b", "c"):
        for name, w in weights(tmp_path / other).items():
            torch.testing.assert_close(w, a[name], rtol=1e-4, atol=1e-5, msg=f"{other}: {name}")
    log_a = (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()
    log_c = (tmp_path / "c" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["loss"] for x in log_c] == pytest.approx(
        [json.loads(x)["loss"] for x in log_a], rel=1e-5
    )
    assert len(list((tmp_path / "a" / "checkpoints").iterdir())) == 2  # keep_checkpoints


def test_a_pruned_student_keeps_its_zeros(teacher, student, tmp_path):
    """keep_sparsity: one step equals the unmasked step with the pruned weights zeroed
    again; after more steps the zeros are still exactly those the pruning made."""
    _, tok = student
    examples = load_examples(TEXT, tok, SMALL["seq_len"])

    def pruned():
        m, _ = fresh(student)
        slmops.prune_model(m, "magnitude", sparsity=0.5, progress=False)
        return m

    masks = {n: mod.weight != 0 for n, mod in pruned().named_modules() if isinstance(mod, torch.nn.Linear)}
    masks = {n: m for n, m in masks.items() if (~m).float().mean() > 0.4}
    assert len(masks) >= 8  # the decoder layers' linears
    runs = {}
    for keep, steps in ((True, 1), (False, 1), (True, 3)):
        opts = TrainingOptions(steps=steps, keep_sparsity=keep, **SMALL)
        out = tmp_path / f"{keep}-{steps}"
        _, summary = train_student(pruned(), tok, examples, out, opts, teacher=teacher[0], progress=False)
        assert summary["sparse_linears_kept"] == (len(masks) if keep else 0)
        runs[keep, steps] = weights(out)
    for name, mask in masks.items():
        key = name + ".weight"
        torch.testing.assert_close(runs[True, 1][key], runs[False, 1][key] * mask)
        assert (runs[False, 1][key][~mask] != 0).all()  # unmasked, the step fills them
        assert torch.equal(runs[True, 3][key] != 0, mask)


def test_resume_refuses_changed_options(teacher, student, tmp_path):
    _, tok = student
    opts = TrainingOptions(steps=1, save_every=1, **SMALL)
    examples = load_examples(TEXT, tok, opts.seq_len)
    train_student(fresh(student)[0], tok, examples, tmp_path, opts, teacher=teacher[0], progress=False)
    changed = TrainingOptions(**{**opts.__dict__, "steps": 2, "temperature": 3.0})
    with pytest.raises(ValueError, match="temperature"):
        train_student(fresh(student)[0], tok, examples, tmp_path, changed, teacher=teacher[0], resume=True)


def test_two_processes_agree_with_one(tmp_path):
    data = tmp_path / "train.txt"
    data.write_text(TEXT)
    args = [
        "distill",
        "--teacher",
        "kjv-teacher",
        "--student",
        "kjv-student",
        "--data",
        str(data),
        "--steps",
        "2",
    ]
    args += ["--batch-size", "4", "--seq-len", "32", "--temperature", "2", "--hard-weight", "0.2", "--quiet"]
    assert cli_main([*args, "-o", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "slmops.cli", *args, "-o", str(tmp_path / "two")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    for name, w in one.items():
        torch.testing.assert_close(two[name], w, rtol=1e-4, atol=1e-5, msg=name)
    summary = json.loads((tmp_path / "two" / "distill_summary.json").read_text())
    assert summary["training"]["processes"] == 2


def test_cli_offline_from_prompts(prompts_file, tmp_path, capsys):
    code = cli_main(
        ["distill", "--teacher", "kjv-teacher", "--student", "kjv-student", "--prompts", str(prompts_file),
         "--logprobs-k", "4", "--offline", "--max-new-tokens", "12", "--steps", "2", "--batch-size", "2",
         "--seq-len", "32", "-o", str(tmp_path), "--quiet"]
    )  # fmt: skip
    assert code == 0
    assert "distilled 2 steps" in capsys.readouterr().out
    summary = json.loads((tmp_path / "distill_summary.json").read_text())
    assert summary["generation"]["records"] == 3
    assert summary["training"]["teacher"].startswith("top-k")
    model, _ = slmops.zoo.load(tmp_path / "model")
    assert model.config.num_hidden_layers == 2  # the student's architecture


def test_errors(teacher, student, prompts_file, tmp_path, tiny_llama):
    with pytest.raises(ValueError, match="exactly one of"):
        slmops.distill_model(teacher, student, tmp_path, prompts=prompts_file, data=TEXT)
    with pytest.raises(ValueError, match="tokenizers differ"):
        slmops.distill_model(teacher, tiny_llama, tmp_path, data=TEXT)
    with pytest.raises(ValueError, match="offline"):
        slmops.distill_model(None, student, tmp_path, data=TEXT)
    with pytest.raises(ValueError, match="unknown training options"):
        slmops.distill_model(teacher, student, tmp_path, data=TEXT, training={"stepz": 3})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        slmops.distill_model(teacher, student, tmp_path, prompts=bad)
    text_records = tmp_path / "text.jsonl"
    text_records.write_text(json.dumps({"text": TEXT[:3000]}) + "\n")
    with pytest.raises(ValueError, match="top-k"):
        slmops.distill_model(None, student, tmp_path, data=text_records, offline=True)
    assert (
        cli_main(
            ["distill", "--teacher", "kjv-teacher", "--student", "kjv-student", "--data", "x", "-o", "o"]
        )
        == 1
    )
