"""``SemGradQueryEngine``: gate the final answer of any query engine with a guard policy."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.response.schema import RESPONSE_TYPE, Response
from llama_index.core.callbacks import CallbackManager
from llama_index.core.prompts.mixin import PromptMixinType
from llama_index.core.schema import NodeWithScore, QueryBundle

from semgrad_guard import (
    PAYLOAD_KEY,
    Action,
    AttemptContext,
    ConfigurationError,
    Generated,
    Guard,
    GuardPolicy,
    GuardResult,
    ScoreResult,
    ScoringError,
    WidenRetrievalStrategy,
    generation_overrides,
)

from ._convert import score_payload
from .evaluation import default_qa_messages
from .handlers import SemGradEventHandler, capture_scores

STATUS_KEY = "semgrad_status"
"""Metadata key set on the source nodes of an answer that was not accepted (``abstained``, ``pending_review``, ...)."""

RESULT_KEY = PAYLOAD_KEY
GUARD_RESULT_KEY = "semgrad_guard_result"
"""Metadata key of the whole :class:`~semgrad_guard.GuardResult` (every attempt); ``metadata["semgrad"]`` holds
the score payload every adapter writes."""
"""Key of the guard's result (a JSON dict) in ``response.metadata``."""

ATTEMPTS_KEY = "semgrad_attempts"
"""Key of what each attempt retrieved and how it was scored, in ``response.metadata`` and review items."""

DEFAULT_REFORMULATION = "{query}\n(Answer only from the context information. If it does not contain the answer, say that you do not know.)"

WidenFn = Callable[[BaseQueryEngine, int], BaseQueryEngine]
ReformulateFn = Callable[[str, int], str]


def widen_similarity_top_k(engine: BaseQueryEngine, top_k: int) -> BaseQueryEngine:
    """A copy of ``engine`` retrieving ``top_k`` nodes (engines built on a retriever with ``similarity_top_k``).

    Raises:
        ConfigurationError: the engine has no retriever with ``similarity_top_k``; pass ``widen_fn``.
    """
    retriever = getattr(engine, "retriever", None)
    with_retriever = getattr(engine, "with_retriever", None)
    if retriever is None or with_retriever is None or not hasattr(retriever, "similarity_top_k"):
        raise ConfigurationError(
            f"cannot widen retrieval of a {type(engine).__name__}: it has no retriever with similarity_top_k; "
            "pass SemGradQueryEngine(widen_fn=lambda engine, top_k: ...) or drop 'widen_retrieval' from the policy"
        )
    wider = copy.copy(retriever)  # the shared engine keeps its own top-k: concurrent queries stay independent
    wider.similarity_top_k = top_k
    widened: BaseQueryEngine = with_retriever(wider)
    return widened


def guard_result_from_response(response: Any) -> GuardResult | None:
    """The :class:`~semgrad_guard.GuardResult` a :class:`SemGradQueryEngine` response carries, or ``None``."""
    metadata = getattr(response, "metadata", None) or {}
    raw = metadata.get(GUARD_RESULT_KEY)
    return GuardResult.model_validate(raw) if raw is not None else None


class SemGradQueryEngine(BaseQueryEngine):
    """Wraps any query engine and applies a :class:`~semgrad_guard.GuardPolicy` to its final answer.

    The answer is scored against the exact prompt the LLM received (observed by a
    :class:`SemGradEventHandler`; a :class:`SemGradLLM` answer brings its own score), then the
    :class:`~semgrad_guard.Guard` decides:

    * **accept / annotate**: the inner response, with the guard's result in ``metadata["semgrad"]``;
    * **abstain**: a response whose text is the abstention message; the source nodes are kept,
      copied, with ``metadata["semgrad_status"] = "abstained"``;
    * **retry**: re-query (tenacity, the policy's ``retry`` settings). Strategies: ``widen_retrieval``
      re-queries with ``similarity_top_k`` multiplied by ``top_k_growth`` per retry and a reformulated
      query (retrieval still embeds the original question); ``resample`` regenerates with sampling
      (honoured by :class:`SemGradLLM`); ``reconsider`` folds the previous answer into the query;
    * **review**: enqueue for a person and return a pending response (``metadata["semgrad"]["review_id"]``),
      or the reviewer's answer when the policy waits for the decision;
    * **raise**: :class:`~semgrad_guard.AnswerRejectedError`.

    Args:
        query_engine: the engine to guard (must not stream: gating needs the whole answer).
        scorer: a :class:`~semgrad_guard.Scorer` over the LLM's weights.
        policy: a :class:`~semgrad_guard.GuardPolicy` (or dict / YAML).
        calibrator: maps scores to confidence; needed for rules over ``confidence``.
        review_queue: where review items go: a queue, a SQLite path or a postgresql:// URL (default: the policy's).
        strategies: extra or overriding retry strategies by name.
        top_k_growth: factor by which ``widen_retrieval`` multiplies ``similarity_top_k`` per retry.
        widen_fn: ``widen_fn(engine, top_k) -> engine`` for engines without a ``similarity_top_k`` retriever.
        reformulate: ``reformulate(query, attempt_number) -> query`` for ``widen_retrieval`` (None: keep the query).
        handler: a registered :class:`SemGradEventHandler` to take scores from (default: one of its own).

    Example:
        >>> from llama_index.core import Document, SummaryIndex
        >>> from llama_index.core.llms import MockLLM
        >>> from semgrad_guard import MockScorer
        >>> index = SummaryIndex.from_documents([Document(text="The library opens at 9.")])
        >>> engine = index.as_query_engine(llm=MockLLM(max_tokens=4))
        >>> policy = {"rules": [{"field": "semgrad", "max": 0.5, "action": "accept"}, {"action": "abstain"}]}
        >>> guarded = SemGradQueryEngine(engine, MockScorer(lambda m, a: 0.9), policy)
        >>> r = guarded.query("When does the library open?")
        >>> str(r), r.source_nodes[0].node.metadata["semgrad_status"]
        ("I'm not confident enough to answer that.", 'abstained')
    """

    def __init__(
        self,
        query_engine: BaseQueryEngine,
        scorer: Any,
        policy: GuardPolicy | Mapping[str, Any] | str,
        *,
        calibrator: Any = None,
        review_queue: Any = None,
        strategies: Mapping[str, Any] | None = None,
        top_k_growth: int = 2,
        widen_fn: WidenFn | None = None,
        reformulate: ReformulateFn | None = lambda query, attempt: DEFAULT_REFORMULATION.format(query=query),
        handler: SemGradEventHandler | None = None,
        callback_manager: CallbackManager | None = None,
    ) -> None:
        if top_k_growth < 1:
            raise ConfigurationError(f"top_k_growth must be >= 1, got {top_k_growth}")
        self._engine = query_engine
        self._scorer = scorer
        self.top_k_growth = top_k_growth
        self._widen_fn = widen_fn
        self._reformulate = reformulate
        given = dict(strategies or {})
        given.setdefault(WidenRetrievalStrategy.name, WidenRetrievalStrategy(self._widen_hook))
        given.setdefault("reconsider", _ReconsiderAsQuery())
        self.guard = Guard(
            policy, scorer=scorer, calibrator=calibrator, review_queue=review_queue, strategies=given
        )
        self._own_handler = handler is None
        self._handler = handler or SemGradEventHandler(scorer, only_captured=True).register()
        super().__init__(callback_manager or getattr(query_engine, "callback_manager", None))

    @property
    def policy(self) -> GuardPolicy:
        return self.guard.policy

    @property
    def query_engine(self) -> BaseQueryEngine:
        """The wrapped engine."""
        return self._engine

    def close(self) -> None:
        """Unregister the engine's own handler (when it made one)."""
        if self._own_handler:
            self._handler.unregister()

    def _get_prompt_modules(self) -> PromptMixinType:
        return {"query_engine": self._engine}

    # -- attempts ---------------------------------------------------------------------------------
    def _widen_hook(self, messages: list[dict[str, Any]], attempt: int) -> list[dict[str, Any]] | None:
        if self._reformulate is None:
            return None
        return [{"role": "user", "content": self._reformulate(messages[-1]["content"], attempt)}]

    def _plan(
        self, query: QueryBundle, ctx: AttemptContext, info: dict[str, Any]
    ) -> tuple[BaseQueryEngine, QueryBundle]:
        engine = self._engine
        bundle = query
        info.update(strategy=ctx.strategy, query=ctx.messages[-1]["content"])
        if ctx.strategy == WidenRetrievalStrategy.name:
            base = getattr(getattr(engine, "retriever", None), "similarity_top_k", None)
            widen = self._widen_fn
            if base is None and widen is None:
                widen_similarity_top_k(engine, 1)  # raises the explanatory ConfigurationError
            top_k = int(base or 2) * self.top_k_growth ** (ctx.number - 1)
            engine = widen(engine, top_k) if widen is not None else widen_similarity_top_k(engine, top_k)
            info["similarity_top_k"] = top_k
        asked = ctx.messages[-1]["content"]
        if asked != query.query_str:
            # Retrieve with the original question's embedding; the LLM sees the reformulated one.
            embed = query.custom_embedding_strs or [query.query_str]
            bundle = QueryBundle(
                query_str=asked, custom_embedding_strs=list(embed), embedding=query.embedding
            )
        return engine, bundle

    def _scored(
        self,
        response: Any,
        captured: Any,
        ctx: AttemptContext,
        responses: dict[int, Any],
        info: dict[str, Any],
    ) -> tuple[str, ScoreResult] | Generated:
        if not isinstance(response, Response):
            raise ConfigurationError(
                f"SemGradQueryEngine needs a complete Response to gate, got {type(response).__name__}; "
                "build the inner query engine with streaming=False"
            )
        responses[ctx.number] = response
        answer = response.response or ""
        info["sources"] = [n.node.node_id for n in response.source_nodes]
        if captured is not None and captured.answer.strip() == answer.strip():
            info["scored_prompt"] = "observed"
            if captured.result is not None:
                return answer, captured.result
            # Scoring the real prompt failed: the guard applies on_error (no re-score of a shorter chat).
            return Generated(answer, error=captured.error or ScoringError("scoring failed"))
        # The LLM call was not observed (another LLM class, or a refine step rewrote the answer):
        # score against LlamaIndex's default QA prompt over the retrieved context.
        info["scored_prompt"] = "rebuilt"
        contexts = [n.get_content() for n in response.source_nodes]
        try:
            return answer, self._scorer.score(
                default_qa_messages(ctx.messages[-1]["content"], contexts), answer
            )
        except ScoringError as e:
            return Generated(answer, error=e)

    def _query(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        responses: dict[int, Any] = {}
        # Filled in per attempt; the guard copies it into a review item after the attempts ran.
        meta: dict[str, Any] = {"query": query_bundle.query_str, ATTEMPTS_KEY: {}}

        def generate(
            messages: list[dict[str, Any]], ctx: AttemptContext
        ) -> tuple[str, ScoreResult] | Generated:
            info = meta[ATTEMPTS_KEY].setdefault(str(ctx.number), {})
            engine, bundle = self._plan(query_bundle, ctx, info)
            with capture_scores(self._handler) as cap, generation_overrides(**ctx.generate_kwargs):
                response = engine.query(bundle)
            return self._scored(response, cap.last(), ctx, responses, info)

        result = self.guard.run(_question(query_bundle), generate, metadata=meta)
        return self._respond(result, responses, meta)

    async def _aquery(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        responses: dict[int, Any] = {}
        meta: dict[str, Any] = {"query": query_bundle.query_str, ATTEMPTS_KEY: {}}

        async def generate(
            messages: list[dict[str, Any]], ctx: AttemptContext
        ) -> tuple[str, ScoreResult] | Generated:
            info = meta[ATTEMPTS_KEY].setdefault(str(ctx.number), {})
            engine, bundle = self._plan(query_bundle, ctx, info)
            with capture_scores(self._handler) as cap, generation_overrides(**ctx.generate_kwargs):
                response = await engine.aquery(bundle)
                captured = await cap.alast()
            return self._scored(response, captured, ctx, responses, info)

        result = await self.guard.arun(_question(query_bundle), generate, metadata=meta)
        return self._respond(result, responses, meta)

    # -- the response -----------------------------------------------------------------------------
    def _respond(self, result: GuardResult, responses: dict[int, Any], meta: dict[str, Any]) -> Response:
        best = result.best_attempt
        inner = responses.get(best.number) if best is not None else None
        if inner is None and responses:
            inner = responses[max(responses)]
        nodes: list[NodeWithScore] = list(inner.source_nodes) if inner is not None else []
        metadata = dict(inner.metadata or {}) if inner is not None else {}
        metadata[RESULT_KEY] = _payload(result)
        metadata[GUARD_RESULT_KEY] = result.model_dump(mode="json")
        metadata[ATTEMPTS_KEY] = meta[ATTEMPTS_KEY]
        if result.accepted and result.answer == (inner.response if inner is not None else None):
            return Response(response=result.answer, source_nodes=nodes, metadata=metadata)
        status = _status(result)
        if status is not None:
            nodes = [mark_status(n, status) for n in nodes]
        return Response(response=result.answer, source_nodes=nodes, metadata=metadata)


def _payload(result: GuardResult) -> dict[str, Any]:
    best = result.best_attempt
    scored = best.answer if best is not None and best.answer != result.answer else None
    return score_payload(result.result, result, source="query_engine", answer=scored)


class _ReconsiderAsQuery:
    """Reconsider for query engines: the previous answer and a request to reconsider go into the query text.

    Its answer is scored against the prompt the LLM actually saw (the reformulated query with its
    retrieved context), like every other attempt of the engine.
    """

    name = "reconsider"

    def __init__(
        self,
        template: str = '{query}\n(A previous answer was: "{answer}". It may be wrong. Reconsider and answer again from the context.)',
    ) -> None:
        self.template = template

    def prepare(self, context: AttemptContext) -> AttemptContext:
        from dataclasses import replace

        answered = [a for a in context.previous if a.answer is not None]
        if not answered:
            return replace(context, strategy=self.name, changes={**context.changes, "reconsider": False})
        query = context.original_messages[-1]["content"]
        messages = [
            {"role": "user", "content": self.template.format(query=query, answer=answered[-1].answer)}
        ]
        return replace(
            context,
            messages=messages,
            score_messages=messages,
            strategy=self.name,
            changes={**context.changes, "reconsider": True, "reconsidered_attempt": answered[-1].number},
        )


def _question(bundle: QueryBundle) -> list[dict[str, Any]]:
    return [{"role": "user", "content": bundle.query_str}]


def _status(result: GuardResult) -> str | None:
    if result.action is Action.ABSTAIN:
        return "abstained"
    if result.action is Action.REVIEW:
        return {"pending": "pending_review", "rejected": "rejected_by_reviewer"}.get(
            result.review_status or "pending"
        )
    return None


def mark_status(node: NodeWithScore, status: str) -> NodeWithScore:
    """A copy of ``node`` whose metadata says why the answer was not accepted (hidden from the LLM and embeddings)."""
    # Copy: the node objects belong to the index's docstore and other queries.
    inner = node.node.model_copy(update={"metadata": {**node.node.metadata, STATUS_KEY: status}})
    inner.excluded_llm_metadata_keys = [*node.node.excluded_llm_metadata_keys, STATUS_KEY]
    inner.excluded_embed_metadata_keys = [*node.node.excluded_embed_metadata_keys, STATUS_KEY]
    return NodeWithScore(node=inner, score=node.score)
