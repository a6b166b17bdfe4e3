"""Every bad input gets a typed error under SemGradGuardError whose message says what is wrong and how to fix it.

docs/errors.md lists these cases as a table (input -> error type -> message); keep the two in step.
"""

from __future__ import annotations

import pytest

from semgrad_guard import ChatTemplateError, ScoringError, SemGradGuardError, SemGradScorer
from semgrad_guard.testing import tiny_chat_model

Q = "What is the chemical symbol for gold?"


@pytest.fixture(scope="module")
def scorer():
    model, tok = tiny_chat_model("llama", tie_word_embeddings=False)
    return SemGradScorer(model, tok, model_id="tiny-llama")


@pytest.mark.parametrize(
    ("answer", "type_name"), [(None, "NoneType"), (42, "int"), (b"Au.", "bytes"), (["Au."], "list")]
)
def test_non_string_answer_is_a_scoring_error_naming_the_type(scorer, answer, type_name) -> None:
    with pytest.raises(ScoringError, match=f"answer must be a string, got {type_name}") as err:
        scorer.score(Q, answer)
    assert not isinstance(err.value, ChatTemplateError)  # not the template's fault


def test_bytes_answer_says_how_to_decode(scorer) -> None:
    with pytest.raises(ScoringError, match=r"decode it first"):
        scorer.score(Q, b"Au.")


@pytest.mark.parametrize(("content", "type_name"), [(42, "int"), (b"hi", "bytes"), ({"text": "hi"}, "dict")])
def test_non_string_message_content_is_a_scoring_error(scorer, content, type_name) -> None:
    with pytest.raises(ScoringError, match=rf"messages\[0\]\['content'\] must be a string, got {type_name}"):
        scorer.score([{"role": "user", "content": content}], "Au.")


def test_message_without_content_raises_as_documented(scorer) -> None:
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user"}]
    with pytest.raises(ScoringError, match=r"messages\[1\] \(user\) has no 'content'"):
        scorer.score(chat, "Au.")
    with pytest.raises(ScoringError, match=r"messages\[0\]\['content'\] must be a string, got NoneType"):
        scorer.score([{"role": "user", "content": None}], "Au.")


def test_assistant_turn_with_only_tool_calls_may_omit_content() -> None:
    from semgrad_guard.messages import normalize_messages

    call = {
        "role": "assistant",
        "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}],
    }
    assert normalize_messages([{"role": "user", "content": "hi"}, call])[1]["content"] == ""


@pytest.mark.parametrize("where", ["prompt", "answer", "system"])
def test_lone_surrogate_is_a_scoring_error(scorer, where) -> None:
    bad = "Gold is \ud800 Au."
    if where == "prompt":
        args: tuple[object, object] = (bad, "Au.")
    elif where == "answer":
        args = (Q, bad)
    else:
        args = ([{"role": "system", "content": bad}, {"role": "user", "content": Q}], "Au.")
    with pytest.raises(ScoringError, match=r"lone surrogate '\\ud800' at position 8"):
        scorer.score(*args)


@pytest.mark.parametrize(
    ("pairs", "match"),
    [
        ([(Q,)], r"pairs\[0\] must be a \(messages, answer\) pair, got a tuple of 1"),
        ([(Q, "Au.", "extra")], r"pairs\[0\] must be a \(messages, answer\) pair, got a tuple of 3"),
        ([(Q, "Au."), None], r"pairs\[1\] must be a \(messages, answer\) pair, got NoneType"),
        ([(Q, "Au."), (Q, 7)], r"pairs\[1\] answer must be a string, got int"),
        ("What?", r"pairs must be a list of \(messages, answer\) tuples, got str"),
    ],
)
def test_malformed_batch_pairs_are_scoring_errors(scorer, pairs, match) -> None:
    with pytest.raises(ScoringError, match=match):
        scorer.score_batch(pairs)


def test_every_typed_error_is_a_semgrad_guard_error(scorer) -> None:
    for call in (lambda: scorer.score(Q, None), lambda: scorer.score_batch([(Q,)])):
        with pytest.raises(SemGradGuardError):
            call()


# ---------------------------------------------------------------- profiles


def test_profile_with_a_non_negative_offset_is_a_profile_error() -> None:
    from pydantic import ValidationError

    from semgrad_guard import ModelProfile, ProfileError

    for offset in (0, 5):
        with pytest.raises(
            ProfileError,
            match=r"anchor_offset: Input should be less than 0 \(.*-1 is the prompt's last token",
        ) as err:
            ModelProfile(anchor_offset=offset, layers=[1])
        assert not isinstance(err.value, ValidationError) and isinstance(err.value, ValueError)
    with pytest.raises(ProfileError, match="layers"):
        ModelProfile(anchor_offset=-1, layers=[])


def test_cli_positive_anchor_offset_is_a_usage_error_not_a_traceback(capsys) -> None:
    from semgrad_guard.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["score", "--model", "/nonexistent", "--prompt", "q", "--answer", "a", "--anchor-offset", "5"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--anchor-offset: must be negative" in err and "Traceback" not in err


# ---------------------------------------------------------------- loading


def _save_tiny_bert(directory) -> None:
    from transformers import BertConfig, BertForMaskedLM

    from semgrad_guard.testing import tiny_tokenizer

    config = BertConfig(
        vocab_size=512, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
    )
    BertForMaskedLM(config).save_pretrained(directory)
    tiny_tokenizer("llama").save_pretrained(directory)


def test_non_causal_model_is_a_model_error_not_a_template_error(tmp_path) -> None:
    from transformers import BertConfig, BertLMHeadModel

    from semgrad_guard import ModelError

    _save_tiny_bert(tmp_path)
    with pytest.raises(ModelError, match=r"is a BertForMaskedLM \(bert\), not a causal \(decoder-only\)"):
        SemGradScorer.from_pretrained(str(tmp_path))
    bert = BertLMHeadModel(
        BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    )
    _, tok = tiny_chat_model("llama")
    with pytest.raises(ModelError, match="not a causal"):
        SemGradScorer(bert, tok)


@pytest.mark.parametrize("path", ["/no/such/dir/model", "./not-here", "~/nope/x", "a/b/c"])
def test_missing_local_path_is_reported_as_missing(path) -> None:
    from semgrad_guard import ModelError

    with pytest.raises(ModelError, match="does not exist; give an existing local directory"):
        SemGradScorer.from_pretrained(path)


def test_a_gguf_file_typo_names_the_files_there_not_a_hub_url(tmp_path) -> None:
    from semgrad_guard import ModelError

    (tmp_path / "model-q8_0.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelError, match=r"'model-q8.gguf' is not in .*\['model-q8_0.gguf'\]") as err:
        SemGradScorer.from_pretrained(str(tmp_path), gguf_file="model-q8.gguf")
    assert "huggingface.co" not in str(err.value)
    (tmp_path / "model-q8_0.gguf").unlink()
    with pytest.raises(ModelError, match="holds no .gguf file"):
        SemGradScorer.from_pretrained(str(tmp_path), gguf_file="model-q8.gguf")


def test_unknown_hub_id_fails_fast_when_offline(monkeypatch) -> None:
    import time

    from semgrad_guard import ModelError

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: unreachable at once
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.monotonic()
    with pytest.raises(ModelError, match="not in the Hugging Face cache, and the hub is unreachable"):
        SemGradScorer.from_pretrained("nobody-xyz/no-such-model")
    assert time.monotonic() - start < 10
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE is set"):
        SemGradScorer.from_pretrained("nobody-xyz/no-such-model")


@pytest.mark.parametrize(
    ("device", "error", "match"),
    [
        ("gpu0", "ConfigurationError", r"unknown device 'gpu0'; use 'cpu', 'cuda', 'cuda:N'"),
        ("cuda:x", "ConfigurationError", "unknown device"),
        ("cuda", "ModelError", "CUDA is not available"),
        ("cuda:1", "ModelError", "CUDA is not available"),
    ],
)
def test_bad_or_unavailable_device_is_typed(device, error, match) -> None:
    import torch

    import semgrad_guard

    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(getattr(semgrad_guard, error), match=match):
        SemGradScorer.from_pretrained("/no/such/dir", device=device)  # the device is checked first


# ---------------------------------------------------------------- policies


def _policy(*rules: dict) -> object:
    from semgrad_guard import GuardPolicy

    return GuardPolicy.from_dict({"rules": list(rules)})


def test_rule_after_a_catch_all_is_refused_with_both_names() -> None:
    from semgrad_guard import ConfigurationError

    with pytest.raises(
        ConfigurationError, match=r"rule 'late' can never fire: the earlier catch-all rule 'all'"
    ):
        _policy(
            {"name": "all", "action": "review"},
            {"name": "late", "field": "semgrad", "max": 1, "action": "accept"},
        )


@pytest.mark.parametrize(
    ("rule", "domain"),
    [
        ({"name": "never", "field": "semgrad", "max": -1, "action": "accept"}, r"\[0, inf\)"),
        ({"name": "never", "field": "nll", "max": 0, "action": "accept"}, r"\[0, inf\)"),
        ({"name": "never", "field": "confidence", "max": 0, "action": "accept"}, r"\[0, 1\]"),
    ],
)
def test_band_no_value_can_fall_in_is_refused(rule, domain) -> None:
    from semgrad_guard import ConfigurationError

    with pytest.raises(
        ConfigurationError, match=rf"rule 'never' can never fire: its band .* holds no value.*{domain}"
    ):
        _policy(rule, {"action": "abstain"})


def test_rule_covered_by_earlier_rules_is_refused() -> None:
    from semgrad_guard import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"rule 'dead' can never fire: .* earlier rule\(s\) 'wide'"):
        _policy(
            {"name": "wide", "field": "semgrad", "max": 1.0, "action": "accept"},
            {"name": "dead", "field": "semgrad", "min": 0.2, "max": 0.5, "action": "retry"},
        )
    with pytest.raises(ConfigurationError, match=r"rule 'dead' can never fire: .* 'low', 'high'"):
        _policy(
            {"name": "low", "min": 0.0, "max": 0.5, "action": "abstain"},
            {"name": "high", "min": 0.5, "action": "accept"},
            {"name": "dead", "min": 0.3, "max": 0.9, "action": "annotate"},
        )
    with pytest.raises(ConfigurationError):  # direct construction is typed too
        from semgrad_guard import GuardPolicy

        GuardPolicy(rules=[{"action": "review"}, {"action": "accept"}])


def test_partly_overlapping_bands_warn_naming_the_rules() -> None:
    from semgrad_guard.guard.policy import PolicyOverlapWarning

    with pytest.warns(
        PolicyOverlapWarning, match=r"rules 'a' .* and 'b' .* overlap on \[0.3, 0.5\); the earlier 'a'"
    ):
        _policy(
            {"name": "a", "field": "semgrad", "min": 0.0, "max": 0.5, "action": "accept"},
            {"name": "b", "field": "semgrad", "min": 0.3, "max": 1.0, "action": "review"},
        )


def test_threshold_ladders_and_edge_to_edge_bands_load_quietly() -> None:
    import warnings

    from semgrad_guard import GuardPolicy

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _policy(  # the documented ladder: overlap is the point
            {"name": "confident", "min": 0.8, "action": "accept"},
            {"name": "unsure", "min": 0.5, "action": "retry"},
            {"name": "lost", "action": "abstain"},
        )
        _policy(
            {"name": "low", "field": "semgrad", "max": 0.3, "action": "accept"},
            {"name": "mid", "field": "semgrad", "max": 0.6, "action": "annotate"},
            {"name": "hi", "field": "semgrad", "min": 0.6, "action": "review"},
        )
        GuardPolicy.from_threshold(0.7, annotate_above=0.4)
