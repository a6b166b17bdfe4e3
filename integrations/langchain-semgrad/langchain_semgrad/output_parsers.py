"""``SemGradOutputParser``: gate a model's answer on the SemGrad score it carries."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any
from uuid import UUID

from langchain_core.exceptions import OutputParserException
from langchain_core.messages import BaseMessage, BaseMessageChunk
from langchain_core.output_parsers import BaseGenerationOutputParser
from langchain_core.outputs import ChatGenerationChunk, Generation, GenerationChunk
from langchain_core.runnables import RunnableConfig
from pydantic import ConfigDict, PrivateAttr

from semgrad_guard import Action, AnswerRejectedError, Guard, GuardResult

from ._guarding import make_guard, retry_error
from .metadata import read_payload, read_score

_NO_PROMPT = [{"role": "user", "content": "(prompt not available to the output parser; pass handler=...)"}]


class SemGradOutputParser(BaseGenerationOutputParser[Any]):
    """Applies a :class:`~semgrad_guard.GuardPolicy` to the score in ``response_metadata["semgrad"]``.

    Put it after a model that carries scores (:class:`ChatSemGrad`, or any chat model with a
    :class:`SemGradCallbackHandler` attached). It never scores: output parsers see only the output.

    - accept: the answer text; annotate: the text plus the note (``annotation_template``);
    - abstain: the policy's abstention message;
    - retry: raises :class:`LowConfidenceError` (an ``OutputParserException``), so
      ``chain.with_retry(retry_if_exception_type=(LowConfidenceError,))`` or
      ``.with_fallbacks([...])`` act on it; a rule with action ``raise`` raises it too;
    - review: enqueues the answer (with the prompt when ``handler`` recorded it) and returns the
      pending message (or the reviewer's answer when the policy waits for one).

    With ``partial=True`` text passes through ungated. Streaming through the parser yields the
    text so far (cumulative, ungated: the score arrives with the last chunk), then, last, the
    gated result: the last value streamed is the one to show.

    Example:
        >>> from langchain_semgrad import ChatSemGrad
        >>> from semgrad_guard import MockScorer
        >>> from semgrad_guard import GuardPolicy
        >>> policy = GuardPolicy.from_dict({"rules": [
        ...     {"field": "semgrad", "max": 0.5, "action": "accept"},
        ...     {"field": "semgrad", "action": "abstain"}]})
        >>> model = ChatSemGrad(scorer=MockScorer(lambda m, a: 0.9, answers=["Sydney"]))
        >>> (model | SemGradOutputParser(policy=policy)).invoke("Capital of Australia?")
        "I'm not confident enough to answer that."
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    policy: Any = None
    """A GuardPolicy (or a dict / YAML the core accepts)."""
    calibrator: Any = None
    """A Calibrator, needed for rules over confidence."""
    review_queue: Any = None
    """Where 'review' answers go (default: the core's SQLite queue at policy.review.path)."""
    guard: Any = None
    """A ready ``Guard`` instead of policy/calibrator/review_queue."""
    handler: Any = None
    """The SemGradCallbackHandler that scored the answer: gives review items their prompt."""
    return_guard_result: bool = False
    """Return the whole GuardResult instead of the text."""
    annotation_template: str = "{answer}\n\n[{annotation}]"
    """How an 'annotate' decision shows its note in the returned text."""

    _guard: Guard = PrivateAttr()

    def model_post_init(self, context: Any) -> None:
        self._guard = make_guard(self.guard, None, self.policy, self.calibrator, self.review_queue, None)

    @property
    def _type(self) -> str:
        return "semgrad_output_parser"

    def _chat_for(self, generation: Generation) -> list[dict[str, Any]]:
        payload = read_payload(generation) or {}
        run_id = payload.get("run_id")
        if self.handler is not None and run_id:
            chat = self.handler.chats.get(UUID(run_id))
            if chat:
                return list(chat)
        return list(_NO_PROMPT)

    def _outcome(self, guarded: GuardResult, text: str) -> Any:
        if guarded.action is Action.RETRY:
            raise retry_error(guarded, text)
        if self.return_guard_result:
            return guarded
        if guarded.action is Action.ANNOTATE and guarded.annotation:
            return self.annotation_template.format(answer=guarded.answer, annotation=guarded.annotation)
        return guarded.answer

    def _prepare(self, result: list[Generation]) -> tuple[Generation, str, Any]:
        if not result:
            raise OutputParserException("no generation to parse")
        generation = result[0]
        score = read_score(generation)
        if score is None:
            raise OutputParserException(
                "the answer carries no SemGrad score (response_metadata['semgrad']): use ChatSemGrad or attach "
                "SemGradCallbackHandler(scorer) to the model before this parser",
                llm_output=generation.text,
            )
        return generation, generation.text, score

    def parse_result(self, result: list[Generation], *, partial: bool = False) -> Any:
        if partial:
            return result[0].text if result else ""
        generation, text, score = self._prepare(result)
        try:
            guarded = self._guard.check(
                self._chat_for(generation), text, result=score, metadata=self._meta(generation)
            )
        except AnswerRejectedError as e:
            raise retry_error(e.guard_result, text) from e
        return self._outcome(guarded, text)

    async def aparse_result(self, result: list[Generation], *, partial: bool = False) -> Any:
        if partial:
            return result[0].text if result else ""
        generation, text, score = self._prepare(result)
        try:
            guarded = await self._guard.acheck(
                self._chat_for(generation), text, result=score, metadata=self._meta(generation)
            )
        except AnswerRejectedError as e:
            raise retry_error(e.guard_result, text) from e
        return self._outcome(guarded, text)

    # -- streaming: cumulative text, then the gated result ----------------------------------------------
    @staticmethod
    def _as_generation(chunk: Any) -> GenerationChunk | ChatGenerationChunk:
        if isinstance(chunk, BaseMessageChunk):
            return ChatGenerationChunk(message=chunk)
        if isinstance(chunk, BaseMessage):
            return ChatGenerationChunk(message=BaseMessageChunk(**chunk.model_dump()))
        return GenerationChunk(text=str(chunk))

    def _transform(self, input: Iterator[Any]) -> Iterator[Any]:
        acc: Any = None
        for chunk in input:
            gen = self._as_generation(chunk)
            acc = gen if acc is None else acc + gen
            if gen.text:
                yield self.parse_result([acc], partial=True)
        if acc is not None:
            yield self.parse_result([acc])

    async def _atransform(self, input: AsyncIterator[Any]) -> AsyncIterator[Any]:
        acc: Any = None
        async for chunk in input:
            gen = self._as_generation(chunk)
            acc = gen if acc is None else acc + gen
            if gen.text:
                yield await self.aparse_result([acc], partial=True)
        if acc is not None:
            yield await self.aparse_result([acc])

    def transform(
        self, input: Iterator[Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[Any]:
        yield from self._transform_stream_with_config(input, self._transform, config, run_type="parser")

    async def atransform(
        self, input: AsyncIterator[Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        async for out in self._atransform_stream_with_config(
            input, self._atransform, config, run_type="parser"
        ):
            yield out

    @staticmethod
    def _meta(generation: Generation) -> dict[str, Any]:
        payload = read_payload(generation) or {}
        return {"source": "langchain_semgrad.SemGradOutputParser", "run_id": payload.get("run_id")}
