"""``SemGradEvaluator``: a LlamaIndex evaluator whose verdict is the guard policy's decision."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from llama_index.core.evaluation.base import BaseEvaluator, EvaluationResult
from llama_index.core.prompts.chat_prompts import CHAT_TEXT_QA_PROMPT
from llama_index.core.prompts.mixin import PromptDictType

from semgrad_guard import ScoreResult, ScoringError, judge

from ._convert import to_chat

MessagesFn = Callable[[str, Sequence[str] | None], list[dict[str, Any]]]

_PASSING = frozenset({"accept", "annotate"})


def default_qa_messages(query: str, contexts: Sequence[str] | None) -> list[dict[str, Any]]:
    """The chat a chat LLM receives from LlamaIndex's default text-QA prompt (``compact`` synthesis).

    Without contexts, the query alone as one user message.
    """
    if not contexts:
        return [{"role": "user", "content": query}]
    messages = CHAT_TEXT_QA_PROMPT.format_messages(context_str="\n\n".join(contexts), query_str=query)
    return to_chat(messages)


class SemGradEvaluator(BaseEvaluator):
    """Judges a (query, response, contexts) triple by SemGrad and a :class:`~semgrad_guard.GuardPolicy`.

    ``passing`` is True when the policy accepts or annotates the answer (so ``RetryQueryEngine``
    retries everything else), ``score`` is the calibrated confidence (``None`` without a
    calibrator), and ``feedback`` names the action, the rule and the scores.

    The prompt the answer is scored against is, in order of preference: the exact chat a
    ``handler`` (:class:`SemGradEventHandler` / :class:`SemGradCallbackHandler`) recorded for the
    same answer text, else ``messages_fn(query, contexts)`` (default: LlamaIndex's text-QA chat
    prompt, what a chat LLM sees in ``compact`` synthesis).

    Args:
        scorer: a :class:`~semgrad_guard.Scorer` (``SemGradScorer`` over the LLM's weights).
        policy: the :class:`~semgrad_guard.GuardPolicy` deciding pass or fail (or a dict, YAML text, or a
            YAML/JSON file path).
        calibrator: maps scores to confidence; needed when the policy has rules over ``confidence``.
        handler: a registered handler whose recorded prompts are reused (exact scores, no rescoring).
        messages_fn: builds the scored chat from ``(query, contexts)`` when no handler record fits.

    Example:
        >>> from semgrad_guard import MockScorer
        >>> from semgrad_guard import GuardPolicy
        >>> policy = GuardPolicy(rules=[{"field": "semgrad", "max": 0.5, "action": "accept"}],
        ...                      default_action="abstain")
        >>> ev = SemGradEvaluator(MockScorer(lambda m, a: 0.9 if "maybe" in a else 0.1), policy)
        >>> ev.evaluate(query="Capital of France?", response="Paris", contexts=["Paris is the capital."]).passing
        True
        >>> ev.evaluate(query="Capital of France?", response="maybe Lyon").passing
        False
    """

    def __init__(
        self,
        scorer: Any,
        policy: Any,
        *,
        calibrator: Any = None,
        handler: Any = None,
        messages_fn: MessagesFn | None = None,
    ) -> None:
        from semgrad_guard import ConfigurationError, GuardPolicy

        policy = GuardPolicy.coerce(policy)  # the same policy forms as every other entry point
        if policy.uses_confidence and calibrator is None:
            raise ConfigurationError(
                "the policy has rules over 'confidence' but SemGradEvaluator got no calibrator; "
                "pass calibrator=Calibrator.load(...) (or Calibrator.default_for(model_id)), "
                "or write the rules over a raw score field"
            )
        self.scorer = scorer
        self.policy = policy
        self.calibrator = calibrator
        self.handler = handler
        self.messages_fn = messages_fn or default_qa_messages

    def _get_prompts(self) -> PromptDictType:
        return {}

    def _update_prompts(self, prompts_dict: PromptDictType) -> None:
        return None

    def _recorded(self, answer: str) -> tuple[list[dict[str, Any]], ScoreResult] | None:
        if self.handler is None:
            return None
        for rec in reversed(list(self.handler.scores.values())):
            if rec.result is not None and rec.answer.strip() == answer.strip():
                return rec.messages, rec.result
        return None

    def _verdict(
        self,
        query: str | None,
        response: str,
        contexts: Sequence[str] | None,
        result: ScoreResult | None,
        error: Exception | None,
        source: str,
    ) -> EvaluationResult:
        verdict = judge(self.policy, result, self.calibrator)  # the core decides; this only reports
        action = verdict.action.value
        if result is None:
            if action == "raise" and error is not None:
                raise error
            return EvaluationResult(
                query=query,
                response=response,
                contexts=contexts,
                passing=action in _PASSING,
                score=None,
                feedback=f"SemGrad could not score the answer ({error}); policy on_error -> {action}.",
                invalid_result=True,
                invalid_reason=str(error),
            )
        decision = verdict
        scores = ", ".join(f"{k}={v:.4g}" for k, v in result.scores().items())
        if decision.rule is None:
            why = "no rule matched (default action)"
        elif decision.value is None:
            why = f"rule {decision.rule!r} (catch-all)"
        else:
            why = f"rule {decision.rule!r} ({decision.field}={decision.value:.4g})"
        conf = f"confidence {verdict.confidence:.3f}; " if verdict.confidence is not None else ""
        feedback = f"SemGrad: {action} by {why}; {conf}{scores}; prompt: {source}."
        if decision.message:
            feedback += f" {decision.message}"
        return EvaluationResult(
            query=query,
            response=response,
            contexts=contexts,
            passing=action in _PASSING,
            score=verdict.confidence,
            feedback=feedback,
        )

    def evaluate(
        self,
        query: str | None = None,
        response: str | None = None,
        contexts: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> EvaluationResult:
        """Score and decide, synchronously (no event loop needed)."""
        if response is None:
            raise ValueError("SemGradEvaluator needs the response text")
        recorded = self._recorded(response)
        if recorded is not None:
            return self._verdict(query, response, contexts, recorded[1], None, "recorded by handler")
        messages = self.messages_fn(query or "", contexts)
        try:
            result = self.scorer.score(messages, response)
        except ScoringError as e:
            return self._verdict(query, response, contexts, None, e, "rebuilt")
        return self._verdict(query, response, contexts, result, None, "rebuilt from query and contexts")

    async def aevaluate(
        self,
        query: str | None = None,
        response: str | None = None,
        contexts: Sequence[str] | None = None,
        sleep_time_in_seconds: int = 0,
        **kwargs: Any,
    ) -> EvaluationResult:
        """Score in a worker thread (the event loop keeps running), then decide."""
        if response is None:
            raise ValueError("SemGradEvaluator needs the response text")
        await asyncio.sleep(sleep_time_in_seconds)
        recorded = self._recorded(response)
        if recorded is not None:
            return self._verdict(query, response, contexts, recorded[1], None, "recorded by handler")
        messages = self.messages_fn(query or "", contexts)
        try:
            result = await self.scorer.ascore(messages, response)
        except ScoringError as e:
            return self._verdict(query, response, contexts, None, e, "rebuilt")
        return self._verdict(query, response, contexts, result, None, "rebuilt from query and contexts")
