"""LlamaIndex integration for semgrad-guard: score local chat-model answers with SemGrad and gate them."""

from llama_index.llms.semgrad._convert import SCORE_KEY, score_from_response
from llama_index.llms.semgrad.base import SemGradLLM, generation_overrides
from llama_index.llms.semgrad.evaluation import SemGradEvaluator, default_qa_messages
from llama_index.llms.semgrad.handlers import (
    ScoreCapture,
    ScoredAnswer,
    SemGradCallbackHandler,
    SemGradEventHandler,
    capture_scores,
)
from llama_index.llms.semgrad.query_engine import (
    SemGradQueryEngine,
    guard_result_from_response,
    widen_similarity_top_k,
)
from llama_index.llms.semgrad.workflow import ReviewDecision, ReviewRequired, SemGradReviewWorkflow

__all__ = [
    "SCORE_KEY",
    "ReviewDecision",
    "ReviewRequired",
    "ScoreCapture",
    "ScoredAnswer",
    "SemGradCallbackHandler",
    "SemGradEvaluator",
    "SemGradEventHandler",
    "SemGradLLM",
    "SemGradQueryEngine",
    "SemGradReviewWorkflow",
    "capture_scores",
    "default_qa_messages",
    "generation_overrides",
    "guard_result_from_response",
    "score_from_response",
    "widen_similarity_top_k",
]
