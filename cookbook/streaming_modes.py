"""One streamed answer in each stream mode: observe, gate and hold, on the embedded model.

    python cookbook/streaming_modes.py

- observe: text as it is generated, the score on the last chunk;
- gate: a sentence at a time, each once its span score passed a span policy; a sentence below the
  abstain band ends the stream and stops generation there;
- hold: nothing until the whole answer is generated and scored.

The span policy abstains below confidence 0.2 (the default policy's abstain band), with the
shipped answer calibrator applied to each sentence (no span calibrator is shipped for this model).
The same modes are ``ChatSemGrad(stream_mode=...)``, ``SemGradLLM(stream_mode=...)`` and the
service's ``extra_body={"semgrad": {"stream_mode": ...}}`` (docs/serve.md, "Stream modes").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from semgrad_guard import Calibrator, SemGradScorer, SpanPolicy

QUESTION = [
    {
        "role": "system",
        "content": "Answer from the documents.\n[1] The Orbitra Library was founded in 1841. It holds "
        "26,000 books. It opens at 9 am on Sundays.",
    },
    {"role": "user", "content": "Tell me about the Orbitra Library, in three sentences."},
]


def main(
    scorer: SemGradScorer | None = None, out: Callable[[str], None] = print, max_new_tokens: int = 64
) -> dict[str, dict[str, Any]]:
    scorer = scorer or SemGradScorer.from_pretrained("default")
    policy = SpanPolicy(calibrator=None, abstain_below=0.2).with_calibrator(
        Calibrator.default_for(scorer.model_id)
    )
    runs: dict[str, dict[str, Any]] = {}
    for mode in ("observe", "gate", "hold"):
        t0 = time.perf_counter()
        pieces: list[tuple[float, str]] = []
        for chunk in scorer.stream(
            QUESTION, mode=mode, span_judge=policy if mode == "gate" else None, max_new_tokens=max_new_tokens
        ):
            if chunk.delta:
                pieces.append((time.perf_counter() - t0, chunk.delta))
            last = chunk
        total = time.perf_counter() - t0
        runs[mode] = {"pieces": pieces, "total": total, "last": last}
        shown = "".join(p for _, p in pieces)
        first = f"{pieces[0][0]:.2f} s" if pieces else "never"
        out(f"--- {mode}: {len(pieces)} chunks, first text at {first}, done at {total:.2f} s")
        out(shown)
        if last.stopped is not None:
            stop = last.stopped
            out(
                f"[stopped at {stop.span.text!r}: {stop.action}, confidence "
                f"{stop.decision.confidence:.2f}; generated {last.result.answer_tokens} tokens]"
            )
    return runs


if __name__ == "__main__":
    main()
