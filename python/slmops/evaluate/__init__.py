"""Layer 4: evaluation of causal language models (perplexity, speed, memory).

slmops.evaluate_model(model, tokenizer, metrics=["perplexity"], data=text)  # = slmops.evaluate.evaluate
"""

import sys

from .._deprecation import callable_package
from .metrics import METRICS, evaluate

__all__ = ["METRICS", "evaluate"]

# slmops.evaluate was the function evaluate until 0.2; calling the package still works, for one release.
callable_package(sys.modules[__name__], "evaluate", "slmops.evaluate_model")
