"""Reading paraphrase files (JSONL: ``query`` or ``question``, and ``paraphrases``): SPS and the sweeps share it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ..errors import ConfigurationError


def read_paraphrase_groups(
    path: str | Path,
    *,
    limit: int | None = None,
    per_group: int | None = None,
    skip: int = 0,
    exclude: Callable[[str], bool] | None = None,
) -> list[list[str]]:
    """Groups of equivalent questions: the original first, then its paraphrases.

    Args:
        path: The JSONL file.
        limit: Stop after this many groups.
        per_group: Keep at most this many questions of each group.
        skip: Skip the file's first ``skip`` lines.
        exclude: Leave out a group if this is true of any of its questions (e.g. questions being evaluated).

    Raises:
        ConfigurationError: the file is missing, or a line is not a JSON object with a ``query`` (str) and
            ``paraphrases`` (list of str).
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigurationError(f"paraphrase file {p} does not exist")
    groups: list[list[str]] = []
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if lineno <= skip or not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigurationError(f"{p}:{lineno}: not JSON ({e.msg})") from e
            original = row.get("query", row.get("question")) if isinstance(row, dict) else None
            paraphrases = row.get("paraphrases") if isinstance(row, dict) else None
            if not isinstance(original, str) or not isinstance(paraphrases, list):
                raise ConfigurationError(
                    f"{p}:{lineno}: expected 'query' (str) and 'paraphrases' (list of str)"
                )
            group = [original, *(str(x) for x in paraphrases)]
            if exclude is not None and any(exclude(q) for q in group):
                continue
            if per_group is not None:
                group = group[:per_group]
            if len(group) >= 2:
                groups.append(group)
            if limit is not None and len(groups) >= limit:
                break
    return groups
