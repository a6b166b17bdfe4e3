"""Sampling baselines: K sampled answers per question, then semantic entropy, lexical similarity and
the number of distinct meanings. torch is imported only inside :class:`HFSampler`.

Semantic clustering stands in for the NLI model of the original semantic entropy (Kuhn et al.,
2023; Farquhar et al., 2024): two answers share a meaning when their MiniLM embeddings have cosine
similarity >= ``threshold`` (a symmetric, hence bidirectional, test) or their normalised texts are
equal. Each answer joins the first cluster whose first member it matches, as in the original
greedy algorithm. Semantic entropy is the discrete variant (cluster frequencies), which needs no
sequence likelihoods.

Example:
    >>> clusters = cluster_by_meaning(["Paris", "paris.", "Lyon"], threshold=0.8)
    >>> clusters
    [0, 0, 1]
    >>> round(discrete_semantic_entropy(clusters), 4)
    0.6365
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigurationError
from .correctness import Embedder, default_embedder, normalize, rouge_l_pair

SAMPLING_METHODS: tuple[str, ...] = ("semantic_entropy", "lexical_similarity", "num_meanings")
"""Sampling-based methods, by name; higher = more uncertain for each (lexical is 1 - similarity)."""

DEFAULT_CLUSTER_THRESHOLD = 0.8
"""Cosine similarity at which two MiniLM embeddings count as the same meaning."""


@dataclass
class SampleSet:
    """K sampled answers for one question, and what producing them cost."""

    answers: list[str]
    model_calls: int
    generated_tokens: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


class HFSampler:
    """Draws K answers in one batched ``model.generate`` call (``num_return_sequences=K``), seeded.

    Works with a :class:`~semgrad_guard.SemGradScorer` (uses its chat template, prompt ids and
    end-of-turn ids) so the sampled answers come from exactly the prompt the greedy answer had.

    Example:
        >>> from semgrad_guard.testing import tiny_scorer
        >>> s = HFSampler(tiny_scorer("qwen2"))
        >>> out = s.sample("Name a colour.", k=3, max_new_tokens=4, seed=0)
        >>> len(out.answers), out.model_calls <= 4
        (3, True)
    """

    def __init__(self, scorer: Any) -> None:
        self.scorer = scorer
        self.model = scorer.model
        self.tokenizer = scorer.tokenizer

    def sample(
        self, messages: Any, k: int, *, temperature: float = 1.0, max_new_tokens: int = 32, seed: int = 0
    ) -> SampleSet:
        import torch

        if k < 1:
            raise ConfigurationError(f"number of samples must be >= 1, got {k}")
        if temperature <= 0:
            raise ConfigurationError(f"sampling temperature must be > 0, got {temperature}")
        x = self.scorer.prompt_ids(messages)
        eos = list(self.scorer.eos_token_ids)
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([x], device=device)
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=True,
                temperature=temperature,
                top_k=0,  # plain sampling at temperature T: no top-k / top-p truncation
                top_p=1.0,
                num_return_sequences=k,
                max_new_tokens=max_new_tokens,
                eos_token_id=eos,
                pad_token_id=eos[0],
            )
        seconds = time.perf_counter() - t0
        gen = out[:, len(x) :].tolist()
        answers, tokens = [], 0
        for row in gen:
            y = row
            for i, t in enumerate(row):
                if t in eos:
                    y = row[: i + 1]
                    break
            tokens += len(y)
            answers.append(
                self.tokenizer.decode([t for t in y if t not in eos], skip_special_tokens=True).strip()
            )
        return SampleSet(answers=answers, model_calls=len(gen[0]), generated_tokens=tokens, seconds=seconds)


def cluster_by_meaning(
    answers: Sequence[str], *, threshold: float = DEFAULT_CLUSTER_THRESHOLD, embedder: Embedder | None = None
) -> list[int]:
    """Cluster id per answer (0, 1, ...), greedily against each cluster's first member."""
    if not answers:
        raise ConfigurationError("cannot cluster an empty list of answers")
    emb = embedder or default_embedder()
    vectors = emb.encode([a if a.strip() else "(empty)" for a in answers])
    norm = [normalize(a) for a in answers]
    reps: list[int] = []
    ids: list[int] = []
    for i in range(len(answers)):
        for c, r in enumerate(reps):
            if norm[i] == norm[r] or float(vectors[i] @ vectors[r]) >= threshold:
                ids.append(c)
                break
        else:
            reps.append(i)
            ids.append(len(reps) - 1)
    return ids


def discrete_semantic_entropy(cluster_ids: Sequence[int]) -> float:
    """Entropy (nats) of the cluster frequencies."""
    counts = Counter(cluster_ids)
    n = len(cluster_ids)
    return float(-sum(c / n * math.log(c / n) for c in counts.values()))


def lexical_dissimilarity(answers: Sequence[str]) -> float:
    """1 - mean pairwise ROUGE-L F-measure among the samples (0 when all agree word for word)."""
    if len(answers) < 2:
        raise ConfigurationError("lexical similarity needs at least 2 samples")
    pairs = [(i, j) for i in range(len(answers)) for j in range(i + 1, len(answers))]
    return 1.0 - sum(rouge_l_pair(answers[i], answers[j]) for i, j in pairs) / len(pairs)


def sampling_scores(
    answers: Sequence[str], *, threshold: float = DEFAULT_CLUSTER_THRESHOLD, embedder: Embedder | None = None
) -> dict[str, float]:
    """All sampling-based uncertainty scores for one question's samples (higher = more uncertain)."""
    ids = cluster_by_meaning(answers, threshold=threshold, embedder=embedder)
    return {
        "semantic_entropy": discrete_semantic_entropy(ids),
        "lexical_similarity": lexical_dissimilarity(answers) if len(answers) > 1 else 0.0,
        "num_meanings": float(len(set(ids))),
    }
