"""The results of a run, apart from the engine that produces them (the report reads them
too): each candidate with its passes and metrics, the Pareto front and the goals."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Objectives of the Pareto front and the priority: metric key and whether higher is better.
OBJECTIVES = {
    "perplexity": ("perplexity", False),
    "size": ("weight_bytes", False),
    "decode_speed": ("decode_tokens_per_s", True),
}


def pareto_front(rows: list[dict[str, Any]], objectives: list[tuple[str, bool]]) -> list[int]:
    """Indices of the rows no other row dominates (at least as good on every objective and
    better on one). Rows missing an objective are left out."""
    usable = [i for i, r in enumerate(rows) if all(r.get(k) is not None for k, _ in objectives)]

    def better_or_equal(a: dict, b: dict) -> bool:
        return all((a[k] >= b[k]) if hi else (a[k] <= b[k]) for k, hi in objectives)

    def strictly_better(a: dict, b: dict) -> bool:
        return any((a[k] > b[k]) if hi else (a[k] < b[k]) for k, hi in objectives)

    return [
        i
        for i in usable
        if not any(
            j != i and better_or_equal(rows[j], rows[i]) and strictly_better(rows[j], rows[i]) for j in usable
        )
    ]


def check_goals(metrics: dict[str, Any], goals: Any) -> list[str]:
    """The goals a candidate misses, in words (empty: it meets them all)."""
    missed = []
    if goals.perplexity_increase_pct is not None:
        inc = metrics.get("perplexity_change_pct")
        if inc is None or inc > goals.perplexity_increase_pct:
            missed.append(
                f"perplexity +{inc:.2f}% > {goals.perplexity_increase_pct}%"
                if inc is not None
                else "perplexity not measured"
            )
    if goals.size_ratio is not None:
        r = metrics.get("size_ratio")
        if r is None or r > goals.size_ratio:
            missed.append(f"size {r:.3f}x > {goals.size_ratio}x" if r is not None else "size not measured")
    if goals.decode_speedup is not None:
        s = metrics.get("decode_speedup")
        if s is None or s < goals.decode_speedup:
            missed.append(
                f"decode {s:.2f}x < {goals.decode_speedup}x" if s is not None else "decode speed not measured"
            )
    return missed


@dataclass
class Candidate:
    id: str
    overrides: dict[str, dict[str, Any]]
    passes: list[dict[str, Any]] = field(default_factory=list)  # per pass: name, type, options, key, info
    status: str = "pending"  # ok | failed
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    missed_goals: list[str] = field(default_factory=list)
    model_dir: str | None = None
    artifacts: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class RunResult:
    output_dir: Path
    input: dict[str, Any]
    candidates: list[Candidate]
    front: list[str]
    best: str | None

    @property
    def best_candidate(self) -> Candidate | None:
        return next((c for c in self.candidates if c.id == self.best), None)
