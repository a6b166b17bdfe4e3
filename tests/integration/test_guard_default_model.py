"""The guard on the embedded SmolLM2-135M-Instruct: shipped calibrator, real retries, review of real scores."""

from __future__ import annotations

from pathlib import Path

import pytest

from semgrad_guard import Action, Calibrator, Guard, GuardPolicy, SQLiteReviewQueue

pytestmark = pytest.mark.integration

COOKBOOK = Path(__file__).resolve().parents[2] / "cookbook"

SYSTEM = "You are a helpful assistant. Answer the question briefly, in a few words."


def chat(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


@pytest.fixture(scope="module")
def calibrator(default_scorer):
    return Calibrator.default_for(default_scorer.model_id)


def test_shipped_calibrator_fits_the_default_scorer_and_gives_a_confidence(
    default_scorer, calibrator, tmp_path
) -> None:
    # Guard() checks model id and profile: a profile change without refitting the calibrator fails here.
    policy = GuardPolicy.from_yaml(COOKBOOK / "policies" / "default.yaml")
    with SQLiteReviewQueue(tmp_path / "r.db") as queue:
        guard = Guard(policy, scorer=default_scorer, calibrator=calibrator, review_queue=queue)
        r = guard.check(chat("Who proposed the theory of evolution by natural selection?"), "Charles Darwin.")
        assert r.result is not None and r.result.model_id == default_scorer.model_id
        assert r.confidence == pytest.approx(calibrator.confidence(r.result))
        # The action is the one the band holding that confidence names (accept >= 0.35 > review >= 0.2).
        expected = (
            Action.ACCEPT
            if r.confidence >= 0.35
            else Action.REVIEW
            if r.confidence >= 0.2
            else Action.ABSTAIN
        )
        assert r.action is expected and r.rule == {Action.ACCEPT: "confident", Action.REVIEW: "unsure"}.get(
            expected, "lost"
        )
        if r.action is Action.REVIEW:
            assert queue.get(r.review_id).result == r.result


def test_retries_change_the_generation_and_reuse_generation_scores(default_scorer, tmp_path) -> None:
    # Every answer is retried (a catch-all retry), then the best attempt goes to review.
    policy = GuardPolicy.from_dict(
        {
            "rules": [{"action": "retry"}],
            "retry": {"max_attempts": 3, "strategy": ["resample", "reconsider"], "on_exhausted": "review"},
        }
    )
    sent = []

    def generate(messages, ctx):
        sent.append(messages)
        return default_scorer.generate(messages, max_new_tokens=12, **ctx.generate_kwargs)

    with SQLiteReviewQueue(tmp_path / "r.db") as queue:
        guard = Guard(policy, scorer=default_scorer, review_queue=queue)
        question = chat("What is the chemical symbol of gold?")
        r = guard.run(question, generate)
        assert [a.strategy for a in r.attempts] == [None, "resample", "reconsider"]
        assert r.attempts[1].changes["do_sample"] is True and "seed" in r.attempts[1].changes
        assert sent[2][-2]["role"] == "assistant" and sent[2][-2]["content"] == r.attempts[1].answer
        assert all(a.result is not None and a.result.answer_tokens >= 1 for a in r.attempts)
        assert r.action is Action.REVIEW and r.rule == "retry.on_exhausted"
        best = min(r.attempts, key=lambda a: a.result.semgrad)
        assert r.result == best.result
        item = queue.get(r.review_id)
        assert item.answer == best.answer and item.messages == question and item.result == best.result
