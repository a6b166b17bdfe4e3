"""Append-only JSONL caches for generations and samples, so reruns and new methods reuse work.

Every record carries ``id`` (the question id) and ``key`` (a hash of everything that determines
it: model, prompt, generation settings). Records with another key are ignored, so changing a
setting regenerates instead of mixing results. Each record is flushed and fsync'ed as written; a
half-written last line (the process was killed) is dropped on load, so a run resumes where it
stopped.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "g.jsonl"
    >>> c = JsonlCache(path, key=settings_key({"model": "m"}))
    >>> c.put("q1", {"answer": "Paris"})
    >>> JsonlCache(path, key=settings_key({"model": "m"})).get("q1")["answer"]
    'Paris'
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def settings_key(settings: dict[str, Any]) -> str:
    """A short stable hash of JSON-serialisable settings."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class JsonlCache:
    """Records by question id for one settings key, backed by an append-only JSONL file."""

    def __init__(self, path: str | Path, key: str) -> None:
        self.path = Path(path)
        self.key = key
        self._records: dict[str, dict[str, Any]] = {}
        self.dropped_lines = 0
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        with self.path.open(encoding="utf-8") as f:
            lines = f.read().split("\n")
        for line in lines:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                self.dropped_lines += 1  # an interrupted write; the example is redone
                continue
            if rec.get("key") == self.key and "id" in rec:
                self._records[str(rec["id"])] = rec
        if self.dropped_lines:
            logger.warning(
                "%s: dropped %d unreadable line(s) (interrupted run?)", self.path, self.dropped_lines
            )
            self._rewrite()

    def _rewrite(self) -> None:
        # Drop the broken tail so later appends start on a fresh line; keep other keys' records.
        good = []
        for line in self.path.read_text(encoding="utf-8").split("\n"):
            try:
                json.loads(line)
            except json.JSONDecodeError:
                continue
            good.append(line)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text("".join(g + "\n" for g in good), encoding="utf-8")
        os.replace(tmp, self.path)

    def __contains__(self, qid: str) -> bool:
        return qid in self._records

    def __len__(self) -> int:
        return len(self._records)

    def get(self, qid: str) -> dict[str, Any] | None:
        return self._records.get(qid)

    def put(self, qid: str, record: dict[str, Any]) -> None:
        """Store and persist one record (flushed and fsync'ed before returning)."""
        rec = {"id": qid, "key": self.key, **record}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._records[qid] = rec
