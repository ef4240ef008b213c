"""Layer 4: teacher-to-student distillation in two stages.

Stage 1 (:func:`generate_teacher_data`): the teacher answers a JSONL file of prompts; the
answers, and optionally the teacher's top-k log-probabilities per token, are written as
JSON lines. Stage 2 (:func:`train_student`): the student learns from the teacher's
distribution with the fused linear KD loss, on stage 1's records or on plain text, the
teacher online (a model) or offline (the stored top-k). :func:`distill` runs both
(``slmops.distill_model`` at the package root).

    slmops.distill_model("kjv-teacher", "kjv-student", "out/", data="train.txt",
                         training={"steps": 200, "temperature": 2.0})
"""

from __future__ import annotations

import sys

from .._deprecation import callable_package
from .._lazy import lazy_getattr

_NAMES = {
    "DistillResult": "api",
    "GenerationOptions": "options",
    "TrainingOptions": "options",
    "distill": "api",
    "generate_teacher_data": "generate",
    "read_prompts": "data",
    "train_student": "train",
}
__all__ = sorted(_NAMES)
__getattr__ = lazy_getattr(__name__, _NAMES)

# slmops.distill was the function distill until 0.2; calling the package still works, for one release.
callable_package(sys.modules[__name__], "distill", "slmops.distill_model")
