"""The recipe that trains the reference models shipped in ``slmops/zoo/models``.

    python -m slmops.zoo.train --out python/slmops/zoo/models            # tokenizer, teacher, student
    python -m slmops.zoo.train --out /tmp/zoo --only student --steps 50  # a quick try

Everything is seeded (data order, initialisation), so a rerun on the same machine and the
same torch version gives the same weights. Each model folder gets the Hugging Face files
(config, safetensors, tokenizer, generation config), the loss log by step
(``training_log.jsonl``) and a model card (``README.md``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .corpus import kjv_split
from .tokenizer import train_tokenizer

VOCAB_SIZE = 8192
CONTEXT = 512


@dataclass(frozen=True)
class ModelRecipe:
    """Architecture and schedule of one reference model. Hidden and intermediate sizes are
    multiples of 256 so every quantization format applies (GGUF k-quants use 256-blocks)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    steps: int
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.1
    eval_every: int = 100
    seed: int = 1234

    def llama_config(self) -> Any:
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=VOCAB_SIZE,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            max_position_embeddings=CONTEXT,
            rope_theta=10000.0,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,  # the 8k x hidden embedding is most of a model this small
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=3,
        )


# Student: a quarter of the teacher's non-embedding parameters (the tied 8192 x 256
# embedding, 2.1M, is shared by construction and cannot shrink with hidden >= 256).
RECIPES: dict[str, ModelRecipe] = {
    "kjv-teacher": ModelRecipe(256, 768, 6, 4, 2, steps=1200),
    "kjv-student": ModelRecipe(256, 512, 2, 4, 2, steps=600),
}


def _encode_split(tokenizer: Any, split: str) -> np.ndarray:
    """A split as one token stream, chapters separated by the end-of-text token."""
    ids: list[int] = []
    for chapter in kjv_split(split).split("\n\n"):
        ids.extend(tokenizer(chapter, add_special_tokens=False)["input_ids"])
        ids.append(tokenizer.bos_token_id)  # <|endoftext|> doubles as the document separator
    return np.asarray(ids, dtype=np.int64)


def _lr_at(step: int, recipe: ModelRecipe) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    return recipe.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress))))


def _validation_loss(model: Any, stream: np.ndarray) -> float:
    """Mean next-token loss over non-overlapping CONTEXT windows of the validation stream."""
    import torch

    n = (len(stream) - 1) // CONTEXT
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, n, 8):
            rows = range(start, min(n, start + 8))
            x = torch.from_numpy(np.stack([stream[r * CONTEXT : (r + 1) * CONTEXT] for r in rows]))
            y = torch.from_numpy(np.stack([stream[r * CONTEXT + 1 : (r + 1) * CONTEXT + 1] for r in rows]))
            logits = model(input_ids=x).logits
            loss = torch.nn.functional.cross_entropy(
                logits.flatten(0, 1).float(), y.flatten(), reduction="sum"
            )
            total += float(loss)
            count += y.numel()
    model.train()
    return total / count


def train_model(
    name: str, recipe: ModelRecipe, tokenizer: Any, train: np.ndarray, val: np.ndarray, out_dir: Path
) -> dict[str, Any]:
    """Train one model from scratch; keep the weights with the best validation loss."""
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    torch.manual_seed(recipe.seed)
    model = LlamaForCausalLM(recipe.llama_config())
    n_params = sum(p.numel() for p in model.parameters())
    n_embed = model.get_input_embeddings().weight.numel()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr,
        betas=(0.9, 0.95),
    )
    rng = np.random.default_rng(recipe.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "training_log.jsonl"
    best = (float("inf"), -1, None)
    t0 = time.perf_counter()
    print(
        f"[{name}] {n_params / 1e6:.2f}M parameters ({(n_params - n_embed) / 1e6:.2f}M non-embedding)",
        flush=True,
    )
    with open(log_path, "w") as log:
        for step in range(recipe.steps):
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, recipe)
            starts = rng.integers(0, len(train) - CONTEXT - 1, size=recipe.batch_size)
            x = torch.from_numpy(np.stack([train[s : s + CONTEXT] for s in starts]))
            y = torch.from_numpy(np.stack([train[s + 1 : s + CONTEXT + 1] for s in starts]))
            # bf16 autocast (fp32 master weights and loss): 1.75x faster per step than fp32 on
            # an AVX-512 BF16 CPU; validation stays in fp32.
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(input_ids=x).logits
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            record: dict[str, Any] = {
                "step": step + 1,
                "loss": round(loss.item(), 4),
                "lr": _lr_at(step, recipe),
            }
            if (step + 1) % recipe.eval_every == 0 or step + 1 == recipe.steps:
                val_loss = _validation_loss(model, val)
                record["val_loss"] = round(val_loss, 4)
                if val_loss < best[0]:
                    best = (
                        val_loss,
                        step + 1,
                        {k: v.detach().clone() for k, v in model.state_dict().items()},
                    )
                elapsed = time.perf_counter() - t0
                print(
                    f"[{name}] step {step + 1}/{recipe.steps} loss {loss.item():.3f} "
                    f"val {val_loss:.3f} (ppl {math.exp(val_loss):.1f}) {elapsed / 60:.1f} min",
                    flush=True,
                )
            record["elapsed_s"] = round(time.perf_counter() - t0, 1)
            log.write(json.dumps(record) + "\n")
            log.flush()
    train_seconds = time.perf_counter() - t0
    model.load_state_dict(best[2])
    # Shipped in float16: half the bytes of fp32, lossless for evaluation in fp32 to ~3 digits.
    model.to(torch.float16)
    model.generation_config = GenerationConfig(
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=3,
        do_sample=True,
        temperature=0.8,
        top_k=50,
        max_new_tokens=64,
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    shipped = model.float()
    val_loss = _validation_loss(shipped, val)
    sample = _sample(shipped, tokenizer, "And God said", seed=recipe.seed)
    facts = {
        "name": name,
        "parameters": n_params,
        "non_embedding_parameters": n_params - n_embed,
        "recipe": asdict(recipe),
        "train_tokens": int(len(train)),
        "tokens_seen": recipe.steps * recipe.batch_size * CONTEXT,
        "best_step": best[1],
        "validation_loss": round(val_loss, 4),
        "validation_perplexity": round(math.exp(val_loss), 2),
        "validation_tokens": int((len(val) - 1) // CONTEXT * CONTEXT),
        "train_minutes": round(train_seconds / 60, 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "sample_prompt": "And God said",
        "sample": sample,
    }
    (out_dir / "README.md").write_text(_model_card(facts))
    return facts


def _sample(model: Any, tokenizer: Any, prompt: str, seed: int) -> str:
    import torch

    torch.manual_seed(seed)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=48, do_sample=True, temperature=0.8, top_k=50)
    return tokenizer.decode(out[0], skip_special_tokens=True)


def _model_card(f: dict[str, Any]) -> str:
    r = f["recipe"]
    rows = {
        "parameters": f"{f['parameters'] / 1e6:.2f}M "
        f"({f['non_embedding_parameters'] / 1e6:.2f}M non-embedding, embedding tied to the output)",
        "shape": f"hidden {r['hidden_size']}, intermediate {r['intermediate_size']}, "
        f"{r['num_hidden_layers']} layers, {r['num_attention_heads']} heads "
        f"({r['num_key_value_heads']} key/value), context {CONTEXT}, vocabulary {VOCAB_SIZE}",
        "data": "King James Bible (public domain, Debian `bible-kjv-text`), "
        f"train split: {f['train_tokens']:,} tokens",
        "training": f"{r['steps']} steps x {r['batch_size']} x {CONTEXT} tokens ({f['tokens_seen']:,} seen), "
        f"AdamW lr {r['lr']} (warm-up {r['warmup_steps']}, cosine to 10%), weight decay {r['weight_decay']}, "
        f"seed {r['seed']}; {f['train_minutes']} min on {f['threads']} CPU threads (bf16 autocast), "
        f"torch {f['torch']}",
        "kept": f"the step with the best validation loss: {f['best_step']}",
        "validation": f"loss {f['validation_loss']}, perplexity {f['validation_perplexity']} over "
        f"{f['validation_tokens']:,} tokens (non-overlapping {CONTEXT}-token windows), "
        "weights as shipped (float16) evaluated in fp32",
        "weights": "float16 safetensors",
    }
    table = "\n".join(f"| {k} | {v} |" for k, v in rows.items())
    quoted = "\n".join("> " + line for line in f["sample"].splitlines())
    return f"""---
license: other
language: en
library_name: transformers
pipeline_tag: text-generation
---
# {f["name"]}

A Llama-architecture (`LlamaForCausalLM`) reference model trained from scratch by
`python -m slmops.zoo.train`. It exists so that slmops can measure what each compression
costs on real trained weights; it is not a useful language model.

| | |
|---|---|
{table}

Sample (prompt "{f["sample_prompt"]}", temperature 0.8, top-k 50, seed {r["seed"]}):

{quoted}

The loss by step is in `training_log.jsonl`.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="folder that receives one sub-folder per model"
    )
    parser.add_argument("--only", choices=sorted(RECIPES), action="append", help="train only these models")
    parser.add_argument("--steps", type=int, help="override the recipe's step count (for a quick try)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    print("training the tokenizer on the train split", flush=True)
    tokenizer = train_tokenizer([kjv_split("train")], vocab_size=VOCAB_SIZE)
    train, val = _encode_split(tokenizer, "train"), _encode_split(tokenizer, "validation")
    print(f"train {len(train):,} tokens, validation {len(val):,} tokens", flush=True)
    for name in args.only or list(RECIPES):
        recipe = RECIPES[name]
        if args.steps is not None:
            recipe = ModelRecipe(
                **{**asdict(recipe), "steps": args.steps, "eval_every": max(1, args.steps // 4)}
            )
        facts = train_model(name, recipe, tokenizer, train, val, args.out / name)
        print(json.dumps({k: v for k, v in facts.items() if k != "recipe"}, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
