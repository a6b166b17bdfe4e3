"""The RAG demo's terminal output (``make demo``) reads at 80 columns and leaves no folder behind."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

from rich.console import Console

from semgrad_guard import Guard, GuardPolicy, MockScorer

COOKBOOK = Path(__file__).resolve().parents[4] / "cookbook" / "langchain_rag_gating.py"
LONG = (
    "The Orbitra Science Museum was founded in 1962 by the astronomer Helena Marsh, who donated her "
    "private observatory and collection of meteorites to the city on the condition that admission "
    "for schoolchildren would always remain free of charge."
)


def _cookbook() -> Any:
    spec = importlib.util.spec_from_file_location("langchain_rag_gating", COOKBOOK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_demo_table_reads_at_80_columns() -> None:
    policy = GuardPolicy.from_dict(
        {"rules": [{"name": "ok", "field": "semgrad", "max": 0.5, "action": "accept"}, {"action": "abstain"}]}
    )
    guard = Guard(policy, scorer=MockScorer(lambda m, a: 0.1 if a == LONG else 0.9))
    questions = [("Who founded the Orbitra Science Museum?", True), ("Who is the director?", False)]
    results = [guard.check(q, LONG if ok else "Dr. Somebody Unknowable-Longname.") for q, ok in questions]
    console = Console(width=80, record=True, color_system=None)
    _cookbook().render(questions, results, console, title="Guarded RAG answers")
    text = console.export_text()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    # Words are never cut across lines, and a long answer takes a few full-width lines, not a column.
    flat = re.sub(r"\s+", " ", text)
    for word in LONG.split():
        assert f" {word}" in flat or flat.startswith(word), word
    answer_lines = [ln for ln in lines if ln.strip() and ln.strip().split()[0] in LONG.split()[3:]]
    assert 1 <= len(answer_lines) <= 3, text
    assert "returned: " in text and "abstain" in text  # the abstained answer shows what was returned


def test_the_demo_without_a_review_db_leaves_no_folder_behind(tmp_path: Path, monkeypatch: Any) -> None:
    import tempfile

    from langchain_core.runnables import RunnableLambda
    from langchain_semgrad import ChatSemGrad

    from semgrad_guard import Calibrator

    scorer = MockScorer(lambda m, a: 0.1 if a == "Helena Marsh." else 0.9, answers=["Helena Marsh."])
    fitted = Calibrator.fit(
        [scorer.score("q", a) for a in ["Helena Marsh.", "x"] * 6], [True, False] * 6, features=["semgrad"]
    )
    module = _cookbook()
    monkeypatch.setattr(module, "ChatSemGrad", lambda **kw: ChatSemGrad(scorer=scorer))
    monkeypatch.setattr(module, "build_chain", lambda chat: RunnableLambda(lambda q: [("user", q)]) | chat)
    monkeypatch.setattr(module, "shipped_calibrator", lambda s: (fitted, ""))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    console = Console(width=80, record=True, color_system=None)
    results = module.run([("Who founded the Orbitra Science Museum?", True)], console=console)
    assert len(results) == 1 and list(tmp_path.iterdir()) == []
    assert "temporary (keep them: --review-db FILE)" in console.export_text()
