"""The calibrated-compression table: what each algorithm costs the reference teacher,
against its uncalibrated baseline measured in the same run.

Rows (every linear of the decoder layers; the tied embedding / lm_head stays float):
  * 4-bit group 128, symmetric and asymmetric: RTN, GPTQ (act-order, its default; and without), AWQ
    (and AWQ without q/k/v scales, and with the paper's activation-only scales);
  * 3-bit group 128 symmetric: RTN (GPTQ's grid with an identity Hessian), GPTQ; both
    also with ``mse`` (each group's range searched), GPTQ's at 4 bits too;
  * W8A8 (int8 weights per channel, int8 activations per token): plain, SmoothQuant (and
    SmoothQuant smoothing only the inputs after a norm, as the paper);
  * 50% unstructured, 2:4 and 4:8: magnitude, Wanda, SparseGPT; SparseGPT 2:4 with its
    kept weights quantized to 4 bits in the same pass.
Columns: perplexity on the held-out KJV slice (``slmops.zoo.eval_text()``, as ``slmops
bench quality``), its change against fp32, the change as a share of the baseline's (RTN
for quantizers, plain W8A8 for SmoothQuant, magnitude for pruners); perplexity and its
change on a second held-out text, in modern English (``slmops.zoo.modern_eval_text()``:
44,671 characters of the Jargon File 4.4.7's essays and folklore, public domain, read
from Debian's jargon-text package: apt-get install jargon-text), the same compressed
model evaluated on both; the bytes of the compressed linear weights, the seconds to
compress, and the memory the row took at its peak over what the process held before it
(its copy of the float model included; Linux), in multiples of the float model's bytes.
Each row runs in its own process: memory a process has freed stays resident in it, so a
row measured after a bigger one would read near zero.
Calibration: 128 windows of 512 tokens of the training corpus.

    slmops bench compress                     # ~10 min on 2 cores (development VM)
    slmops bench compress --rows gptq-4-sym,rtn-4-sym --markdown compress.md
    slmops bench compress --rows rtn-3-sym,gptq-3-sym --seed 3   # other calibration windows
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import slmops
from slmops.nn import QuantLinear
from slmops.quantize.gptq import gptq_quantize_weight

from ..evaluate.metrics import PeakGrowth
from .quality import cpu_name, linear_bytes, write_results

G128 = {"group_size": 128}
ROWS = {  # label: (kind, method, options, baseline label)
    "rtn-4-sym": ("quantize", "rtn", {"format": "int4", "symmetric": True, **G128}, None),
    "gptq-4-sym": ("quantize", "gptq", {"bits": 4, "symmetric": True, **G128}, "rtn-4-sym"),
    "gptq-4-sym-no-actorder": (
        "quantize",
        "gptq",
        {"bits": 4, "symmetric": True, "act_order": False, **G128},
        "rtn-4-sym",
    ),  # fmt: skip
    "gptq-4-sym-mse": ("quantize", "gptq", {"bits": 4, "symmetric": True, "mse": True, **G128}, "rtn-4-sym"),
    "awq-4-sym": ("quantize", "awq", {"format": "int4", "symmetric": True, **G128}, "rtn-4-sym"),
    "rtn-4-asym": ("quantize", "rtn", {"format": "int4", "symmetric": False, **G128}, None),
    "gptq-4-asym": ("quantize", "gptq", {"bits": 4, "symmetric": False, **G128}, "rtn-4-asym"),
    "awq-4-asym": ("quantize", "awq", {"format": "int4", "symmetric": False, **G128}, "rtn-4-asym"),
    "awq-4-sym-noqkv": (
        "quantize",
        "awq",
        {"format": "int4", "symmetric": True, "scale_qkv": False, **G128},
        "rtn-4-sym",
    ),  # fmt: skip
    "awq-4-asym-paper": (
        "quantize",
        "awq",
        {"format": "int4", "symmetric": False, "duo_scaling": False, **G128},
        "rtn-4-asym",
    ),  # fmt: skip
    "rtn-3-sym": ("rtn-grid", "rtn", {"bits": 3, "symmetric": True, **G128}, None),
    "gptq-3-sym": ("quantize", "gptq", {"bits": 3, "symmetric": True, **G128}, "rtn-3-sym"),
    "rtn-3-sym-mse": ("rtn-grid", "rtn", {"bits": 3, "symmetric": True, "mse": True, **G128}, "rtn-3-sym"),
    "gptq-3-sym-mse": ("quantize", "gptq", {"bits": 3, "symmetric": True, "mse": True, **G128}, "rtn-3-sym"),
    "w8a8": ("quantize", "rtn", {"format": "int8", "activation": "int8_row"}, None),
    "smoothquant-w8a8": ("quantize", "smoothquant", {"format": "int8", "alpha": 0.5}, "w8a8"),
    "smoothquant-w8a8-norms": (
        "quantize",
        "smoothquant",
        {"format": "int8", "alpha": 0.5, "through_linears": False},
        "w8a8",
    ),  # fmt: skip
    "magnitude-50%": ("prune", "magnitude", {"sparsity": 0.5}, None),
    "wanda-50%": ("prune", "wanda", {"sparsity": 0.5}, "magnitude-50%"),
    "sparsegpt-50%": ("prune", "sparsegpt", {"sparsity": 0.5}, "magnitude-50%"),
    "magnitude-2:4": ("prune", "magnitude", {"pattern": "2:4"}, None),
    "wanda-2:4": ("prune", "wanda", {"pattern": "2:4"}, "magnitude-2:4"),
    "sparsegpt-2:4": ("prune", "sparsegpt", {"pattern": "2:4"}, "magnitude-2:4"),
    "magnitude-4:8": ("prune", "magnitude", {"pattern": "4:8"}, None),
    "wanda-4:8": ("prune", "wanda", {"pattern": "4:8"}, "magnitude-4:8"),
    "sparsegpt-4:8": ("prune", "sparsegpt", {"pattern": "4:8"}, "magnitude-4:8"),
    "sparsegpt-2:4+gptq-4": (
        "prune",
        "sparsegpt",
        {"pattern": "2:4", "quantize": {"bits": 4, **G128}},
        "magnitude-2:4",
    ),  # fmt: skip
}
CALIBRATED = {"gptq", "awq", "smoothquant", "wanda", "sparsegpt"}


def rtn_on_gptq_grid(
    model: torch.nn.Module, bits: int, symmetric: bool, group_size: int, mse: bool = False
) -> None:
    """Round to nearest on GPTQ's 2-4 bit grid: GPTQ with an identity Hessian and no damping
    quantizes each column on its own (tests/py/test_gptq.py checks the equality)."""
    for name, m in list(model.named_modules()):
        if isinstance(m, torch.nn.Linear) and ".layers." in name:
            w = m.weight.detach().float().numpy()
            eye = np.eye(w.shape[1], dtype=np.float32)
            q = gptq_quantize_weight(
                w, eye, bits=bits, group_size=group_size, symmetric=symmetric, damp=0.0, mse=mse
            )
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, QuantLinear.from_quantized(q, m.bias))


def _times(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"


def _perplexities(model: torch.nn.Module, tok) -> dict[str, float]:
    """Perplexity on each held-out text, keyed by its column."""
    texts = {"perplexity": slmops.zoo.eval_text(), "modern_perplexity": slmops.zoo.modern_eval_text()}
    out = {}
    for key, text in texts.items():
        r = slmops.evaluate_model(model, tok, metrics=["perplexity"], data=text, seq_len=512, stride=256)
        out[key] = r["perplexity"]["perplexity"]
    return out


def _row(label: str, args: argparse.Namespace) -> dict:
    """One row, measured in this process (the worker's job): compress a fresh copy of the
    model, the peak memory it took, and the copy's perplexities."""
    from slmops.quantize.calibration import calibration_batches

    kind, method, options, _ = ROWS[label]
    model, tok = slmops.zoo.load(args.model)
    float_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    calib = {}
    if method in CALIBRATED:
        batches = calibration_batches(tok, None, n_samples=args.samples, seq_len=args.seq_len, seed=args.seed)
        calib = {"calibration": batches, "progress": False}
    with PeakGrowth() as grown:
        m = copy.deepcopy(model)
        start = time.perf_counter()
        if kind == "quantize":
            slmops.quantize_model(m, method, **calib, **options)
        elif kind == "prune":
            slmops.prune_model(m, method, **calib, **options)
        else:
            rtn_on_gptq_grid(m, **options)
        seconds = time.perf_counter() - start
    memory = None if grown.bytes is None else grown.bytes / float_bytes
    return {"row": label, **_perplexities(m, tok), "linear_bytes": linear_bytes(m), "seconds": seconds,
            "peak_memory_x_float": memory}  # fmt: skip


def _row_in_own_process(label: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "slmops.bench.compress", "--worker", label]
    for name in ("model", "samples", "seq_len", "seed", "threads"):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if run.returncode != 0:
        raise RuntimeError(f"row {label} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="slmops bench compress", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", default="kjv-teacher", help="zoo name or Hugging Face folder")
    parser.add_argument("--rows", default=",".join(ROWS), help="comma list of row labels")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument(
        "--seed", type=int, default=0, help="which calibration windows (the shares move about +-0.1 with it)"
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--worker", metavar="ROW", help=argparse.SUPPRESS)  # one row, JSON on stdout
    args = parser.parse_args(argv)
    labels = [args.worker] if args.worker else args.rows.split(",")
    unknown = set(labels) - set(ROWS)
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}; choose from {list(ROWS)}")
    torch.set_num_threads(args.threads)
    slmops.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(_row(args.worker, args)))
        return 0

    model, tok = slmops.zoo.load(args.model)
    # The float model's row; a missing jargon-text package fails here, before any row runs.
    base = _perplexities(model, tok)
    rows = [{"row": "fp32", **base, "linear_bytes": linear_bytes(model), "seconds": 0.0}]
    del model
    for label in labels:
        rows.append(_row_in_own_process(label, args))
        print(
            f"{label}: ppl {rows[-1]['perplexity']:.3f}, modern {rows[-1]['modern_perplexity']:.3f} "
            f"({rows[-1]['seconds']:.1f} s)",
            flush=True,
        )

    change = {r["row"]: r["perplexity"] / base["perplexity"] - 1 for r in rows}
    modern_change = {r["row"]: r["modern_perplexity"] / base["modern_perplexity"] - 1 for r in rows}
    header = (
        f"slmops {slmops.__version__}, torch {torch.__version__}, {cpu_name()}, {args.threads} threads; "
        f"{args.model}, calibration {args.samples} x {args.seq_len} tokens (seed {args.seed}); "
        "ppl: the held-out KJV slice, modern ppl: the Jargon File's essays (jargon-text)"
    )
    lines = [
        header,
        "",
        "| row | ppl | change | share of the baseline's change | modern ppl | change | linear bytes "
        "| seconds | peak memory (x float) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        baseline = ROWS.get(r["row"], (None,) * 4)[3]
        share = ""
        if baseline in change and change[baseline] > 0:
            share = f"{change[r['row']] / change[baseline]:.2f} of {baseline}"
            r["share_of_baseline"] = change[r["row"]] / change[baseline]
        r["change"], r["modern_change"] = change[r["row"]], modern_change[r["row"]]
        lines.append(
            f"| {r['row']} | {r['perplexity']:.3f} | {100 * change[r['row']]:+.2f}% | {share} "
            f"| {r['modern_perplexity']:.3f} | {100 * modern_change[r['row']]:+.2f}% "
            f"| {r['linear_bytes']:,} | {r['seconds']:.1f} | {_times(r.get('peak_memory_x_float'))} |"
        )
    table = "\n".join(lines)
    write_results(table, header, rows, args.markdown, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
