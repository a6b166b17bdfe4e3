"""`semgrad-guard calibrate --data` on score rows (no model) and its error paths."""

from __future__ import annotations

import json

import numpy as np

from semgrad_guard import Calibrator, SemGradScorer
from semgrad_guard.cli import main


def _rows(n=400, seed=0, group=None):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        m = float(rng.exponential(1.0))
        row = {
            "semgrad": float(rng.lognormal(-7, 1)),
            "hybridgrad": float(rng.lognormal(-6, 1)),
            "exgrad": float(rng.lognormal(-5, 1)),
            "nll": float(rng.exponential(3)),
            "mean_nll": m,
            "mean_entropy": float(rng.exponential(1)),
            "correct": bool(rng.uniform() < np.exp(-m)),
        }
        if group:
            row["dataset"] = group
        out.append(row)
    return out


def test_calibrate_writes_a_loadable_calibrator_and_prints_the_report(tmp_path, capsys):
    data = tmp_path / "scores.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(300, 0, "a") + _rows(300, 1, "b")))
    out = tmp_path / "cal.json"
    assert main(["calibrate", "--data", str(data), "--out", str(out), "--alphas", "0.3", "0.5"]) == 0
    cal = Calibrator.load(out)
    assert (
        cal.cv_scheme.startswith("leave-one-group-out")
        and "mean_nll" in cal.features
        and cal.n_samples == 600
    )
    text = capsys.readouterr().out
    assert (
        "ECE out-of-fold" in text
        and "Reliability (out-of-fold)" in text
        and "Risk-controlled thresholds" in text
    )
    assert "0.3" in text


def test_calibrate_rejects_rows_it_cannot_use(tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"semgrad": 1}\n')
    assert main(["calibrate", "--data", str(data)]) == 2
    assert "give scores + 'correct'" in capsys.readouterr().err
    assert main(["calibrate", "--data", str(tmp_path / "missing.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_calibrate_scores_answer_rows_with_the_model(tmp_path, capsys):
    from semgrad_guard.testing import tiny_chat_model

    model, tok = tiny_chat_model("qwen2", tie_word_embeddings=False)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    rows = [
        {
            "question": f"What is {i} plus {i}?",
            "answer": str(2 * i) if i % 3 else "no idea",
            "correct": bool(i % 3),
        }
        for i in range(24)
    ]
    data = tmp_path / "answers.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "cal.json"
    argv = [
        "calibrate",
        "--model",
        str(tmp_path / "m"),
        "--data",
        str(data),
        "--out",
        str(out),
        "--method",
        "platt",
    ]
    assert main([*argv, "--features", "mean_nll"]) == 0
    cal = Calibrator.load(out)
    # Fitted on the scorer's own scores of those answers.
    scorer = SemGradScorer.from_pretrained(str(tmp_path / "m"))
    direct = Calibrator.fit(
        [scorer.score(r["question"], r["answer"]) for r in rows],
        [r["correct"] for r in rows],
        method="platt",
        features=["mean_nll"],
    )
    assert cal.params == direct.params and cal.n_samples == 24


def test_calibrate_answers_and_labels_question_rows(tmp_path):
    from semgrad_guard.eval.correctness import contains
    from semgrad_guard.testing import tiny_chat_model

    model, tok = tiny_chat_model("qwen2", tie_word_embeddings=False)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    scorer = SemGradScorer.from_pretrained(str(tmp_path / "m"))
    questions = [f"Say something about {i}." for i in range(12)]
    # The tiny random model's greedy answers are fixed; "rehearsal" is in some of them (both labels).
    answers = [scorer.generate(q, max_new_tokens=4)[0] for q in questions]
    expected = [contains(a, ["rehearsal"]) for a in answers]
    assert 2 <= sum(expected) <= 10
    data = tmp_path / "questions.jsonl"
    data.write_text(
        "".join(json.dumps({"question": q, "references": ["rehearsal"]}) + "\n" for q in questions)
    )
    out = tmp_path / "c.json"
    argv = ["calibrate", "--model", str(tmp_path / "m"), "--data", str(data), "--out", str(out)]
    assert main([*argv, "--max-new-tokens", "4", "--method", "platt", "--features", "mean_nll"]) == 0
    cal = Calibrator.load(out)
    assert cal.n_samples == 12 and cal.n_correct == sum(expected)


def test_calibrate_on_too_few_rows_fails_before_loading_the_model(tmp_path, capsys):
    data = tmp_path / "few.jsonl"
    rows = [{"question": "Q?", "answer": "A.", "correct": i % 2 == 0} for i in range(4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # The model does not exist: loading it would fail with a different message.
    assert main(["calibrate", "--data", str(data), "--model", str(tmp_path / "no-model")]) == 2
    err = capsys.readouterr().err
    assert "4 rows" in err and "at least 10" in err


def test_calibrate_on_one_class_fails_before_loading_the_model(tmp_path, capsys):
    data = tmp_path / "one-class.jsonl"
    data.write_text(
        "".join(json.dumps({"question": "Q?", "answer": "A.", "correct": True}) + "\n" for _ in range(12))
    )
    assert main(["calibrate", "--data", str(data), "--model", str(tmp_path / "no-model")]) == 2
    assert "0 incorrect" in capsys.readouterr().err
