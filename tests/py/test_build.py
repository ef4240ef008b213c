"""Build info, threads, ISA dispatch, the OpenMP runtime shared with torch, the CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import slmops
from slmops import _C
from slmops.cli import main, self_check


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={**os.environ, **env}
    )


def test_build_info_reports_everything():
    info = slmops.build_info()
    assert info["version"] == slmops.__version__
    assert info["cpu_isa"] in info["cpu_isas_available"]
    assert info["cpu_isas_available"][0] == "ref"
    assert set(info["cpu_isas_available"]) <= set(info["cpu_isas_compiled"])
    assert isinstance(info["openmp"], bool) and info["num_threads"] >= 1
    assert (info["onednn_version"] is None) == (not info["onednn"])
    if info["onednn"]:
        assert info["onednn_version"].startswith("3.")
    assert (info["cuda_architectures"] is None) == (not info["cuda"])
    if info["cuda"]:
        assert "native" not in info["cuda_architectures"]


def test_set_num_threads():
    before = slmops.get_num_threads()
    try:
        slmops.set_num_threads(1)
        assert slmops.get_num_threads() == 1 or not slmops.build_info()["openmp"]
        with pytest.raises(ValueError, match=">= 1"):
            slmops.set_num_threads(0)
        with pytest.raises(TypeError):
            slmops.set_num_threads(1.5)
    finally:
        slmops.set_num_threads(before)


def test_results_do_not_depend_on_thread_count(rng):
    w = (rng.standard_normal((301, 512)) * 0.02).astype(np.float32)
    before = slmops.get_num_threads()
    try:
        slmops.set_num_threads(1)
        one = slmops.ops.quantize(w, "ternary")  # includes the per-tensor reduction
        slmops.set_num_threads(2)
        two = slmops.ops.quantize(w, "ternary")
    finally:
        slmops.set_num_threads(before)
    np.testing.assert_array_equal(one.tensors["data"], two.tensors["data"])
    np.testing.assert_array_equal(one.tensors["scales"], two.tensors["scales"])


@pytest.mark.parametrize("cap", ["ref", "avx2", "avx512"])
def test_max_cpu_isa_caps_the_dispatcher(cap):
    r = run_python("import slmops; print(slmops.build_info()['cpu_isa'])", SLMOPS_MAX_CPU_ISA=cap)
    assert r.returncode == 0, r.stderr
    order = ["ref", "avx2", "avx512"]
    best = _C.available_cpu_isas()[-1]
    assert r.stdout.strip() == order[min(order.index(cap), order.index(best))]


def test_invalid_isa_cap_is_reported_and_ignored():
    r = run_python("import slmops; print(slmops.build_info()['cpu_isa'])", SLMOPS_MAX_CPU_ISA="avx9000")
    assert r.returncode == 0
    assert "ignoring SLMOPS_MAX_CPU_ISA" in r.stderr
    assert r.stdout.strip() == _C.available_cpu_isas()[-1]


def test_forcing_an_unavailable_isa_is_an_error():
    if "avx512" in _C.available_cpu_isas():
        pytest.skip("every ISA is available on this machine")
    with pytest.raises(ValueError, match="not available"):
        slmops.ops.quantize(np.zeros((2, 64), np.float32), "int8", isa="avx512")


def test_torch_and_slmops_parallel_kernels_share_one_process():
    """Two OpenMP runtimes in one process is a known crash; import torch first, run a
    parallel torch op and a parallel slmops kernel, in both orders."""
    code = """
import torch, numpy as np, slmops
torch.set_num_threads(2); slmops.set_num_threads(2)
a = torch.randn(512, 512)
for _ in range(3):
    b = a @ a
    q = slmops.ops.quantize(a, "q4_k")
    c = torch.from_numpy(np.asarray(slmops.ops.quantize(a.numpy(), "int8").dequantize()))
torch.testing.assert_close(b, a @ a)
print("ok", torch.get_num_threads(), slmops.get_num_threads())
"""
    r = run_python(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ok", "2", "2"]
    r = run_python(code.replace("import torch, numpy as np, slmops", "import slmops, numpy as np, torch"))
    assert r.returncode == 0, r.stderr


def test_self_check_covers_every_format_and_isa():
    checks = self_check(rows=5, cols=512)
    assert {c["format"] for c in checks} == set(slmops.ops.FORMATS)
    assert {c["isa"] for c in checks} == set(_C.available_cpu_isas())
    assert all(c["ok"] for c in checks), [c for c in checks if not c["ok"]]


def test_cli_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "all kernels match the reference" in out and "q4_k" in out
    assert main(["info", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["build"]["version"] == slmops.__version__


def test_cli_console_script_runs():
    r = subprocess.run(
        [sys.executable, "-m", "slmops.cli", "info"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert "self-check" in r.stdout
