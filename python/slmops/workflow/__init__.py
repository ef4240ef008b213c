"""Layer 5: config-driven runs. A run config names a model, data, passes, evaluation with
goals and a search; the engine runs the candidates (caching every pass output), picks the
Pareto front and the best candidate, and writes ``run_history.json`` and a report."""

from . import passes  # noqa: F401 - registers the built-in passes (the registry imports none)
from .config import ConfigError, RunConfig, load_config, parse_config
from .engine import Engine, expand_search, run_workflow
from .registry import Pass, PassContext, PassOptions, PassOutput, available_passes, get_pass, register_pass
from .results import RunResult, pareto_front

__all__ = [
    "ConfigError",
    "Engine",
    "Pass",
    "PassContext",
    "PassOptions",
    "PassOutput",
    "RunConfig",
    "RunResult",
    "available_passes",
    "expand_search",
    "get_pass",
    "load_config",
    "pareto_front",
    "parse_config",
    "register_pass",
    "run_workflow",
]
