"""The options of distillation and fine-tuning: one model per algorithm, a shared training
base, the workflow passes and CLI flags derived from them, checkpoints that record them."""

from __future__ import annotations

import argparse
import inspect
import json
import math

import pytest
import torch
from pydantic import ValidationError
from slmops._options import add_flags, given
from slmops._training import resume_checkpoint, save_checkpoint
from slmops.distill import GenerationOptions, TrainingOptions
from slmops.distill import generate as distill_generate
from slmops.distill import train as distill_train
from slmops.finetune import FinetuneOptions, LoRAOptions, QLoRAOptions
from slmops.finetune import lora as finetune_lora
from slmops.finetune import qlora as finetune_qlora
from slmops.finetune import train as finetune_train
from slmops.finetune.options import MethodOptions
from slmops.training_options import SCHEDULES, TrainingOptionsBase, options_from, scheduled_lr
from slmops.workflow.passes.distill import DistillOptions
from slmops.workflow.passes.finetune import QLORA_KEYS, FinetunePass, FinetunePassOptions

LAYER_MODELS = [TrainingOptions, GenerationOptions, FinetuneOptions, LoRAOptions, QLoRAOptions, MethodOptions]


def _default(model, name):
    return model.model_fields[name].get_default(call_default_factory=True)


# -- written once ----------------------------------------------------------------------------


def test_the_classes_keep_their_import_locations():
    assert distill_train.TrainingOptions is TrainingOptions
    assert distill_generate.GenerationOptions is GenerationOptions
    assert finetune_train.FinetuneOptions is FinetuneOptions
    assert finetune_lora.LoRAOptions is LoRAOptions
    assert finetune_qlora.QLoRAOptions is QLoRAOptions


@pytest.mark.parametrize("model", [TrainingOptions, FinetuneOptions])
def test_training_options_take_the_base_fields_changing_only_defaults(model):
    assert issubclass(model, TrainingOptionsBase)
    for name, base in TrainingOptionsBase.model_fields.items():
        field = model.model_fields[name]
        assert field.description == base.description and field.description, name
        assert field.metadata == base.metadata, name  # the same constraint
        assert field.annotation == base.annotation, name
    # the loop's options where the two algorithms differ, each stated by its algorithm
    assert (TrainingOptions().steps, FinetuneOptions().steps) == (200, 100)
    assert (TrainingOptions().min_lr_ratio, FinetuneOptions().min_lr_ratio) == (0.1, 0.0)


def test_every_field_is_described():
    for model in LAYER_MODELS:
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name}"


def test_the_distill_pass_has_the_training_options_with_their_defaults():
    for name, field in TrainingOptions.model_fields.items():
        mine = DistillOptions.model_fields[name]
        assert _default(DistillOptions, name) == _default(TrainingOptions, name), name
        assert mine.description == field.description, name
    assert set(DistillOptions.model_fields) == set(TrainingOptions.model_fields) | {"student", "data"}
    options = DistillOptions(student="kjv-student")
    assert options.training() == TrainingOptions()
    assert DistillOptions(student="s", temperature=2.0, steps=3).training() == TrainingOptions(
        temperature=2.0, steps=3
    )


def test_the_finetune_pass_has_the_options_of_its_models_with_their_defaults():
    for model in (MethodOptions, FinetuneOptions, LoRAOptions):
        for name, field in model.model_fields.items():
            assert _default(FinetunePassOptions, name) == _default(model, name), name
            assert FinetunePassOptions.model_fields[name].description == field.description, name
    for name, key in QLORA_KEYS.items():
        assert _default(FinetunePassOptions, key) == _default(QLoRAOptions, name), key
        assert (
            FinetunePassOptions.model_fields[key].description == QLoRAOptions.model_fields[name].description
        )
    options = FinetunePassOptions()
    assert (options.training(), options.lora(), options.qlora()) == (FinetuneOptions(), LoRAOptions(), None)
    assert FinetunePassOptions(method="qlora").qlora() == QLoRAOptions()
    picked = FinetunePassOptions(
        method="qlora", quant_format="int4", double_quant=True, r=4, schedule="linear"
    )
    assert picked.qlora() == QLoRAOptions(format="int4", double_quant=True)
    assert picked.lora() == LoRAOptions(r=4) and picked.training() == FinetuneOptions(schedule="linear")
    # the function's own default method is the model's
    assert inspect.signature(finetune_train.finetune).parameters["method"].default == MethodOptions().method


def test_the_finetune_cache_key_leaves_out_the_qlora_base_of_lora():
    lora = FinetunePass().normalize(FinetunePassOptions(quant_format="int4"))
    assert not set(QLORA_KEYS.values()) & set(lora)
    assert lora == FinetunePass().normalize(FinetunePassOptions())
    qlora = FinetunePass().normalize(FinetunePassOptions(method="qlora", quant_format="int4"))
    assert qlora["quant_format"] == "int4" and set(QLORA_KEYS.values()) <= set(qlora)


# -- constraints -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model, values, message",
    [
        (TrainingOptions, {"steps": 0}, "steps"),
        (FinetuneOptions, {"batch_size": 0}, "batch_size"),
        (TrainingOptions, {"micro_batch_size": -1}, "micro_batch_size"),
        (FinetuneOptions, {"seq_len": 0}, "seq_len"),
        (TrainingOptions, {"lr": 0.0}, "lr"),
        (FinetuneOptions, {"warmup_steps": -1}, "warmup_steps"),
        (TrainingOptions, {"min_lr_ratio": 1.5}, "min_lr_ratio"),
        (FinetuneOptions, {"weight_decay": -0.1}, "weight_decay"),
        (TrainingOptions, {"max_grad_norm": -1.0}, "max_grad_norm"),
        (FinetuneOptions, {"save_every": -1}, "save_every"),
        (TrainingOptions, {"keep_checkpoints": 0}, "keep_checkpoints"),
        (FinetuneOptions, {"schedule": "exponential"}, "schedule must be one of"),
        (FinetuneOptions, {"eval_fraction": 1.0}, "eval_fraction"),
        (FinetuneOptions, {"eval_every": -1}, "eval_every"),
        (TrainingOptions, {"divergence": "kl"}, "divergence must be one of"),
        (TrainingOptions, {"temperature": 0.0}, "temperature"),
        (TrainingOptions, {"temperature": math.inf}, "temperature"),
        (TrainingOptions, {"beta": 1.5}, "beta"),
        (TrainingOptions, {"hard_weight": -0.5}, "hard_weight"),
        (TrainingOptions, {"init": "random"}, "init must be one of"),
        (GenerationOptions, {"max_new_tokens": 0}, "max_new_tokens"),
        (GenerationOptions, {"batch_size": 0}, "batch_size"),
        (GenerationOptions, {"temperature": -1.0}, "temperature"),
        (GenerationOptions, {"top_p": 0.0}, "top_p"),
        (GenerationOptions, {"top_k": -1}, "top_k"),
        (GenerationOptions, {"logprobs_k": -1}, "logprobs_k"),
        (LoRAOptions, {"r": 0}, "r"),
        (LoRAOptions, {"alpha": 0.0}, "alpha must be > 0"),
        (LoRAOptions, {"dropout": 1.0}, "dropout"),
        (LoRAOptions, {"init": "zeros"}, "init must be one of"),
        (LoRAOptions, {"target_modules": []}, "non-empty list of module names"),
        (LoRAOptions, {"target_modules": ["q_proj", ""]}, "non-empty list of module names"),
        (LoRAOptions, {"target_modules": ""}, "'all-linear', a list of names or a regex"),
        (QLoRAOptions, {"format": "int8"}, "format must be one of"),
        (QLoRAOptions, {"frozen_dtype": "float8"}, "frozen_dtype must be one of"),
        (MethodOptions, {"method": "dora"}, "method must be one of"),
    ],
)
def test_constraints(model, values, message):
    with pytest.raises(ValueError, match=message):
        model(**values)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"steps": 0}, r"steps"),
        ({"divergence": "kl"}, "divergence must be one of"),
        ({"temperature": -1.0}, "temperature"),
        ({"stepz": 3}, "stepz"),
    ],
)
def test_the_distill_pass_checks_what_the_model_checks(values, message):
    with pytest.raises(ValidationError, match=message):
        DistillOptions(student="s", **values)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"quant_format": "int8"}, "quant_format must be one of"),
        ({"alpha": -1}, "alpha must be > 0"),
        ({"target_modules": []}, "non-empty list"),
        ({"eval_fraction": 1.0}, "eval_fraction"),
        ({"method": "dora"}, "method must be one of"),
    ],
)
def test_the_finetune_pass_checks_what_the_models_check(values, message):
    with pytest.raises(ValidationError, match=message):
        FinetunePassOptions(**values)


def test_options_are_frozen_and_refuse_unknown_keys():
    opts = TrainingOptions()
    with pytest.raises(ValidationError):
        opts.steps = 3
    with pytest.raises(ValidationError, match="stepz"):
        FinetuneOptions(stepz=3)
    assert LoRAOptions(target_modules=("q_proj", "v_proj")).target_modules == ["q_proj", "v_proj"]


def test_options_from():
    assert options_from(TrainingOptions, None, "training") == TrainingOptions()
    opts = TrainingOptions(steps=3)
    assert options_from(TrainingOptions, opts, "training") is opts
    assert options_from(TrainingOptions, {"steps": 3}, "training") == opts
    with pytest.raises(ValueError, match=r"unknown training options \['stepz'\]; known: \["):
        options_from(TrainingOptions, {"stepz": 3}, "training")
    with pytest.raises(TypeError, match="training must be a FinetuneOptions or a dict"):
        options_from(FinetuneOptions, TrainingOptions(), "training")


def test_lr_at_follows_the_schedule():
    distill = TrainingOptions(steps=20, warmup_steps=4)
    assert [distill.lr_at(s) for s in range(20)] == [
        scheduled_lr(s, 20, distill.lr, 4, distill.min_lr_ratio, "cosine") for s in range(20)
    ]
    for schedule in SCHEDULES:
        ft = FinetuneOptions(steps=10, schedule=schedule, min_lr_ratio=0.5)
        assert ft.lr_at(9) == scheduled_lr(9, 10, ft.lr, ft.warmup_steps, 0.5, schedule)
    assert FinetuneOptions(steps=10, warmup_steps=0, schedule="constant").lr_at(9) == FinetuneOptions().lr


# -- command-line flags ----------------------------------------------------------------------


@pytest.mark.parametrize("model", LAYER_MODELS)
def test_flags_derive_from_every_model(model):
    parser = argparse.ArgumentParser()
    names = add_flags(parser, model)
    assert names == list(model.model_fields)
    assert given(parser.parse_args([]), names) == {}  # defaults stay the model's


def test_flags_give_model_values():
    parser = argparse.ArgumentParser()
    names = add_flags(parser, FinetuneOptions)
    args = parser.parse_args(["--steps", "3", "--schedule", "linear", "--completion-only", "--lr", "0.01"])
    opts = FinetuneOptions(**given(args, names))
    assert opts == FinetuneOptions(steps=3, schedule="linear", completion_only=True, lr=0.01)
    with pytest.raises(SystemExit):
        parser.parse_args(["--schedule", "exponential"])


# -- checkpoints -----------------------------------------------------------------------------


def _checkpoint(tmp_path, options: dict):
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([param])
    save_checkpoint(tmp_path, 1, lambda folder: None, optimizer, options, keep=1)
    state = tmp_path / "checkpoints" / "step-000001" / "state.json"
    return optimizer, state


@pytest.mark.parametrize(
    "opts", [TrainingOptions(steps=3, temperature=2.0, init="scratch"), FinetuneOptions(schedule="linear")]
)
def test_options_round_trip_through_a_checkpoint(tmp_path, opts):
    optimizer, state = _checkpoint(tmp_path, opts.model_dump())
    recorded = json.loads(state.read_text())["options"]
    assert type(opts).model_validate(recorded) == opts
    assert type(opts)(**recorded) == opts
    assert resume_checkpoint(tmp_path, optimizer, opts.model_dump(), distill_train.RESUMABLE_CHANGES)[0] == 1


def test_resume_compares_the_options_and_reads_checkpoints_written_before(tmp_path):
    opts = TrainingOptions(steps=3)
    optimizer, state = _checkpoint(tmp_path, opts.model_dump())
    resumable = distill_train.RESUMABLE_CHANGES
    longer = TrainingOptions(steps=6).model_dump()
    assert resume_checkpoint(tmp_path, optimizer, longer, resumable)[0] == 1
    with pytest.raises(ValueError, match="temperature: 1.0 -> 2.0"):
        resume_checkpoint(
            tmp_path, optimizer, TrainingOptions(steps=3, temperature=2.0).model_dump(), resumable
        )
    # a checkpoint of a release without the schedule option: it trained with the default
    written = json.loads(state.read_text())
    del written["options"]["schedule"]
    state.write_text(json.dumps(written))
    defaults = TrainingOptions().model_dump()
    assert resume_checkpoint(tmp_path, optimizer, opts.model_dump(), resumable, defaults)[0] == 1
    with pytest.raises(ValueError, match="schedule: 'cosine' -> 'linear'"):
        changed = TrainingOptions(steps=3, schedule="linear").model_dump()
        resume_checkpoint(tmp_path, optimizer, changed, resumable, defaults)


def test_resume_fills_nested_options_missing_from_an_older_checkpoint(tmp_path):
    def run_options(lora: LoRAOptions) -> dict:
        return {**FinetuneOptions().model_dump(), "method": "lora", "lora": lora.model_dump(), "qlora": None}

    optimizer, state = _checkpoint(tmp_path, run_options(LoRAOptions(r=4)))
    written = json.loads(state.read_text())
    del written["options"]["lora"]["use_rslora"]
    state.write_text(json.dumps(written))
    defaults = run_options(LoRAOptions())
    resumable = finetune_train.RESUMABLE_CHANGES
    assert resume_checkpoint(tmp_path, optimizer, run_options(LoRAOptions(r=4)), resumable, defaults)[0] == 1
    with pytest.raises(ValueError, match="lora"):
        resume_checkpoint(
            tmp_path, optimizer, run_options(LoRAOptions(r=4, use_rslora=True)), resumable, defaults
        )
