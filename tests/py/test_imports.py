"""The import structure: every module imports on its own, the root is a face (its names load
on first use), the kernel layer loads without torch or transformers, and the names that used
to shadow packages (``slmops.export`` was a function) are packages again, still callable
for one release. The import graph's rules (layers, no cycles) are checked by ``lint-imports``
(pyproject.toml, [tool.importlinter])."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import slmops

PACKAGE_DIR = Path(slmops.__file__).parent


def _modules() -> list[str]:
    names = ["slmops._C"]
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _run(code: str, *args: str, timeout: int = 120) -> str:
    """stdout of ``code`` in a fresh interpreter; its traceback as the failure otherwise."""
    command = [sys.executable, "-c", code, *args]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


# One fresh interpreter forks a child per module: each child starts with no slmops module
# loaded, so each module is the first of slmops to run (an import cycle or an import that
# leans on a module loaded earlier fails there). The third-party libraries are loaded once,
# in the parent, before the forks: they cannot hide an slmops import problem, and the whole
# package takes seconds, not a torch import per module.
_IMPORT_EACH_ALONE = r"""
import importlib, json, os, sys, traceback

for lib in ("numpy", "torch", "pydantic", "yaml", "tqdm", "transformers"):
    importlib.import_module(lib)
assert not [m for m in sys.modules if m.split(".")[0] == "slmops"]
failures = {}
for name in sys.argv[1:]:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            importlib.import_module(name)
            message = ""
        except BaseException:
            message = traceback.format_exc()
        with os.fdopen(write_fd, "wb") as out:
            out.write(message.encode())
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as src:
        message = src.read().decode()
    _, status = os.waitpid(pid, 0)
    if message or status:
        failures[name] = message or f"the child exited with status {status}"
print(json.dumps(failures))
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_every_module_imports_alone():
    modules = _modules()
    assert {"slmops.ops", "slmops.models", "slmops.export.gguf", "slmops.workflow.results"} <= set(modules)
    failures = json.loads(_run(_IMPORT_EACH_ALONE, *modules, timeout=300).splitlines()[-1])
    assert not failures, "\n\n".join(f"import {name}:\n{tb}" for name, tb in failures.items())


def test_import_slmops_loads_no_layer():
    out = _run("import json, sys, slmops; print(json.dumps(sorted(sys.modules)))")
    loaded = set(json.loads(out.splitlines()[-1]))
    assert {m for m in loaded if m.startswith("slmops.")} == {"slmops._C"}
    assert not loaded & {"torch", "transformers", "numpy"}


_OPS_ON_NUMPY = r"""
import json, sys
import numpy as np
import slmops.ops as ops

rng = np.random.default_rng(0)
w = rng.standard_normal((64, 128)).astype(np.float32)
x = rng.standard_normal((3, 128)).astype(np.float32)
y = ops.qmatmul(x, ops.quantize(w, "int4", group_size=32))
assert y.shape == (3, 64) and isinstance(y, np.ndarray)
s = ops.spmm(x, ops.sparsify(w, "2:4", prune=True))
assert s.shape == (3, 64) and isinstance(s, np.ndarray)
student, teacher = rng.standard_normal((2, 4, 16)).astype(np.float32)
loss = ops.kd_loss(student, teacher)
print(json.dumps(sorted(m for m in ("torch", "transformers") if m in sys.modules)))
"""


def test_ops_on_numpy_leave_transformers_out():
    assert "transformers" not in json.loads(_run(_OPS_ON_NUMPY).splitlines()[-1])


def test_ops_on_numpy_leave_torch_out():
    assert "torch" not in json.loads(_run(_OPS_ON_NUMPY).splitlines()[-1])


_CLI_HELP = r"""
import contextlib, io, json, sys
from slmops.cli import main

for argv in (["--help"], *([c, "--help"] for c in ("quantize", "prune", "distill", "finetune", "export"))):
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit as e:
            assert e.code == 0, (argv, e.code)
print(json.dumps(sorted(m for m in ("torch", "transformers", "peft", "onnx") if m in sys.modules)))
"""


def test_the_cli_help_loads_no_model_library():
    # the flags come from the options models, which import no torch: --help answers at once
    assert json.loads(_run(_CLI_HELP).splitlines()[-1]) == []


# The root's names: each package keeps its name and its function; the root names the
# function for what it does to a model.
MODEL_FUNCTIONS = {
    "quantize_model": ("quantize", "quantize_model"),
    "prune_model": ("prune", "prune_model"),
    "distill_model": ("distill", "distill"),
    "finetune_model": ("finetune", "finetune"),
    "evaluate_model": ("evaluate", "evaluate"),
    "export_model": ("export", "export"),
}


def test_the_roots_public_names_resolve():
    import importlib
    import types

    for name in slmops.__all__:
        assert getattr(slmops, name) is not None, name
    assert set(slmops.__all__) <= set(dir(slmops))
    for name, (package, function) in MODEL_FUNCTIONS.items():
        assert name in slmops.__all__
        module = importlib.import_module(f"slmops.{package}")
        assert getattr(slmops, name) is getattr(module, function), name
        assert getattr(slmops, package) is module and isinstance(module, types.ModuleType)
    assert slmops.QuantizedTensor is slmops.ops.QuantizedTensor
    assert slmops.zoo.load is slmops.models.load_model
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        slmops.not_a_name  # noqa: B018


def test_submodules_are_reachable_as_attributes():
    import slmops.distill.data
    import slmops.evaluate.metrics
    import slmops.export.gguf
    import slmops.finetune.lora

    assert slmops.export.gguf.__name__ == "slmops.export.gguf"
    assert slmops.evaluate.metrics.__name__ == "slmops.evaluate.metrics"
    assert slmops.distill.data.__name__ == "slmops.distill.data"
    assert slmops.finetune.lora.__name__ == "slmops.finetune.lora"


@pytest.mark.parametrize("package", ["distill", "finetune", "evaluate", "export"])
def test_calling_a_package_warns_and_forwards(package, monkeypatch):
    module = getattr(slmops, package)
    function = MODEL_FUNCTIONS[f"{package}_model"][1]
    monkeypatch.setattr(module, function, lambda *args, **kwargs: (args, kwargs))
    new_name = rf"slmops\.{package}_model"
    with pytest.warns(DeprecationWarning, match=rf"slmops\.{package}\(\.\.\.\).*{new_name}") as w:
        assert module(1, "two", three=3) == ((1, "two"), {"three": 3})
    assert w[0].filename == __file__  # the warning points at the caller's line
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        getattr(slmops, f"{package}_model")  # the new name does not warn
