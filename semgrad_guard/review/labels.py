"""Review decisions as labels: every decided item is a labelled example of the deployment's own data.

Approve means the answer was right; reject or edit means it was wrong (an edit also gives the right
answer); ``cannot_tell`` is left out and counted. Each example keeps the scores it was judged on,
the calibrator and policy versions that judged it, who decided and when, and its weight: the
inverse of the item's inclusion probability (1 for review items, ``1 / rate`` for audit items), so
a weighted fit stands for every answer served, not only those the policy doubted.

Written over the :class:`~semgrad_guard.review.queue.ReviewQueue` protocol's ``list`` only: any
backend (SQLite, PostgreSQL) gets it for free.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from ..results import ScoreResult
from .queue import ItemKind, ReviewItem, ReviewQueue, ReviewStatus

LABEL_STATUSES = (ReviewStatus.APPROVED, ReviewStatus.REJECTED, ReviewStatus.EDITED)
"""The decisions that are labels (``cannot_tell`` is final but not a label)."""


class LabelledExample(BaseModel):
    """One reviewed answer as a label: its scores, whether it was right, and its weight."""

    model_config = ConfigDict(frozen=True)

    item_id: int
    """The review item it comes from."""
    result: ScoreResult
    """The scores it was judged on."""
    correct: bool
    """True when approved; False when rejected or edited."""
    weight: float
    """1 / inclusion_probability: how many served answers this label stands for."""
    kind: ItemKind = "review"
    """'review' or 'audit'."""
    inclusion_probability: float = 1.0
    """The chance it was sampled into the queue."""
    status: str
    """approved, rejected or edited."""
    confidence: float | None = None
    """The confidence it was judged with."""
    calibrator_version: str | None = None
    """Fingerprint of the calibrator that judged it."""
    policy_version: str | None = None
    """Fingerprint of the policy that judged it."""
    reviewer: str | None = None
    """Who decided."""
    created_at: str
    """When it was queued."""
    decided_at: str | None = None
    """When it was decided."""
    correct_answer: str | None = None
    """The reviewer's answer, for an edit."""
    repeat_of: int | None = None
    """The item whose decision it took (the same chat and answer, judged there): a label that cost
    no one's time, standing for the traffic that repeated the answer."""

    def to_row(self) -> dict[str, Any]:
        """A JSONL row that ``semgrad-guard calibrate --data`` reads (scores, ``correct``, ``weight``)."""
        row: dict[str, Any] = dict(self.result.scores())
        row.update(
            correct=self.correct,
            weight=self.weight,
            result=self.result.model_dump(mode="json"),
            **self.model_dump(mode="json", exclude={"result", "correct", "weight"}),
        )
        return row


class LabelCounts(BaseModel):
    """How many decided items a queue holds, and how many of them are labels."""

    model_config = ConfigDict(frozen=True)

    labelled: int = 0
    """Approved, rejected or edited, with scores: usable for fitting."""
    audit: int = 0
    """Of the labelled, how many are audit items."""
    repeats: int = 0
    """Of the labelled, how many took an earlier decision on the same chat and answer (no one's time)."""
    cannot_tell: int = 0
    """Decided as cannot tell (excluded from fitting)."""
    unscored: int = 0
    """Decided, but scoring had failed (no scores to fit on)."""
    pending: int = 0
    """Waiting for a reviewer."""


def label_of(item: ReviewItem) -> LabelledExample | None:
    """The label a decided item gives, or None (pending, cannot_tell, or no scores)."""
    if item.status not in LABEL_STATUSES or item.result is None:
        return None
    return LabelledExample(
        item_id=item.id,
        result=item.result,
        correct=item.status is ReviewStatus.APPROVED,
        weight=1.0 / item.inclusion_probability,
        kind=item.kind,
        inclusion_probability=item.inclusion_probability,
        status=item.status.value,
        confidence=item.confidence,
        calibrator_version=item.calibrator_version,
        policy_version=item.policy_version,
        reviewer=item.reviewer,
        created_at=item.created_at,
        decided_at=item.decided_at,
        correct_answer=item.final_answer if item.status is ReviewStatus.EDITED else None,
        repeat_of=item.repeat_of,
    )


def labels_from_items(items: Iterable[ReviewItem]) -> list[LabelledExample]:
    """The labels among ``items``, oldest first."""
    out = [lab for lab in (label_of(it) for it in items) if lab is not None]
    return sorted(out, key=lambda lab: lab.item_id)


def labelled(queue: ReviewQueue) -> list[LabelledExample]:
    """Every label the queue holds (approved, rejected, edited items with scores), oldest first.

    Example:
        >>> import os, tempfile
        >>> from semgrad_guard import MockScorer, SQLiteReviewQueue
        >>> q = SQLiteReviewQueue(os.path.join(tempfile.mkdtemp(), "review.db"))
        >>> r = MockScorer(lambda m, a: 0.2).score("q", "a")
        >>> a = q.enqueue("q", "a", result=r)
        >>> b = q.enqueue("q", "b", result=r, kind="audit", inclusion_probability=0.05)
        >>> _ = q.approve(a), q.reject(b)
        >>> [(lab.correct, lab.weight) for lab in labelled(q)]
        [(True, 1.0), (False, 20.0)]
        >>> q.close()
    """
    items: list[ReviewItem] = []
    for status in LABEL_STATUSES:
        items.extend(queue.list(status))
    return labels_from_items(items)


def label_counts(queue: ReviewQueue) -> LabelCounts:
    """Labelled, audit, cannot_tell, unscored and pending counts (what the drift warning and
    ``calibrate --from-reviews`` report)."""
    labels = labelled(queue)
    unscored = sum(1 for s in LABEL_STATUSES for it in queue.list(s) if it.result is None)
    return LabelCounts(
        labelled=len(labels),
        audit=sum(1 for lab in labels if lab.kind == "audit"),
        repeats=sum(1 for lab in labels if lab.repeat_of is not None),
        cannot_tell=len(queue.list(ReviewStatus.CANNOT_TELL)),
        unscored=unscored,
        pending=len(queue.list(ReviewStatus.PENDING)),
    )


def label_count(queue: ReviewQueue) -> int:
    """How many decided items (approved, rejected, edited) the queue holds: one count query where
    the queue has ``counts()`` (both shipped backends), else :func:`labelled`'s length."""
    counts = getattr(queue, "counts", None)
    if callable(counts):
        by_status = counts()
        return sum(int(by_status.get(s.value, 0)) for s in LABEL_STATUSES)
    return len(labelled(queue))


def weights_of(labels: Sequence[LabelledExample]) -> list[float]:
    """The labels' inverse-inclusion weights."""
    return [lab.weight for lab in labels]
