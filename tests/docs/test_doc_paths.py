"""The commands in the docs name policy files a reader has: the repository's, or plainly their own.

A newcomer copies ``semgrad-guard serve --policy policy.yaml`` and gets "does not exist": every
``--policy FILE.yaml`` in README.md, docs/ and the integration READMEs names a file of the checkout
(from the root, or from cookbook/ for the cookbook README), a shipped name (``first-day``), or one
spelled ``my-*.yaml``: the reader's own (the feedback loop's policy with ``audit:`` added).
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = [
    REPO / "README.md",
    *sorted((REPO / "docs").glob("*.md")),
    *sorted(REPO.glob("integrations/*/README.md")),
]
POLICY = re.compile(r"--policy\s+(?P<file>[\w./-]+\.ya?ml)\b")


def test_every_policy_file_a_command_names_exists_or_is_the_readers_own() -> None:
    missing = []
    for doc in [*DOCS, REPO / "cookbook" / "README.md"]:
        for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            for m in POLICY.finditer(line):
                name = m["file"]
                if Path(name).name.startswith("my-") or name.startswith("/"):
                    continue  # the reader's own file; an absolute path is an example of bad input
                if not ((REPO / name).is_file() or (doc.parent / name).is_file()):
                    missing.append(f"{doc.relative_to(REPO)}:{n}: {name}")
    assert missing == []
