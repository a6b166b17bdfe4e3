"""``SemGradMiddleware``: guard the final answers of a LangChain 1.x ``create_agent`` agent.

Needs the ``agents`` extra (``pip install 'langchain-semgrad[agents]'``: langchain and langgraph).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

from semgrad_guard import (
    PAYLOAD_KEY,
    Action,
    AttemptContext,
    ConfigurationError,
    Guard,
    GuardResult,
    MissingDependencyError,
    apply_review_decision,
    generation_overrides,
)

from ._guarding import make_guard
from .messages import is_tool_call_turn, message_text, to_chat
from .metadata import read_payload, read_score, score_payload

try:
    from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
    from langchain.agents.middleware.types import ExtendedModelResponse
    from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage, convert_to_messages
    from langgraph.types import interrupt
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("langchain", "agents", "SemGradMiddleware") from e

ReviewMode = Literal["auto", "interrupt", "queue"]
REVIEW_INTERRUPT_TYPE = "semgrad_review"
"""``interrupt`` payload ``type`` for an answer waiting for a person."""


class _ToolCallsInstead(BaseException):
    """A retry came back with tool calls: the agent loop goes on with them (not an error, never retried)."""

    def __init__(self, response: Any) -> None:
        super().__init__("model answered a retry with tool calls")
        self.response = response


_META = {"source": "SemGradMiddleware"}


def _is_final_answer(response: Any) -> bool:
    ai = _final_ai(response)
    return ai is not None and not is_tool_call_turn(ai)


def _final_ai(response: Any) -> AIMessage | None:
    if isinstance(response, AIMessage):
        return response
    if isinstance(response, ExtendedModelResponse):
        response = response.model_response
    if isinstance(response, ModelResponse):
        for m in reversed(response.result):
            if isinstance(m, AIMessage):
                return m
    return None


def _replace_ai(response: Any, new: AIMessage) -> Any:
    if isinstance(response, AIMessage):
        return new
    if isinstance(response, ExtendedModelResponse):
        inner = _replace_ai(response.model_response, new)
        return ExtendedModelResponse(model_response=inner, command=response.command)
    old = _final_ai(response)
    return ModelResponse(
        result=[new if m is old else m for m in response.result],
        structured_response=response.structured_response,
    )


def _has_checkpointer() -> bool:
    try:
        from langgraph.config import get_config

        return get_config().get("configurable", {}).get("__pregel_checkpointer") is not None
    except Exception:
        return False


class SemGradMiddleware(AgentMiddleware):
    """Scores an agent's final answers (not its tool calls) and applies a guard policy.

    In ``wrap_model_call``: a model response that only calls tools passes through unscored. A
    final answer is scored (``ChatSemGrad``'s own score is reused), then the core
    :class:`~semgrad_guard.guard.guard.Guard` decides: accept / annotate keep it; retry calls the model
    again with the policy's strategies (resample settings reach ``ChatSemGrad``; reconsider adds
    the turns to the request); abstain replaces the text with the abstention message; review
    enqueues it in the review queue and, with a checkpointer (``review="auto"`` or
    ``"interrupt"``), pauses the graph in ``after_model`` with LangGraph ``interrupt()``
    carrying answer, scores, rule and review id. Resume with ``Command(resume="approve")``,
    ``"reject"``, or ``{"action": "edit", "answer": "..."}``: the answer is replaced accordingly
    and the decision recorded in the queue, without scoring again (the scores live in the
    message's ``response_metadata["semgrad"]``, i.e. in the checkpointed state).

    Example:
        >>> from langchain.agents import create_agent
        >>> from langgraph.checkpoint.memory import InMemorySaver
        >>> # a model whose chat template renders tools (the embedded SmolLM2 cannot call tools)
        >>> chat = ChatSemGrad(model="/models/Qwen2.5-1.5B-Instruct")  # doctest: +SKIP
        >>> agent = create_agent(chat, tools=[my_tool],  # doctest: +SKIP
        ...                      middleware=[SemGradMiddleware(chat.scorer, policy, calibrator=cal)],
        ...                      checkpointer=InMemorySaver())
    """

    def __init__(
        self,
        scorer: Any = None,
        policy: Any = None,
        *,
        calibrator: Any = None,
        review_queue: Any = None,
        strategies: Mapping[str, Any] | None = None,
        guard: Guard | None = None,
        review: ReviewMode = "auto",
    ) -> None:
        super().__init__()
        if review not in ("auto", "interrupt", "queue"):
            raise ConfigurationError(f"review must be 'auto', 'interrupt' or 'queue', got {review!r}")
        self.guard = make_guard(guard, scorer, policy, calibrator, review_queue, strategies)
        self.review = review
        self.results: list[GuardResult] = []
        """Every GuardResult this middleware produced, in order (for inspection and tests)."""

    # -- the model call ---------------------------------------------------------------------------
    @staticmethod
    def _chat(request: ModelRequest) -> list[dict[str, Any]]:
        messages: list[BaseMessage] = list(request.messages)
        if request.system_message is not None:
            messages = [request.system_message, *messages]
        return to_chat(messages)

    @staticmethod
    def _retry_request(request: ModelRequest, ctx: AttemptContext) -> ModelRequest:
        original = ctx.original_messages
        if ctx.messages[: len(original)] == original and len(ctx.messages) > len(original):
            extra: list[Any] = convert_to_messages(ctx.messages[len(original) :])
            return request.override(messages=[*request.messages, *extra])
        return request

    def _answer(self, response: Any, ctx: AttemptContext) -> tuple[str, Any] | str:
        ai = _final_ai(response)
        if ai is None:
            raise ConfigurationError(f"the model returned no AIMessage ({type(response).__name__})")
        if ctx.number > 1 and is_tool_call_turn(ai):
            raise _ToolCallsInstead(response)
        text = message_text(ai)
        score = read_score(ai)
        return (text, score) if score is not None else text

    def _rewrite(self, response: Any, result: GuardResult, mode: ReviewMode) -> Any:
        self.results.append(result)
        ai = _final_ai(response)
        assert ai is not None
        payload = score_payload(
            result.result,
            result,
            source="middleware",
            run_id=(read_payload(ai) or {}).get("run_id"),
            answer=(result.best_attempt.answer if result.best_attempt else None),
            interrupt=mode == "interrupt"
            and result.action is Action.REVIEW
            and result.review_status == "pending",
        )
        metadata = {**ai.response_metadata, PAYLOAD_KEY: payload}
        new = ai.model_copy(update={"content": result.answer, "response_metadata": metadata})
        return _replace_ai(response, new)

    def _mode(self) -> ReviewMode:
        if self.review != "auto":
            return self.review
        return "interrupt" if _has_checkpointer() else "queue"

    # Both hooks: the first response is the model's own call; each retry re-asks the handler with the
    # attempt's settings; _attempt and _finish are the shared logic, so the twins differ only in awaiting.
    def _attempt(
        self, ctx: AttemptContext, response: Any, responses: dict[int, Any]
    ) -> tuple[str, Any] | str:
        responses[ctx.number] = response
        return self._answer(response, ctx)

    def _finish(self, result: GuardResult, responses: dict[int, Any]) -> Any:
        best = result.best_attempt
        return self._rewrite(responses[best.number if best else len(responses)], result, self._mode())

    def wrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], Any]) -> Any:
        first = handler(request)
        if not _is_final_answer(first):
            return first  # intermediate step: tools run next
        responses: dict[int, Any] = {}

        def generate(messages: list[dict[str, Any]], ctx: AttemptContext) -> Any:
            with generation_overrides(**ctx.generate_kwargs):
                response = first if ctx.number == 1 else handler(self._retry_request(request, ctx))
            return self._attempt(ctx, response, responses)

        try:
            result = self.guard.run(self._chat(request), generate, metadata=_META)
        except _ToolCallsInstead as e:  # a retry answered with tool calls: let the agent run them
            return e.response
        return self._finish(result, responses)

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[Any]]
    ) -> Any:
        first = await handler(request)
        if not _is_final_answer(first):
            return first
        responses: dict[int, Any] = {}

        async def generate(messages: list[dict[str, Any]], ctx: AttemptContext) -> Any:
            with generation_overrides(**ctx.generate_kwargs):
                response = first if ctx.number == 1 else await handler(self._retry_request(request, ctx))
            return self._attempt(ctx, response, responses)

        try:
            result = await self.guard.arun(self._chat(request), generate, metadata=_META)
        except _ToolCallsInstead as e:
            return e.response
        return self._finish(result, responses)

    # -- human review via interrupt ---------------------------------------------------------------
    def after_model(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        messages = state.get("messages", []) if isinstance(state, Mapping) else []
        if not messages or not isinstance(messages[-1], AIMessage):
            return None
        last = messages[-1]
        payload = read_payload(last)
        if not payload or not payload.get("interrupt"):
            return None
        # Re-run on resume from here: everything needed is in the checkpointed message; no re-scoring.
        decision = interrupt(
            {
                "type": REVIEW_INTERRUPT_TYPE,
                "answer": payload.get("answer"),
                "scores": payload.get("scores"),
                "confidence": payload.get("confidence"),
                "rule": payload.get("rule"),
                "review_id": payload.get("review_id"),
            }
        )
        return {"messages": [self._apply_decision(last, payload, decision)]}

    async def aafter_model(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        return self.after_model(state, runtime)

    def _apply_decision(self, last: AIMessage, payload: dict[str, Any], decision: Any) -> AIMessage:
        if isinstance(decision, str):
            decision = {"action": decision}
        if not isinstance(decision, Mapping) or decision.get("action") not in ("approve", "reject", "edit"):
            raise ConfigurationError(
                "resume a SemGrad review with Command(resume='approve' | 'reject' | "
                f"{{'action': 'edit', 'answer': '...'}}), got {decision!r}"
            )
        action = decision["action"]
        reviewer, note = decision.get("reviewer"), decision.get("note")
        edited = decision.get("answer")
        if action == "edit" and not isinstance(edited, str):
            raise ConfigurationError(
                "an 'edit' review decision needs the new text: {'action': 'edit', 'answer': '...'}"
            )
        item_id = payload.get("review_id")
        status = {"approve": "approved", "reject": "rejected", "edit": "edited"}[action]
        if item_id is not None:  # the core records it (decisions are final) ...
            status = apply_review_decision(
                self.guard.review_queue, item_id, action, answer=edited, reviewer=reviewer, note=note
            ).status.value
        # ... and says what the user gets for it.
        text = self.guard.policy.answer_after_review(
            status, edited if action == "edit" else None, payload.get("answer") or ""
        )
        new_payload = {**payload, "review_status": status, "interrupt": False, "reviewer": reviewer}
        return last.model_copy(
            update={
                "content": text,
                "response_metadata": {**last.response_metadata, PAYLOAD_KEY: new_payload},
            }
        )


ANSWER_PROMPT = "Using the tool results above, answer my question in one short sentence."
"""What :class:`AnswerFromToolResults` asks once tools have returned."""


class AnswerFromToolResults(AgentMiddleware):
    """After tools return, ask the model to answer from their results (small local models need it).

    Small chat models imitate their last turn: once a tool result follows their own call, Qwen2.5-Coder
    0.5B writes call after call instead of answering (the agent runs them until its recursion limit).
    When the request ends with tool results, this appends one user turn (``prompt``) to *that model
    call only*: the agent's state, and so the conversation the user keeps, is unchanged. The tools
    stay bound, so the model may still call another tool, and a call is still parsed as a call:
    tool-call JSON never becomes an answer. Put it before :class:`SemGradMiddleware`, so the answer
    is scored on the prompt the model saw.

    Example:
        >>> mw = AnswerFromToolResults()
        >>> mw.prompt == ANSWER_PROMPT
        True
        >>> agent = create_agent(chat, tools, middleware=[mw, SemGradMiddleware(...)])  # doctest: +SKIP
    """

    def __init__(self, prompt: str = ANSWER_PROMPT) -> None:
        super().__init__()
        if not prompt.strip():
            raise ConfigurationError("AnswerFromToolResults: prompt is empty; pass the instruction to append")
        self.prompt = prompt

    def _nudged(self, request: ModelRequest) -> ModelRequest:
        if request.messages and isinstance(request.messages[-1], ToolMessage):
            return request.override(messages=[*request.messages, HumanMessage(self.prompt)])
        return request

    def wrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], Any]) -> Any:
        return handler(self._nudged(request))

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[Any]]
    ) -> Any:
        return await handler(self._nudged(request))
