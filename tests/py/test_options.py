"""The options of quantization and pruning: one model per algorithm in the layer that runs
it, the workflow passes and the CLI flags derived from those models (defaults written once),
and the helpers of slmops._options that derive them."""

from __future__ import annotations

import argparse
import copy
import inspect

import pytest
import slmops
from pydantic import Field, ValidationError
from slmops._options import Options, add_flags, choice, given, side_by_side
from slmops.cli import build_parser
from slmops.prune.options import DEFAULT_METHOD, PruneOptions
from slmops.quantize import calibration, gptq
from slmops.quantize.options import (
    ALGORITHMS,
    DEFAULT_ALGORITHM,
    CalibrationOptions,
    GPTQOptions,
    HessianOptions,
    RTNOptions,
)
from slmops.workflow.passes.prune import PrunePass, PrunePassOptions
from slmops.workflow.passes.quantize import QuantizeOptions, QuantizePass
from torch import nn


def _default(model, name):
    return model.model_fields[name].get_default(call_default_factory=True)


# -- defaults written once ---------------------------------------------------------------------


def test_the_calibration_defaults_come_from_one_model():
    for name in ("n_samples", "seq_len"):
        want = _default(CalibrationOptions, name)
        for model in (*[m for m in ALGORITHMS.values() if issubclass(m, CalibrationOptions)], PruneOptions):
            assert _default(model, name) == want, (model, name)
        assert _default(QuantizeOptions, name) == want and _default(PrunePassOptions, name) == want
        assert inspect.signature(calibration.calibration_batches).parameters[name].default == want
    damp = _default(HessianOptions, "damp")
    assert _default(GPTQOptions, "damp") == damp == _default(PruneOptions, "damp")
    assert inspect.signature(gptq.gptq_quantize_weight).parameters["damp"].default == damp


def test_the_pass_options_are_the_layer_options_side_by_side():
    for model in ALGORITHMS.values():
        for name, field in model.model_fields.items():
            if name != "algorithm":
                assert QuantizeOptions.model_fields[name].description == field.description, name
                assert _default(QuantizeOptions, name) == _default(model, name), name
    assert _default(QuantizeOptions, "algorithm") == DEFAULT_ALGORITHM
    assert set(PrunePassOptions.model_fields) == {*PruneOptions.model_fields, "method", "calibration"}
    assert _default(PrunePassOptions, "method") == DEFAULT_METHOD


def test_the_cli_flags_are_the_options_fields():
    parser = build_parser()
    args = parser.parse_args(
        ["quantize", "-m", "kjv-teacher", "-f", "int4", "--algorithm", "gptq", "--group-size", "32",
         "--asymmetric", "--act-order", "--no-mse", "--n-samples", "8", "--skip", "lm_head", "-o", "out"]
    )  # fmt: skip
    fields = {k for m in ALGORITHMS.values() for k in m.model_fields}
    got = given(args, sorted(fields))
    assert got == {"algorithm": "gptq", "format": "int4", "group_size": 32, "symmetric": False,
                   "act_order": True, "mse": False, "n_samples": 8, "skip": ["lm_head"]}  # fmt: skip
    opts = GPTQOptions(**got)  # what the flags give is what the model takes
    assert opts.seq_len == _default(CalibrationOptions, "seq_len")
    args = parser.parse_args(["prune", "-m", "m", "--pattern", "2:4", "--sparse", "-o", "out"])
    assert given(args, ["method", *PruneOptions.model_fields]) == {"pattern": "2:4", "sparse": True}
    with pytest.raises(SystemExit):  # a choice list from the layer below
        parser.parse_args(["quantize", "-m", "m", "-f", "int3", "-o", "out"])


# -- checks ------------------------------------------------------------------------------------


def test_an_option_the_algorithm_does_not_take_is_an_error():
    model = nn.Sequential(nn.Linear(64, 64))
    with pytest.raises(ValidationError, match="damp"):
        slmops.quantize_model(copy.deepcopy(model), "rtn", damp=0.1)
    with pytest.raises(ValidationError, match="group_sise"):
        slmops.quantize_model(copy.deepcopy(model), "rtn", group_sise=32)
    with pytest.raises(ValueError, match="damp must be in"):
        GPTQOptions(damp=1.5)
    with pytest.raises(ValueError, match="bits must be one of"):
        GPTQOptions(bits=5)


def test_a_pass_checks_its_algorithms_options_when_the_config_is_read():
    with pytest.raises(ValueError, match="damp must be in"):
        QuantizeOptions(algorithm="gptq", damp=2.0)
    with pytest.raises(ValueError, match="group_size must be in"):
        QuantizeOptions(format="int4", group_size=1 << 20)
    with pytest.raises(ValueError, match="per-layer sparsity needs pattern='unstructured'"):
        PrunePassOptions(sparsity={"*": 0.5}, pattern="2:4")
    # a search may set options of another algorithm: accepted, and out of this one's key
    QuantizeOptions(algorithm="rtn", damp=0.05, n_samples=8)


def test_the_cache_key_holds_only_what_changes_the_result():
    rtn = QuantizePass().normalize(QuantizeOptions(format="q4_k", n_samples=8, group_size=64, act_order=True))
    assert rtn == RTNOptions(format="q4_k").result_options()  # q4_k's blocks are fixed: no group_size
    assert not {"n_samples", "calibration", "act_order", "group_size", "double_quant"} & set(rtn)
    gptq_key = QuantizePass().normalize(QuantizeOptions(algorithm="gptq", calibration="cal"))
    assert gptq_key["calibration"] == "cal" and "damp" in gptq_key and "duo_scaling" not in gptq_key
    magnitude = PrunePass().normalize(PrunePassOptions(pattern="2:4", n_samples=8))
    assert not {"n_samples", "calibration", "damp", "sparsity", "quantize"} & set(magnitude)


# -- the helpers -------------------------------------------------------------------------------


class _A(Options):
    kind: choice(lambda: ["x", "y"]) = Field("x", description="a choice")  # type: ignore[valid-type]
    n: int = Field(3, ge=1, description="a count")


class _B(Options):
    n: int = Field(4, ge=1, description="a count")


def test_side_by_side_refuses_a_field_two_models_define_differently():
    with pytest.raises(TypeError, match="'n' differs"):
        side_by_side("AB", [_A, _B], Options)
    merged = side_by_side("AA", [_A], Options, extra=(int, 0))
    with pytest.raises(ValueError, match="kind must be one of"):
        merged(kind="z")
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        merged(n=0)


def test_flags_left_out_keep_the_models_defaults():
    parser = argparse.ArgumentParser()
    names = add_flags(parser, _A)
    assert given(parser.parse_args([]), names) == {}
    assert given(parser.parse_args(["--kind", "y", "--n", "2"]), names) == {"kind": "y", "n": 2}
    assert "(default: 3)" in parser.format_help()
