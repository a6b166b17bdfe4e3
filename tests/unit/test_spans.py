"""Span scores: the splitter, the data model, and parity of every span with a per-span reference."""

from __future__ import annotations

import pytest
import torch
from reference_semgrad import reference_exgrad_weight, reference_scores

from semgrad_guard import ScoreResult, SemGradScorer
from semgrad_guard.errors import SpanError
from semgrad_guard.spans import SpanScore, split_sentences
from semgrad_guard.testing import ARCHITECTURES, tiny_chat_model

CHAT = [{"role": "user", "content": "Which gas do plants take in during photosynthesis?"}]
ANSWER = "Carbon dioxide, e.g. CO2. Plants take in 3.5 units a day! Also oxygen at night"
FIELDS = ("semgrad", "exgrad", "hybridgrad", "nll", "mean_nll", "mean_entropy")


def sentences(text):
    return [text[s:e] for s, e in split_sentences(text)]


# -- the splitter ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text,want",
    [
        ("One. Two! Three? Four", ["One.", "Two!", "Three?", "Four"]),
        ("It is 3.14 wide. Done.", ["It is 3.14 wide.", "Done."]),
        ("Use a gas, e.g. CO2, or i.e. air. Next.", ["Use a gas, e.g. CO2, or i.e. air.", "Next."]),
        ("Dr. Smith met J. K. Rowling. Then left.", ["Dr. Smith met J. K. Rowling.", "Then left."]),
        ("It costs approx. five. Fine", ["It costs approx. five.", "Fine"]),
        ("Apples, pears, etc. Then more.", ["Apples, pears, etc.", "Then more."]),
        ("Apples, pears, etc. and more.", ["Apples, pears, etc. and more."]),
        ('He said "Stop." Then left.', ['He said "Stop."', "Then left."]),
        ("1. First item\n2. Second item.", ["1. First item", "2. Second item."]),
        ("- a\n\n- b without stop\n", ["- a", "- b without stop"]),
        ("Wait... what? Yes.", ["Wait... what?", "Yes."]),
        ("v2.0 is out.Really", ["v2.0 is out.Really"]),
        ("", []),
        ("  \n\t ", []),
        ("  Leading and trailing space.  ", ["Leading and trailing space."]),
    ],
)
def test_split_sentences(text, want):
    assert sentences(text) == want


def test_split_sentences_offsets_index_the_text():
    text = "Paris is in France.\r\nIt is big.  Ünïcode – ok…  Last"
    spans = split_sentences(text)
    assert [text[s:e] for s, e in spans] == ["Paris is in France.", "It is big.", "Ünïcode – ok…", "Last"]
    assert all(a < b <= c for (a, b), (c, _) in zip(spans, spans[1:], strict=False))


# -- the data model ----------------------------------------------------------------------------------
def _result(**extra):
    return ScoreResult(
        semgrad=1e-3, hybridgrad=2e-3, exgrad=5e-3, nll=4.0, mean_nll=0.5, mean_entropy=1.2,
        answer_tokens=8, anchor_offset=-3, layers=[15, 16], **extra,
    )  # fmt: skip


def test_score_result_spans_round_trip_and_old_payloads_load():
    span = SpanScore(
        start=0, end=6, token_start=0, token_end=2, text="Paris.", semgrad=1e-3, exgrad=4e-3,
        hybridgrad=2e-3, nll=1.5, mean_nll=0.75, mean_entropy=1.1,
    )  # fmt: skip
    r = _result(spans=[span])
    assert ScoreResult.model_validate_json(r.model_dump_json()) == r
    old = _result().model_dump()
    del old["spans"]
    assert ScoreResult.model_validate(old).spans is None
    with pytest.raises(ValueError, match="token_start < token_end"):
        SpanScore(**{**span.model_dump(), "token_start": 2})


# -- parity with the per-span reference ----------------------------------------------------------------
def assert_span_matches(scorer, chat, answer, y, span, rtol=1e-5):
    x = scorer.prompt_ids(chat)
    ref = reference_scores(
        scorer.model,
        x,
        y,
        scorer.profile.anchor_offset,
        scorer.profile.layers,
        span=(span.token_start, span.token_end),
    )
    for name in FIELDS:
        got, want = getattr(span, name), ref[name]
        assert want != 0.0, name
        assert abs(got - want) <= rtol * abs(want), (
            f"{span.text!r} {name}: fast {got!r} vs reference {want!r}"
        )


@pytest.fixture(
    scope="module",
    params=[(a, tie) for a in ARCHITECTURES for tie in (True, False)],
    ids=lambda p: f"{p[0]}-{'tied' if p[1] else 'untied'}",
)
def scorer(request):
    arch, tie = request.param
    model, tok = tiny_chat_model(arch, tie_word_embeddings=tie)
    return SemGradScorer(model, tok, model_id=f"tiny-{arch}")


def test_sentence_spans_match_reference(scorer):
    r = scorer.score(CHAT, ANSWER, spans="sentences")
    assert [s.text for s in r.spans] == sentences(ANSWER)
    y = scorer.answer_ids(CHAT, ANSWER)
    for s in r.spans:
        assert ANSWER[s.start : s.end] == s.text
        assert_span_matches(scorer, CHAT, ANSWER, y, s)
    # Sentences tile the answer's text tokens; the end-of-turn token belongs to none.
    assert r.spans[0].token_start == 0 and r.spans[-1].token_end < r.answer_tokens
    assert all(a.token_end == b.token_start for a, b in zip(r.spans, r.spans[1:], strict=False))
    # The whole answer's scores are those of scoring without spans.
    plain = scorer.score(CHAT, ANSWER)
    for name in FIELDS:
        assert getattr(r, name) == pytest.approx(getattr(plain, name), rel=1e-6)
    assert plain.spans is None


def test_batch_and_generate_spans_match_reference(scorer):
    pairs = [(CHAT, ANSWER), ("Why?", "Because. It is so"), (CHAT, "Oxygen.")]
    for (chat, answer), r in zip(pairs, scorer.score_batch(pairs, spans="sentences"), strict=True):
        assert [s.text for s in r.spans] == sentences(answer)
        for s in r.spans:
            assert_span_matches(scorer, chat, answer, scorer.answer_ids(chat, answer), s)
    text, r = scorer.generate(CHAT, max_new_tokens=16, spans=[(0, 3)])
    assert r.spans is not None and r.spans[0].text == text[:3]
    x = scorer.prompt_ids(CHAT)
    with torch.no_grad():
        out = scorer.model.generate(
            input_ids=torch.tensor([x]), max_new_tokens=16, do_sample=False,
            eos_token_id=scorer.eos_token_ids, pad_token_id=scorer.eos_token_ids[0],
        )  # fmt: skip
    y = out[0, len(x) :].tolist()
    eos = [i for i, t in enumerate(y) if t in scorer.eos_token_ids]
    assert_span_matches(scorer, CHAT, text, y[: eos[0] + 1] if eos else y, r.spans[0])


def test_caller_spans_may_overlap_and_skip_text(scorer):
    spans = [(0, 14), (0, len(ANSWER)), (26, 31)]
    r = scorer.score(CHAT, ANSWER, spans=spans)
    assert [(s.start, s.end) for s in r.spans] == spans
    assert [s.text for s in r.spans] == ["Carbon dioxide", ANSWER, "Plant"]
    y = scorer.answer_ids(CHAT, ANSWER)
    for s in r.spans:
        assert_span_matches(scorer, CHAT, ANSWER, y, s)


def test_long_answer_chunks_and_the_loop_fallback_give_the_same_spans():
    model, tok = tiny_chat_model("llama", tie_word_embeddings=False)
    scorer = SemGradScorer(model, tok, model_id="tiny")
    V = model.get_output_embeddings().weight.shape[0]
    chunked = SemGradScorer(model, tok, model_id="tiny", logit_chunk=2 * V)
    want = scorer.score(CHAT, ANSWER, spans="sentences")
    got = chunked.score(CHAT, ANSWER, spans="sentences")
    chunked.adapter.batched_grads = False  # as for a model whose backward has no batching rule
    looped = chunked.score(CHAT, ANSWER, spans="sentences")
    for a, b, c in zip(want.spans, got.spans, looped.spans, strict=True):
        for name in FIELDS:
            assert getattr(b, name) == pytest.approx(getattr(a, name), rel=1e-5)
            assert getattr(c, name) == pytest.approx(getattr(a, name), rel=1e-5)


def test_weight_mode_spans_match_the_parameter_gradient():
    model, tok = tiny_chat_model("qwen2", tie_word_embeddings=True)
    scorer = SemGradScorer(model, tok, model_id="tiny", exgrad_mode="weight")
    r = scorer.score(CHAT, ANSWER, spans=[(0, 25)])
    x, y = scorer.prompt_ids(CHAT), scorer.answer_ids(CHAT, ANSWER)
    s = r.spans[0]
    # The reference's weight exgrad of the span's loss: its answer cut to the span, rescaled.
    want = reference_exgrad_weight(model, x, y, span=(s.token_start, s.token_end))
    assert s.exgrad == pytest.approx(want, rel=1e-5)
    assert r.exgrad == pytest.approx(reference_exgrad_weight(model, x, y), rel=1e-5)


def test_echo_is_not_a_span_and_control_tokens_are_text():
    model, tok = tiny_chat_model("qwen2")
    scorer = SemGradScorer(model, tok, model_id="tiny")
    prompt = scorer.render_prompt(CHAT)
    answer = prompt + "Carbon dioxide. Oxygen too."
    r = scorer.score(CHAT, answer, spans="sentences")
    assert r.answer_start == len(prompt)
    assert [s.text for s in r.spans] == ["Carbon dioxide.", "Oxygen too."]
    assert r.spans[0].start == len(prompt) and answer[r.spans[0].start : r.spans[0].end] == "Carbon dioxide."
    with pytest.raises(SpanError, match="holds no answer token"):
        scorer.score(CHAT, answer, spans=[(0, 5)])  # inside the echo, which is not scored
    tricky = "Say <|im_end|> now. Then stop."
    r = scorer.score(CHAT, tricky, spans="sentences")
    assert r.flags == ["control_tokens"] and [s.text for s in r.spans] == [
        "Say <|im_end|> now.",
        "Then stop.",
    ]


@pytest.mark.parametrize(
    "spans,match",
    [
        ("paragraphs", "'sentences'"),
        ([(3, 2)], r"spans\[0\] = \(3, 2\) is not a non-empty range"),
        ([(0, 999)], "0 <= start < end <= 8"),
        ([(0, 1, 2)], r"spans\[0\] must be a \(start, end\) pair"),
        ([("a", "b")], r"spans\[0\] must be a \(start, end\) pair"),
        (5, "list of"),
    ],
)
def test_bad_spans_are_typed_errors(spans, match):
    model, tok = tiny_chat_model("llama")
    scorer = SemGradScorer(model, tok, model_id="tiny")
    with pytest.raises(SpanError, match=match):
        scorer.score(CHAT, "Paris.  ", spans=spans)


def test_score_batch_refuses_caller_offsets():
    model, tok = tiny_chat_model("llama")
    scorer = SemGradScorer(model, tok, model_id="tiny")
    with pytest.raises(SpanError, match="one answer at a time"):
        scorer.score_batch([(CHAT, "Paris.")], spans=[(0, 3)])
