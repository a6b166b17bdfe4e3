"""Evaluation harness: detection quality and cost of SemGrad against sampling baselines.

The command is ``semgrad-guard eval``; see ``docs/eval.md``. Nothing here imports torch at module
level: the sampler and the scorer bring it in when used.
"""

from __future__ import annotations

from .baselines import (
    SAMPLING_METHODS,
    HFSampler,
    SampleSet,
    cluster_by_meaning,
    discrete_semantic_entropy,
    lexical_dissimilarity,
    sampling_scores,
)
from .cache import JsonlCache, settings_key
from .correctness import RULES, contains, normalize, rouge_l, token_f1
from .data import PromptTemplate, Question, load_labels, load_questions
from .metrics import auprc, aurc, auroc, bootstrap, prr, risk_coverage, roc_curve
from .runner import ALL_METHODS, SINGLE_PASS_METHODS, EvalConfig, load_results, run_eval

__all__ = [
    "ALL_METHODS",
    "RULES",
    "SAMPLING_METHODS",
    "SINGLE_PASS_METHODS",
    "EvalConfig",
    "HFSampler",
    "JsonlCache",
    "PromptTemplate",
    "Question",
    "SampleSet",
    "aurc",
    "auprc",
    "auroc",
    "bootstrap",
    "cluster_by_meaning",
    "contains",
    "discrete_semantic_entropy",
    "lexical_dissimilarity",
    "load_labels",
    "load_questions",
    "load_results",
    "normalize",
    "prr",
    "risk_coverage",
    "roc_curve",
    "rouge_l",
    "run_eval",
    "sampling_scores",
    "settings_key",
    "token_f1",
]
