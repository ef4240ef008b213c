"""Safe writes and verified reads of everything slmops puts on disk (DESIGN: never a
half-written output, never anything lost that slmops did not write).

- A file or folder is either complete at its name or absent: it is written under a
  temporary sibling name and renamed into place; a failure removes the temporary, and a
  temporary left by a killed process is removed by the next write beside it.
- Every folder slmops writes holds ``manifest.json``: each file's size and SHA-256, and for
  ``.safetensors`` files each tensor's SHA-256. It is how slmops recognises its own output
  (an existing folder is replaced only when it is ours, empty, or ``overwrite`` is given)
  and how a load finds a damaged file (:func:`verify_folder`) and names the tensor.
- Written files and folders get the usual permissions under the process's umask (the
  temporary-file functions would leave them private to the owner).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
# What a load verifies: the binary payloads. Text files (configs, tokenizers, Modelfiles) are
# parsed and checked on load anyway, and users edit them (a model name, a chat template).
PAYLOAD_SUFFIXES = (".safetensors", ".gguf", ".onnx", ".data", ".bin", ".pt")
_TMP_MARK = ".slmops-tmp-"  # temporaries: .<name>.slmops-tmp-<pid>-<random>


class CorruptedFileError(ValueError):
    """A file does not match the size or checksum its folder's manifest recorded."""


class OutputExistsError(FileExistsError):
    """The output path holds something slmops did not write (pass ``overwrite=True``)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _apply_umask(path: Path) -> None:
    """Files 0666 and folders 0777 less the umask, as open() and mkdir() would give."""
    mask = _umask()
    if not path.is_dir():
        os.chmod(path, 0o666 & ~mask)
        return
    os.chmod(path, 0o777 & ~mask)
    for root, dirs, files in os.walk(path):
        for d in dirs:
            os.chmod(Path(root) / d, 0o777 & ~mask)
        for f in files:
            os.chmod(Path(root) / f, 0o666 & ~mask)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temporaries(dst: Path) -> None:
    """Temporaries beside ``dst`` whose writing process is gone (killed mid-write)."""
    prefix = f".{dst.name}{_TMP_MARK}"
    for p in dst.parent.glob(f"{prefix}*"):
        pid = p.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _tmp_prefix(dst: Path) -> str:
    return f".{dst.name}{_TMP_MARK}{os.getpid()}-"


def read_manifest(folder: Path) -> dict | None:
    """The folder's manifest if it has one slmops could have written, else None."""
    try:
        m = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict) or not isinstance(m.get("files"), list):
        return None
    for e in m["files"]:  # a damaged manifest is damage too, not a crash
        if not (isinstance(e, dict) and isinstance(e.get("path"), str) and isinstance(e.get("bytes"), int)):
            raise CorruptedFileError(f"{folder / MANIFEST} is damaged: bad entry {str(e)[:80]}")
        if ".." in Path(e["path"]).parts or Path(e["path"]).is_absolute():
            raise CorruptedFileError(f"{folder / MANIFEST} lists a path outside its folder: {e['path']}")
    return m


def _is_ours(folder: Path) -> bool:
    """A folder slmops wrote: a manifest, and nothing at its top level the manifest does not list."""
    m = read_manifest(folder)
    if m is None:
        return False
    listed = {str(f.get("path", "")).split("/", 1)[0] for f in m["files"] if isinstance(f, dict)}
    return all(p.name in listed or p.name == MANIFEST for p in folder.iterdir())


def check_writable(dst: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Raises unless ``dst`` can be written as an slmops output without losing anything:
    absent, an empty folder, a folder slmops wrote, or anything else with ``overwrite``.
    The working folder, its parents, the home folder and ``/`` are never replaced."""
    dst = Path(dst)
    resolved = dst.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents or resolved == Path.home().resolve():
        raise OutputExistsError(
            f"refusing to write the output to {dst} ({resolved}): it would replace the working folder, "
            "one of its parents or the home folder; name a new folder"
        )
    if not os.path.lexists(dst):
        return dst
    if dst.is_symlink() or not dst.is_dir():
        what = "a link" if dst.is_symlink() else "a file"
    elif not any(dst.iterdir()) or _is_ours(dst):
        return dst
    else:
        what = "a folder with files slmops did not write"
    if not overwrite:
        raise OutputExistsError(
            f"{dst} exists and is {what}; choose another output folder, or pass overwrite=True "
            "(CLI: --overwrite) to replace it and everything in it"
        )
    return dst


def _remove(dst: Path) -> None:
    if dst.is_symlink() or (os.path.lexists(dst) and not dst.is_dir()):
        dst.unlink()
    elif dst.is_dir():
        shutil.rmtree(dst)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _safetensors_layout(path: Path) -> dict[str, tuple[int, int]]:
    """Each tensor's absolute byte range in a safetensors file (from its header)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > os.path.getsize(path) - 8:
            raise CorruptedFileError(f"{path}: the safetensors header length {n} exceeds the file")
        header = json.loads(f.read(n))
    return {
        name: (8 + n + info["data_offsets"][0], 8 + n + info["data_offsets"][1])
        for name, info in header.items()
        if name != "__metadata__"
    }


def _tensor_hashes(path: Path) -> dict[str, str]:
    out = {}
    with open(path, "rb") as f:
        for name, (begin, end) in sorted(_safetensors_layout(path).items(), key=lambda kv: kv[1]):
            f.seek(begin)
            out[name] = hashlib.sha256(f.read(end - begin)).hexdigest()
    return out


def _file_entries(folder: Path) -> list[dict[str, Any]]:
    entries = []
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p == folder / MANIFEST:
            continue
        e: dict[str, Any] = {"path": p.relative_to(folder).as_posix(), "bytes": p.stat().st_size}
        e["sha256"] = sha256_file(p)
        if p.suffix == ".safetensors":
            e["tensors"] = _tensor_hashes(p)
        entries.append(e)
    return entries


def verify_folder(folder: str | os.PathLike[str]) -> bool:
    """Checks every payload file (``PAYLOAD_SUFFIXES``) the folder's manifest lists (size,
    SHA-256); raises
    :class:`CorruptedFileError` naming the file, and for a safetensors file the damaged
    tensors. Returns False when the folder has no manifest (not written by slmops)."""
    folder = Path(folder)
    m = read_manifest(folder)
    if m is None:
        return False
    for e in m["files"]:
        p = folder / e["path"]
        if p.suffix not in PAYLOAD_SUFFIXES:
            continue
        if not p.is_file():
            raise CorruptedFileError(f"{p} is missing; {folder / MANIFEST} lists it")
        if p.stat().st_size != e["bytes"]:
            raise CorruptedFileError(
                f"{p} is damaged: {p.stat().st_size:,} bytes, the manifest recorded {e['bytes']:,}"
            )
        if sha256_file(p) != e["sha256"]:
            bad = ""
            if "tensors" in e:
                try:
                    now = _tensor_hashes(p)
                except (ValueError, KeyError, TypeError) as err:
                    bad = f" (its header is unreadable: {err})"
                else:
                    names = [t for t, h in e["tensors"].items() if now.get(t) != h]
                    bad = f" in tensor(s) {', '.join(names[:5])}" if names else " in its header"
            raise CorruptedFileError(
                f"{p} is damaged{bad}: its SHA-256 differs from the one in {folder / MANIFEST}; "
                "write it again (or load with verify=False to skip this check)"
            )
    return True


def write_manifest(folder: Path, details: dict[str, Any] | None = None) -> dict[str, Any]:
    from . import __version__

    manifest = {"written_by": f"slmops {__version__}", **(details or {}), "files": _file_entries(folder)}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return manifest


@contextmanager
def atomic_dir(
    dst: str | os.PathLike[str], *, overwrite: bool = False, details: dict[str, Any] | None = None
) -> Iterator[Path]:
    """Yields an empty temporary folder beside ``dst``; when the block succeeds, a manifest
    (``details`` plus every file's checksum; the block may fill ``details``) is written into
    it and it replaces ``dst``; when it fails it is deleted and ``dst`` is untouched.
    ``dst`` must pass :func:`check_writable` (checked before and after the block)."""
    dst = Path(dst)
    check_writable(dst, overwrite)
    dst.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(dst)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(dst), dir=dst.parent))
    try:
        yield tmp
        write_manifest(tmp, details)
        _apply_umask(tmp)
        check_writable(dst, overwrite)  # again: something may have appeared meanwhile
        _remove(dst)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a temporary path beside ``path`` for the block to write; when the block
    succeeds it replaces ``path``, when it fails it is deleted and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    fd, name = tempfile.mkstemp(prefix=_tmp_prefix(path), dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _apply_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike[str], data: str | bytes) -> None:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


def write_json_atomic(obj: Any, path: str | os.PathLike[str]) -> None:
    write_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")
