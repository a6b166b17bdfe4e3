"""LlamaIndex integration for semgrad-guard: a local chat model that scores its own answers with SemGrad.

The package exports its LLM, as LlamaIndex's LLM packages do; the rest lives in its own module:

- ``llama_index.llms.semgrad.handlers``: ``SemGradEventHandler`` / ``SemGradCallbackHandler`` (score any LLM's
  answers), ``capture_scores``;
- ``llama_index.llms.semgrad.evaluation``: ``SemGradEvaluator``;
- ``llama_index.llms.semgrad.query_engine``: ``SemGradQueryEngine`` (gate a query engine's answers);
- ``llama_index.llms.semgrad.workflow``: ``SemGradReviewWorkflow`` (human review as workflow events).

Importing those names from the package itself still works in 0.2, with a DeprecationWarning.
"""

import importlib as _importlib
import warnings as _warnings
from typing import Any as _Any

from llama_index.llms.semgrad._convert import SCORE_KEY, score_from_response
from llama_index.llms.semgrad.base import SemGradLLM

__all__ = ["SCORE_KEY", "SemGradLLM", "score_from_response"]

_MOVED = {
    "ScoreCapture": "handlers",
    "ScoredAnswer": "handlers",
    "SemGradCallbackHandler": "handlers",
    "SemGradEventHandler": "handlers",
    "capture_scores": "handlers",
    "SemGradEvaluator": "evaluation",
    "default_qa_messages": "evaluation",
    "SemGradQueryEngine": "query_engine",
    "guard_result_from_response": "query_engine",
    "widen_similarity_top_k": "query_engine",
    "ReviewDecision": "workflow",
    "ReviewRequired": "workflow",
    "SemGradReviewWorkflow": "workflow",
}


def __getattr__(name: str) -> _Any:
    if name == "generation_overrides":
        where = "semgrad_guard"
    elif name in _MOVED:
        where = f"{__name__}.{_MOVED[name]}"
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    _warnings.warn(
        f"import {name} from {where} (importing it from {__name__} goes away in 0.3)",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(_importlib.import_module(where), name)
