"""Layer 4: whole-model pruning (magnitude, Wanda, SparseGPT)."""

from .model import METHODS, PATTERNS, PruningSummary, prune_model

__all__ = ["METHODS", "PATTERNS", "PruningSummary", "prune_model"]
