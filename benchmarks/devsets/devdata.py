"""Reading the collected development sets (``benchmarks/results/devsets/*.jsonl``) without the model.

Each row holds SemGrad at every candidate anchor and layer, exgrad in both modes and the likelihood
scores (``collect.py``), so any profile's :class:`~semgrad_guard.ScoreResult` is rebuilt exactly:
semgrad = the mean of the profile's layers at its offset, hybridgrad from that and exgrad.
Used by ``bench_guard.py`` and by the tests that hold the shipped policies to their promises.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semgrad_guard import ScoreResult

DEVSETS = Path(__file__).resolve().parents[1] / "results" / "devsets"
NAMES = ("sciq", "truthfulqa", "rag")
WINDOW = 8
OFFSETS = list(range(-WINDOW, 0))
MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
TRUTHFULQA_THRESHOLD = 0.8
"""MiniLM cosine with the best TruthfulQA reference at which an answer counts as correct. The harness's
default (0.7) labelled three quarters of this model's answers correct, most of them only on topic; 0.8
is stricter and still noisy (no NLI judge runs here): TruthfulQA labels are the weakest of the three."""


@dataclass
class DevSet:
    rows: list[dict]
    window: np.ndarray  # (N, 8, L): semgrad at offset -8..-1 and hidden-state index l
    correct: np.ndarray
    groups: np.ndarray
    model_id: str = MODEL_ID

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def strata(self) -> np.ndarray:
        """Data set and label of each answer ("rag|True"): what splits are stratified by."""
        return np.asarray([f"{g}|{c}" for g, c in zip(self.groups, self.correct, strict=True)])

    def halves(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Two random halves (indices), each holding half of every data set's right and wrong answers."""
        strata = self.strata
        a: list[int] = []
        b: list[int] = []
        for s in np.unique(strata):
            idx = rng.permutation(np.flatnonzero(strata == s))
            a += list(idx[: len(idx) // 2])
            b += list(idx[len(idx) // 2 :])
        return np.asarray(a), np.asarray(b)

    def subset(self, idx: np.ndarray) -> DevSet:
        return DevSet(
            [self.rows[i] for i in idx], self.window[idx], self.correct[idx], self.groups[idx], self.model_id
        )

    def results(
        self, anchor_offset: int, layers: list[int], exgrad_mode: str = "logits"
    ) -> list[ScoreResult]:
        """Every row's ScoreResult under a profile (what the scorer would return for it)."""
        j = OFFSETS.index(anchor_offset)
        sem = self.window[:, j, layers].mean(axis=1)
        out = []
        for r, s in zip(self.rows, sem, strict=True):
            ex = r["exgrad_weight"] if exgrad_mode == "weight" else r["exgrad_logits"]
            alpha = math.exp(-r["mean_entropy"])
            out.append(
                ScoreResult(
                    semgrad=float(s),
                    hybridgrad=alpha * ex + (1 - alpha) * float(s),
                    exgrad=ex,
                    nll=r["nll"],
                    mean_nll=r["mean_nll"],
                    mean_entropy=r["mean_entropy"],
                    answer_tokens=r["answer_tokens"],
                    prompt_tokens=r["prompt_tokens"],
                    anchor_offset=anchor_offset,
                    layers=list(layers),
                    model_id=self.model_id,
                    exgrad_mode=exgrad_mode,  # type: ignore[arg-type]
                )
            )
        return out


def load(names: tuple[str, ...] = NAMES, folder: Path = DEVSETS, model_id: str = MODEL_ID) -> DevSet:
    """The rows of ``names`` in ``folder`` (a model other than the default: ``DEVSETS / <registry name>``)."""
    rows = []
    for name in names:
        path = folder / f"{name}.jsonl"
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                if row["dataset"] == "truthfulqa":
                    row["correct"] = row["labels"]["embedding"] >= TRUTHFULQA_THRESHOLD
                rows.append(row)
    return DevSet(
        rows=rows,
        window=np.asarray([r["window"] for r in rows], dtype=float),
        correct=np.asarray([r["correct"] for r in rows], dtype=bool),
        groups=np.asarray([r["dataset"] for r in rows]),
        model_id=model_id,
    )
