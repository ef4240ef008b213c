"""The engine: runs the passes of every candidate in order, caches each pass output by a hash
of (input, pass, options), evaluates, checks the goals, picks the Pareto front and the best
candidate, and writes ``run_history.json`` and the report.

Cache: ``<output_dir>/cache/<key>/`` holds ``model/`` (an slmops checkpoint), the pass's
``artifacts/`` and ``result.json``, written to a temporary folder and renamed, so a key
either is complete or absent. A rerun, or a run resumed after a crash, reuses every
finished pass and evaluation. The input model's evaluation is also kept in the user cache
(``~/.cache/slmops/eval``, or ``$SLMOPS_CACHE/eval``), keyed by the model's and the data's
content, the evaluation settings, the slmops version and the thread count: another run on
the same model and data (another output folder, other passes) does not measure it again.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

from .._io import (
    CorruptedFileError,
    atomic_dir,
    check_writable,
    verify_folder,
    write_atomic,
    write_json_atomic,
)
from .config import DATA_OPTIONS, CustomMetric, RunConfig
from .registry import PassContext, get_pass
from .results import OBJECTIVES, Candidate, RunResult, check_goals, pareto_front

HISTORY_FILE = "run_history.json"
LOG_FILE = "run.log"


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def hash_model_folder(folder: Path) -> str:
    """Content hash of the files that define a model (config, weights, tokenizer)."""
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.is_file() and (p.suffix in (".json", ".safetensors", ".model", ".jinja", ".txt")):
            h.update(p.name.encode())
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


# -- search -------------------------------------------------------------------------


MAX_CANDIDATES = 10_000  # a search without max_trials; more is an error, not a run of days


class _Axis:
    """One option's values, a list or a {min, max, step} range read lazily (a range of a
    billion values costs nothing until a value is drawn)."""

    def __init__(self, spec: list | dict) -> None:
        self.spec = spec
        if isinstance(spec, list):
            self.n = len(spec)
            return
        lo, hi, step = spec.get("min"), spec.get("max"), spec.get("step")
        if lo is None or hi is None or not step:
            raise ValueError(f"a range needs min, max and a non-zero step, got {spec}")
        self.n = max(int(math.floor((hi - lo) / step + 1e-9)) + 1, 0)
        self.ints = all(isinstance(x, int) for x in (lo, step))

    def __getitem__(self, i: int) -> Any:
        if isinstance(self.spec, list):
            return self.spec[i]
        v = self.spec["min"] + i * self.spec["step"]
        return int(v) if self.ints else round(v, 10)


def expand_search(cfg: RunConfig) -> list[dict[str, dict[str, Any]]]:
    """The candidates as option overrides per pass name: ``[{"quantize": {"format": "nf4"}}]``,
    in grid order (the first key slowest; a list of candidates in its order) or a seeded
    random sample, ``max_trials`` at most."""
    if cfg.search is None or not (cfg.search.space or cfg.search.candidates):
        return [{}]
    keys = list(cfg.search.space)
    axes = [_Axis(cfg.search.space[k]) for k in keys]
    listed = cfg.search.candidates
    total = len(listed) if listed else math.prod(a.n for a in axes)
    wanted = total if cfg.search.max_trials is None else min(total, cfg.search.max_trials)
    if wanted > MAX_CANDIDATES:
        raise ValueError(
            f"the search space has {total:,} candidates; set search.max_trials "
            f"(at most {MAX_CANDIDATES:,} run)"
        )
    if cfg.search.strategy == "random":
        indices = random.Random(cfg.search.seed).sample(range(total), wanted)
    else:
        indices = range(wanted)
    candidates = []
    for index in indices:
        if listed:
            chosen = listed[index]
        else:
            chosen = {
                k: axis[i] for k, axis, i in zip(keys, axes, _digits(index, [a.n for a in axes]), strict=True)
            }
        overrides: dict[str, dict[str, Any]] = {}
        for key, value in chosen.items():
            pass_name, _, option = key.partition(".")
            overrides.setdefault(pass_name, {})[option] = value
        candidates.append(overrides)
    return candidates


def _digits(index: int, sizes: list[int]) -> list[int]:
    """``index`` in the mixed radix of ``sizes``, the last axis fastest (itertools.product's order)."""
    out = []
    for n in reversed(sizes):
        index, d = divmod(index, n)
        out.append(d)
    return out[::-1]


# -- the run ----------------------------------------------------------------------------


class Engine:
    def __init__(
        self,
        cfg: RunConfig,
        output_dir: str | os.PathLike[str] | None = None,
        progress: bool = True,
        allow_code: bool = False,
    ):
        custom = [m.function for m in cfg.evaluate.metrics if isinstance(m, CustomMetric)]
        if custom and not allow_code:
            raise PermissionError(
                f"the config's custom metrics run code ({', '.join(custom)}): importing a module runs "
                "anything in it. Allow it for configs you trust with allow_code=True (CLI: --allow-code)"
            )
        self.cfg = cfg
        self.out = Path(output_dir or cfg.output_dir)
        self.cache = self.out / "cache"
        self.progress = progress
        self._texts: dict[str, str] = {}
        self.log = logging.getLogger(f"slmops.workflow.{id(self)}")

    # -- data and model ------------------------------------------------------------
    def data_text(self, name: str) -> str:
        if name not in self.cfg.data:
            raise KeyError(f"no dataset named {name!r}; the config's data has {sorted(self.cfg.data)}")
        if name not in self._texts:
            self._texts[name] = read_data(self.cfg.data[name])
        return self._texts[name]

    def _input_folder(self) -> Path:
        """The input model's folder; a GGUF file is converted once into the cache."""
        from .._io import sha256_file
        from ..models import gguf_folder, is_gguf_file, model_folder, resolve

        model = resolve(self.cfg.model)  # a downloaded model's file
        if is_gguf_file(model):
            return gguf_folder(model, self.cache, sha256_file(Path(model))[:16])
        return model_folder(model)

    # -- caching -------------------------------------------------------------------
    def _run_pass_cached(self, key: str, parent_dir: Path, pass_obj: Any, options: Any) -> dict[str, Any]:
        """The cached result of one pass (running it when absent): {'model_dir', 'info', 'artifacts'}."""
        from ..export import save_checkpoint
        from ..models import load_model

        cached = self._cached_pass(key)
        if cached is not None:
            self.log.info("pass %s: cached (%s)", pass_obj.type, key)
            return cached
        with atomic_dir(self.cache / key, overwrite=True) as tmp:  # the cache is ours alone
            model, tokenizer = load_model(parent_dir)
            ctx = PassContext(
                data=self.data_text, artifacts_dir=tmp / "artifacts", seed=self.cfg.seed, log=self.log
            )
            ctx.artifacts_dir.mkdir()
            t0 = time.perf_counter()
            out = pass_obj.run(model, tokenizer, options, ctx)
            save_checkpoint(out.model, out.tokenizer, tmp / "model")
            result = {
                "info": out.info,
                "artifacts": dict(out.artifacts),  # paths inside the entry's artifacts/
                "seconds": round(time.perf_counter() - t0, 2),
            }
            write_json_atomic(result, tmp / "result.json")
        self.log.info("pass %s: done in %.1f s (%s)", pass_obj.type, result["seconds"], key)
        return self._located(key, result)

    def _located(self, key: str, result: dict[str, Any]) -> dict[str, Any]:
        """The result with the entry's model and artifact paths as they are now."""
        entry = self.cache / key
        artifacts = {k: str(entry / "artifacts" / v) for k, v in result["artifacts"].items()}
        return {**result, "model_dir": str(entry / "model"), "artifacts": artifacts}

    def _cached_pass(self, key: str) -> dict[str, Any] | None:
        """A finished pass's result if its entry is whole: result.json readable and the model's
        files matching their manifest. A damaged or partly deleted entry is computed again."""
        entry = self.cache / key
        try:
            result = json.loads((entry / "result.json").read_text())
            if not verify_folder(entry / "model"):
                raise CorruptedFileError(f"{entry / 'model'} has no manifest")
        except FileNotFoundError:
            return None
        except (ValueError, OSError) as e:  # CorruptedFileError is a ValueError
            self.log.warning("cache entry %s is damaged (%s); computing it again", key, e)
            return None
        return self._located(key, result)

    def _evaluate_cached(self, model_key: str, model_dir: Path, shared: bool = False) -> dict[str, Any]:
        """The model's metrics, from this run's cache or (``shared``: the input model, whose
        key is its content's hash) the user cache, measured when absent."""
        import torch

        from .. import __version__
        from ..models.downloads import cache_root

        ev = self.cfg.evaluate
        key = {
            "model": model_key,
            "evaluate": ev.model_dump(mode="json"),
            "data": self._data_hash(ev.data) if ev.data else None,
        }
        if shared:  # speeds differ with the code and the threads
            key.update(slmops=__version__, threads=torch.get_num_threads())
        path = (cache_root() if shared else self.cache) / "eval" / f"{_hash(key)}.json"
        try:  # the metrics with their own checksum: an edited or truncated file is measured again
            saved = json.loads(path.read_text())
            if saved["sha256"] == _hash(saved["metrics"]):
                self.log.info("evaluation of %s: cached (%s)", model_dir, path)
                return saved["metrics"]
            self.log.warning("evaluation cache %s does not match its checksum; measuring again", path)
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError) as e:
            self.log.warning("evaluation cache %s is unreadable (%s); measuring again", path, e)
        metrics = self._evaluate(model_dir)
        try:
            write_json_atomic({"metrics": metrics, "sha256": _hash(metrics)}, path)
        except OSError as e:  # a read-only user cache costs the reuse, not the run
            if not shared:
                raise
            self.log.warning("could not keep the input's evaluation in %s: %s", path, e)
        return metrics

    def _data_hash(self, name: str) -> str:
        """A dataset's content hash: cache keys change when a data file does."""
        return hashlib.sha256(self.data_text(name).encode()).hexdigest()[:16]

    def _evaluate(self, model_dir: Path) -> dict[str, Any]:
        from ..evaluate import evaluate
        from ..models import load_model

        ev = self.cfg.evaluate
        model, tokenizer = load_model(model_dir)
        names = [m for m in ev.metrics if isinstance(m, str)]
        wanted = []
        if "perplexity" in names:
            wanted.append("perplexity")
        if "decode_speed" in names or "prefill_speed" in names:
            wanted.append("speed")
        if "memory" in names or "size" in names:
            wanted.append("memory")
        text = self.data_text(ev.data) if ev.data else None
        if "perplexity" in names and text is None:
            raise ValueError("evaluate.metrics has perplexity but evaluate.data names no dataset")
        r = evaluate(
            model,
            tokenizer,
            metrics=wanted,
            data=text,
            seq_len=ev.seq_len,
            stride=ev.stride,
            prompt_tokens=ev.prompt_tokens,
            decode_tokens=ev.decode_tokens,
            repeats=ev.repeats,
            model_dir=model_dir,
        )
        m: dict[str, Any] = {}
        if "perplexity" in r:
            m["perplexity"] = r["perplexity"]["perplexity"]
            m["perplexity_tokens"] = r["perplexity"]["tokens"]
            m["perplexity_seq_len"] = r["perplexity"]["seq_len"]
        if "speed" in r:
            s = r["speed"]
            m.update(
                {
                    k: s[k]
                    for k in (
                        "decode_tokens_per_s",
                        "decode_tokens_per_s_p90",
                        "prefill_tokens_per_s",
                        "prefill_tokens_per_s_p90",
                        "threads",
                    )
                }
            )
        if "memory" in r:
            m["weight_bytes"] = r["memory"]["model_bytes_in_memory"]
            m["bytes_on_disk"] = r["memory"]["model_bytes_on_disk"]
            m["peak_rss_bytes"] = r["memory"]["peak_rss_bytes"]
        for custom in (x for x in ev.metrics if isinstance(x, CustomMetric)):
            value = float(_import(custom.function)(model, tokenizer, text))
            if not math.isfinite(value):
                raise ValueError(f"custom metric {custom.name!r} returned {value}")
            m[custom.name] = value
        return m

    def _plan(self, overrides: list[dict[str, dict[str, Any]]], input_key: str) -> list[Candidate]:
        """One candidate per distinct chain of effective options: combinations that differ
        only in options a pass ignores (group_size of q4_k) are run once."""
        candidates, seen = [], set()
        for o in overrides:
            cand = Candidate(id=f"c{len(candidates)}", overrides=o)
            parent_key = input_key
            try:
                for pc in self.cfg.passes:
                    name = pc.name or pc.type
                    pass_obj = get_pass(pc.type)()
                    options = pass_obj.Options.model_validate({**pc.options, **o.get(name, {})})
                    effective = pass_obj.normalize(options)
                    datasets = {getattr(options, k, None) for k in DATA_OPTIONS} - {None}
                    key = _hash(
                        {
                            "parent": parent_key,
                            "type": pc.type,
                            "version": pass_obj.version,
                            "options": effective,
                            "seed": self.cfg.seed,
                            "data": {d: self._data_hash(d) for d in sorted(datasets)},
                        }
                    )
                    cand.passes.append(
                        {
                            "name": name,
                            "type": pc.type,
                            "options": effective,
                            "key": key,
                            "_pass": pass_obj,
                            "_options": options,
                        }
                    )
                    parent_key = key
            except ValueError as e:  # pydantic's ValidationError is a ValueError
                cand.status, cand.error = "failed", f"invalid options {o}: {e}"
            if cand.status != "failed" and parent_key in seen:
                self.log.info("skipping %s: same effective options as an earlier candidate", o)
                continue
            seen.add(parent_key)
            candidates.append(cand)
        return candidates

    # -- the run -------------------------------------------------------------------
    def run(self) -> RunResult:
        self.out.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.out / LOG_FILE)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.log.addHandler(handler)
        self.log.setLevel(logging.INFO)
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        if not self.progress:  # quiet means transformers' loading/saving bars too
            hf_logging.disable_progress_bar()
        try:
            return self._run()
        finally:
            if bars:
                hf_logging.enable_progress_bar()
            self.log.removeHandler(handler)
            handler.close()

    def _run(self) -> RunResult:
        from tqdm.auto import tqdm

        cfg = self.cfg
        src = self._input_folder()
        input_key = hash_model_folder(src)
        self.log.info("input model %s (%s)", src, input_key)
        base = self._evaluate_cached(input_key, src, shared=True)  # a failure (bad data) ends the run
        input_info = {"model": cfg.model, "path": str(src), "key": input_key, "metrics": base}
        candidates = self._plan(expand_search(cfg), input_key)
        history_path = self.out / HISTORY_FILE
        bar = tqdm(candidates, desc="candidates", unit="cand", disable=not self.progress)
        for cand in bar:
            if cand.status == "failed":  # options the pass rejected
                continue
            t0 = time.perf_counter()
            bar.set_postfix_str(json.dumps(cand.overrides) if cand.overrides else "")
            parent_key, parent_dir = input_key, src
            try:
                for step in cand.passes:
                    result = self._run_pass_cached(
                        step["key"], parent_dir, step.pop("_pass"), step.pop("_options")
                    )
                    step.update(info=result["info"], seconds=result["seconds"])
                    cand.artifacts.update({f"{step['name']}.{k}": v for k, v in result["artifacts"].items()})
                    parent_key, parent_dir = step["key"], Path(result["model_dir"])
                cand.model_dir = str(parent_dir)
                cand.metrics = self._evaluate_cached(parent_key, parent_dir)
                _add_changes(cand.metrics, base)
                cand.missed_goals = check_goals(cand.metrics, cfg.evaluate.goals)
                cand.status = "ok"
            except Exception as e:  # one failing candidate must not end the search
                cand.status, cand.error = "failed", f"{type(e).__name__}: {e}"
                self.log.exception("candidate %s failed", cand.id)
            cand.seconds = round(time.perf_counter() - t0, 2)
            self._write_history(history_path, input_info, candidates, [], None)
        ok = [c for c in candidates if c.status == "ok"]
        # Objectives this run measured: a run without speed has a front of perplexity and size.
        objectives = [
            OBJECTIVES[p]
            for p in cfg.evaluate.priority
            if any(c.metrics.get(OBJECTIVES[p][0]) is not None for c in ok)
        ]
        front_idx = pareto_front([c.metrics for c in ok], objectives)
        front = [ok[i].id for i in front_idx]
        feasible = [c for c in ok if not c.missed_goals]
        best = None
        if feasible:

            def rank(c: Candidate) -> tuple:
                return tuple(
                    -c.metrics.get(k, -math.inf) if hi else c.metrics.get(k, math.inf) for k, hi in objectives
                )

            best = min(feasible, key=rank).id
        self._write_history(history_path, input_info, candidates, front, best)
        self.log.info("front %s, best %s", front, best)
        return RunResult(self.out, input_info, candidates, front, best)

    def _write_history(
        self, path: Path, input_info: dict, candidates: list[Candidate], front: list[str], best: str | None
    ) -> None:
        from dataclasses import asdict

        rows = []
        for c in candidates:
            row = asdict(c)
            row["passes"] = [{k: v for k, v in p.items() if not k.startswith("_")} for p in c.passes]
            rows.append(row)
        write_json_atomic(
            {
                "config": self.cfg.model_dump(mode="json"),
                "input": input_info,
                "candidates": rows,
                "pareto_front": front,
                "best": best,
            },
            path,
        )


def _add_changes(m: dict[str, Any], base: dict[str, Any]) -> None:
    if m.get("perplexity") is not None and base.get("perplexity"):
        m["perplexity_change_pct"] = 100.0 * (m["perplexity"] / base["perplexity"] - 1.0)
    if m.get("weight_bytes") and base.get("weight_bytes"):
        m["size_ratio"] = m["weight_bytes"] / base["weight_bytes"]
    if m.get("decode_tokens_per_s") and base.get("decode_tokens_per_s"):
        m["decode_speedup"] = m["decode_tokens_per_s"] / base["decode_tokens_per_s"]


def _import(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ValueError(f"a custom metric function is 'module:function', got {spec!r}")
    return getattr(importlib.import_module(module), attr)


def read_data(d: Any) -> str:
    """The text of a dataset entry of a run config."""
    from .. import zoo

    if d.type == "kjv":
        text = zoo.kjv_split(d.split)
    elif d.type == "eval_slice":
        text = zoo.eval_text()
    elif d.type == "modern_slice":
        text = zoo.modern_eval_text()
    elif d.type == "text":
        text = Path(d.path).read_text(encoding="utf-8")
    else:  # jsonl
        lines = []
        for i, line in enumerate(Path(d.path).read_text(encoding="utf-8").splitlines()):
            if not line.strip():
                continue
            try:
                lines.append(str(json.loads(line)[d.field]))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(
                    f"{d.path} line {i + 1}: expected a JSON object with a {d.field!r} field"
                ) from e
        text = "\n\n".join(lines)
    return text[: d.max_chars] if d.max_chars else text


def _copy_atomic(src: Path, dst: Path, overwrite: bool) -> None:
    if src.is_dir():
        with atomic_dir(dst, overwrite=overwrite) as tmp:
            shutil.copytree(src, tmp, dirs_exist_ok=True)
    else:
        write_atomic(dst, src.read_bytes())


def run_workflow(
    cfg: RunConfig,
    output_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    report: bool = True,
    overwrite: bool = False,
    allow_code: bool = False,
) -> RunResult:
    """Runs a config; writes ``run_history.json``, ``run.log``, the best candidate's model as
    ``<output_dir>/model`` and its artifacts as ``<output_dir>/<pass>-<artifact>`` (for
    example ``export-gguf``), and (``report``) ``report.md`` / ``report.html``. An existing
    ``model`` or artifact folder is replaced only if slmops wrote it, or with ``overwrite``
    (``model`` is checked before any work; an artifact's refusal comes after the run, whose
    passes stay cached, so a rerun with another folder or ``overwrite`` is quick).
    Custom metrics import and run the module the config names: ``allow_code=True`` allows
    that (only for configs you trust); a metric that raises fails its candidate."""
    check_writable(Path(output_dir or cfg.output_dir) / "model", overwrite)
    result = Engine(cfg, output_dir, progress, allow_code).run()
    best = result.best_candidate
    if best is not None and best.model_dir is not None:
        # The chosen model and its artifacts, out of the cache into plain names.
        _copy_atomic(Path(best.model_dir), result.output_dir / "model", overwrite)
        for name, path in best.artifacts.items():
            _copy_atomic(Path(path), result.output_dir / name.replace(".", "-"), overwrite)
    if report:
        from .report import write_report

        write_report(result, cfg)
    return result
