"""The ``slmops`` command line.

``slmops info``: what this build contains and picked on this machine, then a self-check of
every kernel on every ISA the machine has against its scalar reference.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import numpy as np

from . import _C, build_info
from .ops import FORMATS, quantize

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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slmops", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="build info and a self-check of every kernel on this machine")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(func=_cmd_info)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
