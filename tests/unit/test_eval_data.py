"""Data loading, prompt template, labels file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from semgrad_guard.errors import ConfigurationError
from semgrad_guard.eval.data import PromptTemplate, load_labels, load_questions


def _write(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_both_formats_and_limit(tmp_path: Path) -> None:
    p = _write(
        tmp_path / "q.jsonl",
        [
            {"query": "Q0?", "truthful answer": ["a", "b"]},
            {"question": "Q1?", "answers": "c", "id": "x1"},
            "",
            {"question": "Q2?", "answer": ["d"]},
        ],
    )
    qs = load_questions(p)
    assert [(q.id, q.question, q.references) for q in qs] == [
        ("0", "Q0?", ["a", "b"]),
        ("x1", "Q1?", ["c"]),
        ("3", "Q2?", ["d"]),
    ]
    assert len(load_questions(p, limit=2)) == 2


def test_sciq_file_loads() -> None:
    sciq = Path(__file__).parents[3] / "shared" / "data" / "sciq" / "test.jsonl"
    if not sciq.is_file():
        pytest.skip(f"the shared SciQ data is not beside this checkout ({sciq})")
    qs = load_questions(sciq, limit=5)
    assert len(qs) == 5 and qs[0].references == ["darwin"]


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        (["{not json"], "not valid JSON"),
        ([{"answers": ["a"]}], "no question"),
        ([{"question": "Q", "answers": []}], "no reference answers"),
        ([{"question": "Q", "answers": [1]}], "no reference answers"),
        (
            [{"question": "Q", "answers": "a", "id": 1}, {"question": "R", "answers": "b", "id": 1}],
            "duplicate ids",
        ),
        ([""], "holds no questions"),
    ],
)
def test_bad_data_raises(tmp_path: Path, rows: list[object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        load_questions(_write(tmp_path / "q.jsonl", rows))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_questions(tmp_path / "nope.jsonl")


def test_template() -> None:
    t = PromptTemplate(system=None, user="Question: {question}\nAnswer:")
    assert t.messages("Why?") == [{"role": "user", "content": "Question: Why?\nAnswer:"}]
    with pytest.raises(ValueError, match="must contain"):
        PromptTemplate(user="no field")


def test_labels_jsonl_and_json(tmp_path: Path) -> None:
    a = _write(tmp_path / "l.jsonl", [{"id": 0, "correct": True}, {"id": "b", "correct": False}])
    assert load_labels(a) == {"0": True, "b": False}
    b = tmp_path / "l.json"
    b.write_text(json.dumps({"3": False}))
    assert load_labels(b) == {"3": False}
    bad = _write(tmp_path / "bad.jsonl", [{"id": 0, "correct": "yes"}])
    with pytest.raises(ConfigurationError, match="must be true or false"):
        load_labels(bad)
    with pytest.raises(ConfigurationError, match="malformed"):
        load_labels(_write(tmp_path / "bad2.jsonl", [{"id": 0}]))
