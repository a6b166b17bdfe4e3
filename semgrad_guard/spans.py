"""Spans of an answer: a sentence splitter and the scores of one span. Plain data, no torch.

A span score is SemGrad and its companions restricted to the loss of the span's tokens (docs/spans.md):
``L_span = (1/T_span) sum_{t in span} H_t nll_t``, its gradient taken with respect to the same anchor
state and layers as the whole answer's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import SpanError

SPAN_SCORE_FIELDS: tuple[str, ...] = ("semgrad", "hybridgrad", "exgrad", "nll", "mean_nll", "mean_entropy")
"""Score fields of :class:`SpanScore` (the same as :class:`~semgrad_guard.ScoreResult`'s)."""

# Words whose full stop does not end a sentence (lower-cased, without the final stop).
ABBREVIATIONS: frozenset[str] = frozenset(
    {
        "e.g", "i.e", "cf", "vs", "etc", "approx", "ca", "al", "viz", "resp", "incl",
        "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "no", "nos", "fig", "figs", "eq",
        "vol", "pp", "p", "ch", "sec", "dept", "inc", "ltd", "co", "corp", "jan", "feb", "mar", "apr",
        "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "u.s", "u.k", "a.m", "p.m", "ph.d",
    }
)  # fmt: skip
"""Abbreviations whose full stop never ends a sentence in :func:`split_sentences`."""

# A candidate end: terminal punctuation, then closing quotes or brackets.
_END = re.compile(r"[.!?\u2026]+[\"'\u2019\u201d)\]]*")
_WORD_BEFORE = re.compile(r"([A-Za-z][A-Za-z.]*)$")
_LIST_MARKER = re.compile(r"^\s*(?:\d{1,3}|[A-Za-z]|[ivxIVX]{1,5})$")


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Character offsets ``(start, end)`` of the sentences of ``text``, in order, whitespace trimmed.

    Rules (no dependencies, no model):

    - a sentence ends at ``.``, ``!``, ``?`` or ``…`` (and any closing quotes or brackets after it)
      followed by whitespace or the end of the text;
    - not after an abbreviation (:data:`ABBREVIATIONS`: "e.g.", "Dr.", "etc." ...) or a single
      letter ("J. K. Rowling"), nor when the next word starts in lower case ("approx. five");
    - a decimal or version number ("3.14", "v2.0") has no whitespace after its dot, so it never ends one;
    - a line break always ends a sentence (list items, headings, lines of code); a list marker
      ("1.", "a)") at the start of a line stays with its item;
    - trailing text without a full stop is a sentence; blank lines and whitespace belong to none.

    Example:
        >>> text = "Paris is the capital, e.g. of France. It has 2.1 million people!\\n- a list item"
        >>> [text[s:e] for s, e in split_sentences(text)]
        ['Paris is the capital, e.g. of France.', 'It has 2.1 million people!', '- a list item']
    """
    spans: list[tuple[int, int]] = []
    pos = 0
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        start = 0
        for m in _END.finditer(body):
            end = m.end()
            if end < len(body) and not body[end].isspace():
                continue  # "3.14", "e.g.,", "?!" inside a word
            if _continues(body, m.start(), end):
                continue
            _add(spans, text, pos + start, pos + end)
            start = end
        _add(spans, text, pos + start, pos + len(body))
        pos += len(line)
    return spans


def _continues(line: str, stop: int, end: int) -> bool:
    """True if the punctuation at ``line[stop:end]`` does not end the sentence."""
    if line[stop] != ".":
        return False  # ! ? … always end one
    before = line[:stop]
    if _LIST_MARKER.match(before):
        return True  # "1. First item" at the start of a line
    nxt = line[end:].lstrip()
    word = _WORD_BEFORE.search(before)
    if word is not None:
        w = word.group(1).lower()
        if len(w) == 1:
            return True  # an initial: "J. K. Rowling"
        if w in ABBREVIATIONS:
            # "etc." ends a sentence when a capitalised word follows; the others never do.
            return not (w == "etc" and nxt[:1].isupper())
    return bool(nxt) and nxt[0].islower()


def _add(spans: list[tuple[int, int]], text: str, start: int, end: int) -> None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if end > start:
        spans.append((start, end))


def check_spans(spans: Any, length: int) -> list[tuple[int, int]]:
    """Caller spans as a list of ``(start, end)`` character offsets into a text of ``length`` characters.

    Raises:
        SpanError: not a sequence of pairs of ints, empty, out of range, or out of order.
    """
    if isinstance(spans, (str, bytes)) or not isinstance(spans, Sequence):
        raise SpanError(
            f"spans must be None, 'sentences' or a list of (start, end) character offsets, got {spans!r}"
        )
    out: list[tuple[int, int]] = []
    for i, span in enumerate(spans):
        if (
            isinstance(span, (str, bytes))
            or not isinstance(span, Sequence)
            or len(span) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in span)
        ):
            raise SpanError(f"spans[{i}] must be a (start, end) pair of character offsets, got {span!r}")
        start, end = int(span[0]), int(span[1])
        if not 0 <= start < end <= length:
            raise SpanError(
                f"spans[{i}] = ({start}, {end}) is not a non-empty range inside the answer "
                f"(0 <= start < end <= {length})"
            )
        out.append((start, end))
    return out


def token_ranges(
    spans: Sequence[tuple[int, int]], token_offsets: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    """The answer tokens of each character span: those whose characters overlap it.

    ``token_offsets[i]`` is token i's ``(start, end)`` in the same text (an empty range for a token
    with no characters of its own). A token that straddles a span boundary counts in both spans.

    Raises:
        SpanError: a span covers no token (whitespace only, or text the scorer cut off).
    """
    out = []
    for start, end in spans:
        inside = [i for i, (s, e) in enumerate(token_offsets) if s < end and e > start and e > s]
        if not inside:
            raise SpanError(
                f"the span ({start}, {end}) holds no answer token; pass spans over the text that is scored"
            )
        out.append((inside[0], inside[-1] + 1))
    return out


SpanAction = Literal["keep", "flag", "drop", "review", "abstain"]
"""What a span policy does with one span; ``abstain`` and ``review`` act on the whole answer."""


class SpanDecision(BaseModel):
    """What the span policy decided for one span, and why.

    Example:
        >>> SpanDecision(action="drop", confidence=0.12, reason="confidence 0.12 < drop_below 0.2").action
        'drop'
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    action: SpanAction
    """keep, flag (marked in the text), drop (cut from the text), review or abstain (the whole answer)."""
    confidence: float | None = None
    """The span calibrator's P(the span is supported)."""
    reason: str
    """Why: the band that fired and the value, e.g. ``confidence 0.12 < drop_below 0.2``."""
    start: int | None = None
    """The span's first character in the scored answer (None when judged without a span)."""
    end: int | None = None
    """One past its last character."""
    text: str | None = None
    """The span's text."""


class SpanScore(BaseModel):
    """The scores of one span (a sentence, or a range the caller passed) of a scored answer.

    ``answer[start:end] == text``, with ``answer`` the string given to ``score`` (or returned by
    ``generate``). The scores mean what :class:`~semgrad_guard.ScoreResult`'s mean, for the loss of
    the span's tokens ``token_start .. token_end - 1`` only (answer-token indices).

    Example:
        >>> s = SpanScore(start=0, end=6, token_start=0, token_end=2, text="Paris.", semgrad=1e-3,
        ...               exgrad=4e-3, hybridgrad=2e-3, nll=1.5, mean_nll=0.75, mean_entropy=1.1)
        >>> SpanScore.model_validate_json(s.model_dump_json()) == s, s.tokens
        (True, 2)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    start: int = Field(ge=0, description="First character of the span in the answer.")
    end: int = Field(ge=0, description="One past its last character: answer[start:end] is the span.")
    token_start: int = Field(ge=0, description="Index of its first answer token.")
    token_end: int = Field(ge=1, description="One past its last answer token.")
    text: str = Field(description="The span's text.")
    semgrad: float = Field(
        description="Mean |dL_span/dh_l[a]| over the profile's layers and the hidden size."
    )
    exgrad: float = Field(description="Mean |dL_span/dW_out| over the output projection.")
    hybridgrad: float = Field(
        description="alpha * exgrad + (1 - alpha) * semgrad, alpha = exp(-mean_entropy)."
    )
    nll: float = Field(description="Sum of the span tokens' negative log-likelihoods (nats).")
    mean_nll: float = Field(description="nll divided by the span's token count.")
    mean_entropy: float = Field(
        description="Mean entropy (nats) of the next-token distributions over the span."
    )

    @model_validator(mode="after")
    def _ordered(self) -> SpanScore:
        if self.end < self.start or self.token_end <= self.token_start:
            raise ValueError("a span needs start <= end and token_start < token_end")
        return self

    @property
    def tokens(self) -> int:
        """Number of answer tokens in the span."""
        return self.token_end - self.token_start

    def scores(self) -> dict[str, float]:
        """The six score fields as a dict."""
        return {name: float(getattr(self, name)) for name in SPAN_SCORE_FIELDS}


SpanRequest = Literal["sentences"] | Sequence[tuple[int, int]] | None
"""What a caller may ask of ``score(..., spans=...)``: nothing, the answer's sentences
(:func:`split_sentences`), or ``(start, end)`` character offsets into the answer."""


def resolve_spans(request: Any, answer: str, scored_from: int = 0) -> list[tuple[int, int]] | None:
    """Character spans of ``answer`` for a :data:`SpanRequest`; sentences of the scored part only.

    ``scored_from`` is where the scored text starts (``ScoreResult.answer_start``: an echoed prompt
    before it is not scored, so it has no sentences).

    Raises:
        SpanError: the request is not None, ``"sentences"`` or valid offsets into ``answer``.
    """
    if request is None:
        return None
    if isinstance(request, str):
        if request != "sentences":
            raise SpanError(
                f"spans must be None, 'sentences' or a list of (start, end) offsets, got {request!r}"
            )
        return [(scored_from + s, scored_from + e) for s, e in split_sentences(answer[scored_from:])]
    return check_spans(request, len(answer))


def offsets_by_decoding(tokenizer: Any, ids: Sequence[int], text: str) -> list[tuple[int, int]]:
    """Each token's ``(start, end)`` in ``text = tokenizer.decode(ids)``, from the decoded prefixes.

    For tokenizers without offset mappings, and for generated ids (whose text is their decode). A
    token that completes no character (a partial UTF-8 byte) gets an empty range.
    """
    out: list[tuple[int, int]] = []
    prev = 0
    for i in range(len(ids)):
        decoded = tokenizer.decode(list(ids[: i + 1]), skip_special_tokens=False)
        # A partial character decodes to U+FFFD, which the next token replaces: it adds nothing yet.
        n = len(decoded.rstrip("\ufffd")) if i + 1 < len(ids) else len(decoded)
        end = max(prev, min(n, len(text)))
        out.append((prev, end))
        prev = end
    return out
