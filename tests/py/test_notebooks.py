"""Every notebook in notebooks/ runs top to bottom, as a user opening it would run it.

Each notebook is executed with nbclient in a kernel of the interpreter running the tests
(a kernel spec written for ``sys.executable``, so a ``python3`` spec elsewhere on the
machine cannot swap in another environment), with a temporary folder as its working
directory: whatever it writes (runs, exports, adapters) stays out of the repository. A cell
that raises fails the test with that cell's source and traceback. The notebooks are kept
without outputs, which the last test checks.
"""

from __future__ import annotations

import json
import re
import sys
import time
from datetime import datetime
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
# A hang, not a busy machine, should trip it: on an idle 2-core machine no cell takes a minute, but on
# one shared with other work (load 5-7 on 2 cores) the training cells took up to ~580 s.
CELL_TIMEOUT_S = 600
KERNEL_NAME = "slmops-notebook-test"
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")  # IPython colors its tracebacks


def test_notebooks_are_found():
    # The parametrized test below would quietly collect nothing if the folder moved.
    expected = {"quickstart", "compression", "distillation", "finetuning", "export", "serving"}
    assert {p.stem for p in NOTEBOOKS} >= expected, NOTEBOOKS


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory) -> Path:
    """A kernel spec that starts ipykernel in this very interpreter."""
    root = tmp_path_factory.mktemp("kernels")
    spec = root / KERNEL_NAME
    spec.mkdir()
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": f"Python {sys.version_info.major}.{sys.version_info.minor} (tests)",
                "language": "python",
            }
        )
    )
    return root


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, kernel_dir: Path, tmp_path: Path, monkeypatch):
    # The kernel inherits this environment: no model hub, and matplotlib draws inline.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)
    nb = nbformat.read(path, as_version=4)
    km = KernelManager(
        kernel_name=KERNEL_NAME, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dir)])
    )
    client = NotebookClient(
        nb,
        km=km,
        kernel_name=KERNEL_NAME,
        timeout=CELL_TIMEOUT_S,
        startup_timeout=120,
        resources={"metadata": {"path": str(tmp_path)}},  # the kernel's working directory
    )
    before = _listing()
    t0 = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as e:  # the first failing cell: its source and traceback, uncolored
        pytest.fail(f"{path.name}: {ANSI_ESCAPE.sub('', str(e))}", pytrace=False)
    finally:  # nbclient shuts down only the kernels of managers it made itself
        if client.kc is not None:
            client.kc.stop_channels()
        if km.has_kernel:
            km.shutdown_kernel(now=True)
    slowest = max(_cell_seconds(nb), default=(0.0, -1))
    print(f"{path.name}: {time.perf_counter() - t0:.1f} s (slowest: cell {slowest[1]}, {slowest[0]:.1f} s)")
    assert _listing() - before == set(), "the notebook wrote into the repository"


def _cell_seconds(nb) -> list[tuple[float, int]]:
    """(seconds, index) of each executed code cell, from the timing nbclient records."""
    out = []
    for i, cell in enumerate(nb.cells):
        t = cell.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in t and "shell.execute_reply" in t:
            start, end = (_time(t[k]) for k in ("iopub.execute_input", "shell.execute_reply"))
            out.append(((end - start).total_seconds(), i))
    return out


def _time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))  # Python 3.10 reads no "Z"


def _listing() -> set[Path]:
    return set(NOTEBOOK_DIR.iterdir()) | set(NOTEBOOK_DIR.parent.iterdir())


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_clean(path: Path):
    """Stored without outputs or execution counts: small diffs, and no stale results shown."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: cell {i} has outputs"
