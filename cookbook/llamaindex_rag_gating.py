"""Gate RAG answers with SemGrad in LlamaIndex: accept, retry with wider retrieval, review or abstain.

A real ``VectorStoreIndex`` over the small document set in ``cookbook/llamaindex_data/`` (a
fictional public library), local MiniLM embeddings and the embedded SmolLM2-135M-Instruct, all
offline. ``SemGradLLM`` generates each answer and scores it in the same pass; ``SemGradQueryEngine``
applies a guard policy to the final answer. In-scope questions (answered by the documents) and
out-of-scope ones (not in the documents) go through the same engine and the table shows where each
was routed.

The policy (``cookbook/policies/with_retry.yaml``) has its bands over the confidence of the calibrator
shipped for the embedded model, fitted on development data (SciQ, TruthfulQA and a RAG set of
fictional facts); ``tests/unit/test_shipped_policies.py`` holds it to its promise on answers that
calibrator was not fitted on. For your own model and data, fit one: ``semgrad-guard calibrate``.

Run: ``python cookbook/llamaindex_rag_gating.py`` (needs ``pip install -e integrations/llama-index-llms-semgrad[test]``).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from semgrad_guard import Calibrator, GuardPolicy, RetrySettings

DATA = Path(__file__).resolve().parent / "llamaindex_data"

IN_SCOPE = [
    "When does the library open on Saturdays?",
    "How much are the late fees per day?",
]
OUT_OF_SCOPE = [
    "Who won the football World Cup in 1998?",
    "What is the library's annual budget?",
]

# Bands over calibrated confidence (the shipped calibrator): cookbook/policies/with_retry.yaml.
# Retries here widen retrieval instead of resampling: similarity_top_k 2 -> 4, with the question
# reformulated to insist on the context.
POLICY = GuardPolicy.from_yaml(Path(__file__).parent / "policies" / "with_retry.yaml").model_copy(
    update={
        "retry": RetrySettings(max_attempts=2, strategy="widen_retrieval", on_exhausted="review"),
        "abstain_message": "I can't answer that from the library's documents.",
    }
)


def main(
    scorer: Any = None, *, review_db: str | Path | None = None, max_new_tokens: int = 32
) -> list[dict[str, Any]]:
    """Answer every question through the guarded engine; returns one row per question."""
    from llama_index.core import Settings, SimpleDirectoryReader, VectorStoreIndex
    from llama_index.llms.semgrad import SemGradLLM
    from llama_index.llms.semgrad.embeddings import LocalSentenceTransformerEmbedding
    from llama_index.llms.semgrad.query_engine import SemGradQueryEngine, guard_result_from_response
    from rich.console import Console
    from rich.table import Table

    from semgrad_guard import SemGradScorer, SQLiteReviewQueue

    scorer = scorer or SemGradScorer.from_pretrained("default")
    # Explicit globals: nothing may fall back to a hosted model.
    # A 135M model loops under greedy decoding; the penalty shapes decoding only, not the score.
    Settings.llm = llm = SemGradLLM(
        scorer, max_new_tokens=max_new_tokens, generate_kwargs={"repetition_penalty": 1.3}
    )
    Settings.embed_model = LocalSentenceTransformerEmbedding()

    logging.getLogger("llama_index.core.readers.file.base").setLevel(
        logging.ERROR
    )  # plain .md needs no extra reader
    index = VectorStoreIndex.from_documents(SimpleDirectoryReader(str(DATA)).load_data())
    tmp = tempfile.TemporaryDirectory() if review_db is None else None
    queue = SQLiteReviewQueue(Path(tmp.name) / "review.db" if tmp is not None else review_db)
    engine = SemGradQueryEngine(
        index.as_query_engine(llm=llm, similarity_top_k=2),
        scorer,
        POLICY,
        calibrator=Calibrator.default_for(scorer.model_id),
        review_queue=queue,
    )

    rows: list[dict[str, Any]] = []
    try:
        for scope, questions in (("in scope", IN_SCOPE), ("out of scope", OUT_OF_SCOPE)):
            for question in questions:
                response = engine.query(question)
                result = guard_result_from_response(response)
                assert result is not None
                attempts = response.metadata["semgrad_attempts"]
                rows.append(
                    {
                        "scope": scope,
                        "question": question,
                        "action": result.action.value,
                        "rule": result.rule,
                        "answer": str(response),
                        "original_answer": result.original_answer,
                        "semgrad": result.result.semgrad if result.result is not None else None,
                        "confidence": result.confidence,
                        "attempts": len(result.attempts),
                        "top_k": [a.get("similarity_top_k", 2) for a in attempts.values()],
                        "review_id": result.review_id,
                        "sources": [n.node.metadata.get("file_name") for n in response.source_nodes],
                        "source_status": sorted(
                            {n.node.metadata.get("semgrad_status", "") for n in response.source_nodes}
                        ),
                    }
                )
    finally:
        engine.close()
        queue.close()
        if tmp is not None:
            tmp.cleanup()

    table = Table(title="Guarded RAG answers (SmolLM2-135M-Instruct, bands over calibrated confidence)")
    for column in ("scope", "question", "route", "confidence", "semgrad", "attempts (top-k)", "answer shown"):
        table.add_column(column, overflow="fold")
    for row in rows:
        semgrad = f"{row['semgrad']:.2e}" if row["semgrad"] is not None else "error"
        route = f"{row['action']} ({row['rule']})"
        table.add_row(
            row["scope"],
            row["question"],
            route,
            f"{row['confidence']:.2f}" if row["confidence"] is not None else "n/a",
            semgrad,
            f"{row['attempts']} ({row['top_k']})",
            row["answer"],
        )
    Console(width=160).print(table)
    return rows


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
