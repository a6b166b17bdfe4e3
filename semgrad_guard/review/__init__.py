"""Human review: the durable queue abstained or uncertain answers wait in, and what a decision does.

``queue`` holds :class:`~semgrad_guard.ReviewQueue` (the protocol), :class:`~semgrad_guard.SQLiteReviewQueue`
(the SQLite implementation: WAL, final decisions by compare-and-set, an audit trail) and
:func:`apply_review_decision` (a reviewer's decision -> the answer the user gets). ``labels`` turns decided items into labelled
examples (:func:`labelled`), over the protocol, for any backend. ``postgres`` holds
:class:`~semgrad_guard.PostgresReviewQueue` (the same queue on a shared PostgreSQL server).
"""

from .labels import LabelCounts, LabelledExample, label_counts, labelled
from .postgres import PostgresReviewQueue
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
    default_review_db,
    open_review_queue,
    review_db_name,
    warn_if_password_in_url,
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
    "default_review_db",
    "label_counts",
    "labelled",
    "PostgresReviewQueue",
    "open_review_queue",
    "review_db_name",
    "warn_if_password_in_url",
]
