"""Layer 4: evaluation of causal language models (perplexity, speed, memory)."""

from .metrics import METRICS, evaluate

__all__ = ["METRICS", "evaluate"]
