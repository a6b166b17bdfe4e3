"""The README's first example says what the embedded model does: its answers, confidences and verdicts.

test_readme_snippets.py runs the block; this checks that its commented output is what it prints, and
that every verdict is clear of the policy's band edges, so a last-digit change cannot flip one.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from semgrad_guard import Calibrator, Guard, GuardPolicy

REPO = Path(__file__).resolve().parents[2]
OUTPUT = re.compile(r"^# (?P<confidence>\d\.\d\d) (?P<action>[a-z]+) +(?P<answer>.+?)(?: {2,}\(.*\))?$")
MARGIN = 0.05  # calibrated confidence between a verdict and the nearest band edge


def _quickstart() -> tuple[str, list[str], list[re.Match[str]]]:
    """The first python block of README.md: its code, the questions it asks, its commented output."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", text, re.S)
    assert code is not None
    block = code[1]
    loop = next(n for n in ast.walk(ast.parse(block)) if isinstance(n, ast.For))
    questions = ast.literal_eval(loop.iter)
    expected = [m for line in block.splitlines() if (m := OUTPUT.match(line))]
    assert "guard.judge(r)" in block and len(expected) == len(questions) >= 2
    return block, questions, expected


def test_the_quickstart_shows_a_right_and_a_wrong_answer_apart() -> None:
    _, _, expected = _quickstart()
    assert {m["action"] for m in expected} >= {"accept"}
    assert len({m["action"] for m in expected}) == len(expected)  # each verdict a different action


@pytest.mark.integration
def test_the_quickstart_prints_what_its_comments_say_with_a_clear_margin(default_scorer, one_thread) -> None:
    _, questions, expected = _quickstart()
    policy = GuardPolicy.from_yaml(REPO / "cookbook" / "policies" / "default.yaml")
    guard = Guard(policy, scorer=default_scorer, calibrator=Calibrator.default_for(default_scorer.model_id))
    edges = [e for rule in policy.rules for e in (rule.min, rule.max) if e is not None]
    for question, want in zip(questions, expected, strict=True):
        answer, result = default_scorer.generate(question, max_new_tokens=24)
        verdict = guard.judge(result)
        assert answer.startswith(want["answer"].rstrip(". ")), (question, answer)
        assert (f"{verdict.confidence:.2f}", verdict.action.value) == (want["confidence"], want["action"])
        nearest = min(abs(verdict.confidence - e) for e in edges)
        assert nearest >= MARGIN, (
            f"{question!r}: confidence {verdict.confidence:.3f} is {nearest:.3f} from a band edge"
        )
