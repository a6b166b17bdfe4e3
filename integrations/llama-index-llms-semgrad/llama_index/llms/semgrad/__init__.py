"""LlamaIndex integration for semgrad-guard: a local chat model that scores its own answers with SemGrad.

The package exports its LLM, as LlamaIndex's LLM packages do; the rest lives in its own module:

- ``llama_index.llms.semgrad.handlers``: ``SemGradEventHandler`` / ``SemGradCallbackHandler`` (score any LLM's
  answers), ``capture_scores``;
- ``llama_index.llms.semgrad.evaluation``: ``SemGradEvaluator``;
- ``llama_index.llms.semgrad.query_engine``: ``SemGradQueryEngine`` (gate a query engine's answers);
- ``llama_index.llms.semgrad.workflow``: ``SemGradReviewWorkflow`` (human review as workflow events).
"""

from llama_index.llms.semgrad._convert import score_from_response
from llama_index.llms.semgrad.base import SemGradLLM

__all__ = ["SemGradLLM", "score_from_response"]
