"""Human review: the durable queue abstained or uncertain answers wait in, and what a decision does.

``queue`` holds :class:`~semgrad_guard.ReviewQueue` (the protocol), :class:`~semgrad_guard.SQLiteReviewQueue`
(the SQLite implementation: WAL, final decisions by compare-and-set, an audit trail) and
:func:`apply_review_decision` (a reviewer's decision -> the answer the user gets). ``labels`` turns decided items into labelled
examples (:func:`labelled`), over the protocol, for any backend.
"""

from .labels import LabelCounts, LabelledExample, label_counts, labelled
from .queue import (
    APPLICATION_ID,
    ENV_DB,
    SCHEMA_VERSION,
    AuditEntry,
    ReviewItem,
    ReviewQueue,
    ReviewStatus,
    SQLiteReviewQueue,
    apply_review_decision,
    default_review_db_path,
)

__all__ = [
    "APPLICATION_ID",
    "ENV_DB",
    "SCHEMA_VERSION",
    "AuditEntry",
    "LabelCounts",
    "LabelledExample",
    "ReviewItem",
    "ReviewQueue",
    "ReviewStatus",
    "SQLiteReviewQueue",
    "apply_review_decision",
    "default_review_db_path",
    "label_counts",
    "labelled",
]
