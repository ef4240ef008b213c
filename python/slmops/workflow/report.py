"""``report.md`` and ``report.html``: the input, every candidate with its metrics and change,
the Pareto front, the chosen result and where its files are; plots of perplexity against
size and against decode speed (PNG files, embedded in the HTML)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from .._io import write_atomic
from .config import RunConfig
from .results import RunResult, pareto_front


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return ""


def _num(v: Any, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def _describe(c: Any) -> str:
    parts = []
    for p in c.passes:
        opts = ", ".join(
            f"{k}={v}" for k, v in p["options"].items() if k not in ("skip", "include") and v is not None
        )
        parts.append(f"{p['name']}({opts})")
    return " → ".join(parts) or "(no passes)"


def _rows(result: RunResult) -> list[dict[str, str]]:
    base = result.input["metrics"]
    rows = [
        {
            "id": "input",
            "what": result.input["model"],
            "ppl": _num(base.get("perplexity"), ".3f"),
            "dppl": "",
            "size": _fmt_bytes(base.get("weight_bytes")),
            "ratio": "1.000",
            "decode": _num(base.get("decode_tokens_per_s"), ".1f"),
            "speedup": "1.00",
            "status": "reference",
        }
    ]
    for c in result.candidates:
        m = c.metrics
        if c.status != "ok":
            status = f"failed: {c.error}"
        else:
            tags = (["best"] if c.id == result.best else []) + (["Pareto"] if c.id in result.front else [])
            status = ", ".join(
                tags + (["misses " + "; ".join(c.missed_goals)] if c.missed_goals else ["meets goals"])
            )
        rows.append(
            {
                "id": c.id,
                "what": _describe(c),
                "ppl": _num(m.get("perplexity"), ".3f"),
                "dppl": _num(m.get("perplexity_change_pct"), "+.2f")
                + ("%" if "perplexity_change_pct" in m else ""),
                "size": _fmt_bytes(m.get("weight_bytes")),
                "ratio": _num(m.get("size_ratio"), ".3f"),
                "decode": _num(m.get("decode_tokens_per_s"), ".1f"),
                "speedup": _num(m.get("decode_speedup"), ".2f"),
                "status": status,
            }
        )
    return rows


_HEAD = [
    "candidate",
    "passes",
    "perplexity",
    "change",
    "weights",
    "size ratio",
    "decode tok/s",
    "speedup",
    "status",
]
_KEYS = ["id", "what", "ppl", "dppl", "size", "ratio", "decode", "speedup", "status"]


def _plots(result: RunResult) -> dict[str, bytes]:
    """PNG bytes of perplexity against size and against decode speed, the front drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [c for c in result.candidates if c.status == "ok" and c.metrics.get("perplexity") is not None]
    base = result.input["metrics"]
    out = {}
    for name, key, label in (
        ("ppl_vs_size", "weight_bytes", "weight bytes (MiB)"),
        ("ppl_vs_decode", "decode_tokens_per_s", "decode tokens/s"),
    ):
        if base.get(key) is None or not any(c.metrics.get(key) is not None for c in ok):
            continue
        scale = 1 / 2**20 if key == "weight_bytes" else 1.0
        fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
        pts = [
            (c.metrics[key] * scale, c.metrics["perplexity"], c) for c in ok if c.metrics.get(key) is not None
        ]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], c="tab:blue", label="candidates", zorder=2)
        for x, y, c in pts:
            ax.annotate(c.id, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        # The front of the two metrics this plot shows (the run's front spans all objectives).
        pair = [("perplexity", False), (key, key == "decode_tokens_per_s")]
        front_idx = pareto_front([p[2].metrics for p in pts], pair)
        front = sorted((pts[i] for i in front_idx), key=lambda p: p[0])
        if front:
            ax.plot([p[0] for p in front], [p[1] for p in front], "-o", color="tab:orange",
                    label="Pareto front of these two", zorder=3)  # fmt: skip
        best = [p for p in pts if p[2].id == result.best]
        if best:
            ax.scatter(
                [best[0][0]],
                [best[0][1]],
                s=160,
                facecolors="none",
                edgecolors="tab:red",
                label="best",
                zorder=4,
            )
        if base.get("perplexity") is not None:
            ax.scatter(
                [base[key] * scale], [base["perplexity"]], marker="*", s=150, c="k", label="input", zorder=4
            )
        ax.set_xlabel(label)
        ax.set_ylabel("perplexity")
        ys = [p[1] for p in pts] + ([base["perplexity"]] if base.get("perplexity") else [])
        if max(ys) / min(ys) > 3:  # a log axis only where the range asks for one
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        out[name] = buf.getvalue()
    return out


def write_report(result: RunResult, cfg: RunConfig) -> tuple[Path, Path]:
    out = result.output_dir
    rows = _rows(result)
    base = result.input["metrics"]
    best = result.best_candidate
    goals = {k: v for k, v in cfg.evaluate.goals.model_dump().items() if v is not None}
    threads = base.get("threads")
    facts = [
        f"Input: `{result.input['model']}` ({result.input['path']})",
        f"Evaluation: perplexity over {base.get('perplexity_tokens', 'n/a')} tokens of dataset "
        f"`{cfg.evaluate.data}` (windows of {base.get('perplexity_seq_len')}); decode speed at batch 1"
        + (f", {threads} threads" if threads else ""),
        f"Goals: {goals or 'none'}; priority: {', '.join(cfg.evaluate.priority)}",
    ]
    if best is not None:
        chosen = [f"Chosen: **{best.id}**, {_describe(best)}", f"Model: `{out / 'model'}`"]
        chosen += [f"Artifact {k}: `{out / k.replace('.', '-')}`" for k in best.artifacts]
        chosen += [
            f"Not exported by {p['name']}: {p['info']['skipped']}"
            for p in best.passes
            if (p.get("info") or {}).get("skipped")
        ]
    else:
        chosen = ["Chosen: none; no candidate met the goals (see the status column)."]
    plots = _plots(result)
    for name, png in plots.items():
        write_atomic(out / f"{name}.png", png)

    md = [
        "# slmops run report",
        "",
        *[f"- {f}" for f in facts + chosen],
        "",
        "| " + " | ".join(_HEAD) + " |",
        "|" + "---|" * len(_HEAD),
    ]
    md += ["| " + " | ".join(r[k].replace("|", "\\|") for k in _KEYS) + " |" for r in rows]
    md += [""] + [f"![{name}]({name}.png)" for name in plots]
    md += ["", f"Every candidate and its metrics: `{out / 'run_history.json'}`; log: `{out / 'run.log'}`."]
    md_path = out / "report.md"
    write_atomic(md_path, "\n".join(md) + "\n")

    def esc(s: str) -> str:
        return html.escape(s).replace("**", "")

    table = "<table><tr>" + "".join(f"<th>{h}</th>" for h in _HEAD) + "</tr>"
    for r in rows:
        cls = ' class="best"' if best is not None and r["id"] == best.id else ""
        table += f"<tr{cls}>" + "".join(f"<td>{esc(r[k])}</td>" for k in _KEYS) + "</tr>"
    table += "</table>"
    imgs = "".join(
        f'<figure><img alt="{n}" src="data:image/png;base64,{base64.b64encode(p).decode()}"></figure>'
        for n, p in plots.items()
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>slmops run report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:80em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}tr.best{{background:#e8f5e9}}
figure{{display:inline-block;margin:1em}}</style></head><body><h1>slmops run report</h1>
<ul>{"".join(f"<li>{esc(f)}</li>" for f in facts + chosen)}</ul>{table}{imgs}
<p>Every candidate and its metrics: <code>{esc(str(out / "run_history.json"))}</code>; log:
<code>{esc(str(out / "run.log"))}</code>.</p></body></html>
"""
    html_path = out / "report.html"
    write_atomic(html_path, page)
    return md_path, html_path
