"""`semgrad-guard eval --limit 20` on the embedded model, end to end, and the report files it writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from semgrad_guard.cli import main

pytestmark = pytest.mark.integration

SCIQ = Path(__file__).parents[3] / "shared" / "data" / "sciq" / "test.jsonl"
_OWN_QUESTIONS = [
    {"query": q, "truthful answer": [a]}
    for q, a in [
        ("What is the capital of France?", "paris"),
        ("How many legs does a spider have?", "eight"),
        ("What gas do plants absorb for photosynthesis?", "carbon dioxide"),
        ("What is frozen water called?", "ice"),
        ("Which planet is known as the red planet?", "mars"),
        ("What is the largest planet in the solar system?", "jupiter"),
        ("What organ pumps blood through the body?", "heart"),
        ("What is H2O commonly called?", "water"),
        ("Which star is at the centre of our solar system?", "sun"),
        ("How many days are in a week?", "seven"),
        ("What force pulls objects toward the Earth?", "gravity"),
        ("What do bees make?", "honey"),
        ("What is the boiling point of water in Celsius?", "100"),
        ("Which metal is liquid at room temperature?", "mercury"),
        ("What do caterpillars turn into?", "butterflies"),
        ("What is the chemical symbol for gold?", "au"),
        ("Which animal is the largest mammal?", "blue whale"),
        ("What is the hardest natural substance?", "diamond"),
        ("What part of the plant absorbs water from the soil?", "roots"),
        ("What is the closest planet to the Sun?", "mercury"),
    ]
]


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval")
    data = SCIQ
    if not data.is_file():  # a checkout without the shared data beside it: 20 questions of our own
        data = out / "questions.jsonl"
        data.write_text("".join(json.dumps(q) + "\n" for q in _OWN_QUESTIONS))
    argv = [
        "eval",
        "--data",
        str(data),
        "--out",
        str(out),
        "--limit",
        "20",
        "--samples",
        "3",
        "--max-new-tokens",
        "16",
        "--bootstrap",
        "200",
        "--quiet",
    ]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def results(eval_dir: Path) -> dict[str, Any]:
    return json.loads((eval_dir / "results.json").read_text())  # type: ignore[no-any-return]


def test_every_method_is_measured(results: dict[str, Any]) -> None:
    main_block, sub = results["main"], results["subset"]
    assert main_block["n"] == sub["n"] == 20
    assert set(main_block["methods"]) == {
        "semgrad",
        "hybridgrad",
        "exgrad",
        "nll",
        "mean_nll",
        "mean_entropy",
        "rauq",  # the single-pass peers, from one eager pass over the same answer
        "attention_score",
    }
    assert set(sub["methods"]) == set(main_block["methods"]) | {
        "semantic_entropy",
        "lexical_similarity",
        "num_meanings",
    }
    assert 0.0 < main_block["accuracy"] < 1.0, "a 135M model gets some SciQ answers right and some wrong"
    for row in sub["methods"].values():
        a = row["auroc"]
        assert 0.0 <= a["low"] <= a["value"] <= a["high"] <= 1.0
        assert row["cost"]["seconds"] > 0
    sampling = sub["methods"]["semantic_entropy"]["cost"]
    assert sampling["extra_seconds"] > 0
    assert sampling["generated_tokens"] > sub["methods"]["semgrad"]["cost"]["generated_tokens"]


def test_examples_hold_answers_rules_and_samples(eval_dir: Path) -> None:
    rows = [json.loads(line) for line in (eval_dir / "examples.jsonl").read_text().splitlines()]
    assert len(rows) == 20
    for r in rows:
        assert r["answer"].strip()
        assert set(r["rule_values"]) == {"contains", "f1", "rougeL", "embedding"}
        assert r["correct"] == (r["rule_values"]["contains"] == 1.0)
        assert len(r["samples"]) == 3
        assert r["scores"]["semgrad"] > 0 and r["scores"]["num_meanings"] >= 1


def test_report_and_plots(eval_dir: Path, results: dict[str, Any]) -> None:
    report = (eval_dir / "report.md").read_text()
    assert "SmolLM2-135M-Instruct" in report and "Correctness rule: **contains**" in report
    for name in results["plots"]["main"] + results["plots"]["subset"]:
        path = eval_dir / name
        assert path.read_bytes()[:4] == b"\x89PNG", name
        assert f"]({name})" in report
    assert len(results["plots"]["subset"]) == 4


def test_rerun_reuses_the_cache(eval_dir: Path) -> None:
    before = (eval_dir / "generations.jsonl").read_text()
    argv = [
        "eval",
        "--data",
        str(SCIQ if SCIQ.is_file() else eval_dir / "questions.jsonl"),
        "--out",
        str(eval_dir),
        "--limit",
        "20",
        "--samples",
        "3",
        "--max-new-tokens",
        "16",
        "--methods",
        "semgrad,lexical_similarity",
        "--bootstrap",
        "0",
        "--no-plots",
        "--quiet",
    ]
    assert main(argv) == 0
    assert (eval_dir / "generations.jsonl").read_text() == before
    again = json.loads((eval_dir / "results.json").read_text())
    assert set(again["subset"]["methods"]) == {"semgrad", "lexical_similarity"}
