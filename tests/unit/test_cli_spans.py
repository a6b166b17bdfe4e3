"""`score --spans` and `review show` print span scores (and span decisions) in 80 columns."""

from __future__ import annotations

import json

import pytest

from semgrad_guard import Calibrator, SemGradScorer, open_review_queue
from semgrad_guard.cli import main
from semgrad_guard.spans import SpanDecision
from semgrad_guard.testing import tiny_chat_model

ANSWER = "Paris is the capital. It has a very long name that wraps around the table. Lyon too"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-qwen2")
    model, tok = tiny_chat_model("qwen2", tie_word_embeddings=False)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_score_spans_json_and_table(model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    base = [
        "score",
        "--model",
        str(model_dir),
        "--prompt",
        "Capital of France?",
        "--answer",
        ANSWER,
        "--spans",
    ]
    assert main([*base, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    want = SemGradScorer.from_pretrained(str(model_dir)).score(
        "Capital of France?", ANSWER, spans="sentences"
    )
    assert [s["text"] for s in out["spans"]] == [s.text for s in want.spans]
    assert out["spans"][0]["semgrad"] == pytest.approx(want.spans[0].semgrad, rel=1e-5)
    # With a policy that judges spans: each span's decision, and the text the user would get.
    scorer = SemGradScorer.from_pretrained(str(model_dir))
    rows = [scorer.score("Capital of France?", a) for a in ["Paris.", "Lyon.", "Nice.", "Rome."] * 3]
    cal = Calibrator.fit(rows, [True, False, True, False] * 3, method="platt", features=["mean_nll"])
    cal.save(tmp_path / "spans.json")
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        f"rules: [{{action: accept}}]\nspans: {{calibrator: {tmp_path / 'spans.json'}, drop_below: 1.0}}\n"
    )
    assert main([*base, "--policy", str(policy), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [d["action"] for d in out["span_decisions"]] == ["drop"] * 3 and out["delivered"] == ""
    assert main([*base, "--policy", str(policy)]) == 0
    table = capsys.readouterr().out
    assert "spans (higher = more uncertain)" in table and "drop" in table and "wraps" in table
    assert max(len(line) for line in table.splitlines()) <= 80


def test_review_show_lists_the_spans_and_their_decisions(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    model, tok = tiny_chat_model("llama")
    result = SemGradScorer(model, tok, model_id="tiny").score("Capital?", ANSWER, spans="sentences")
    decisions = [
        SpanDecision(action="keep", confidence=0.9, reason="r", start=s.start, end=s.end, text=s.text)
        for s in result.spans
    ]
    decisions[1] = decisions[1].model_copy(update={"action": "drop", "confidence": 0.05})
    db = tmp_path / "q.db"
    with open_review_queue(db) as q:
        item = q.enqueue(
            "Capital?",
            ANSWER,
            result=result,
            rule="spans.review_below",
            metadata={"span_decisions": [d.model_dump(mode="json") for d in decisions]},
        )
    assert main(["review", "show", str(item), "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "0.05 drop" in out and "0.90 keep" in out and "Lyon too" in out
    assert max(len(line) for line in out.splitlines()) <= 80
