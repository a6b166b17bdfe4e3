"""A guarded RAG service whose review band lands in the queue, and the page where a person clears it.

1. ``semgrad-guard serve --calibrator shipped --policy policies/accept_or_review.yaml --review-ui``
   starts in a child process with a token: the OpenAI-compatible ``/v1/chat/completions`` generates,
   scores and applies the policy; answers below the confident band go to the review queue, and the
   queue's pages are served by the same process under ``/review/``.
2. The app asks questions about the museum in ``cookbook/data/orbitra_docs.jsonl`` (a small word-overlap
   retriever puts the two best documents in the system prompt) and prints what the guard did.
3. A reviewer works through ``/review/``: logs in with the token (a form; the token never goes in a URL),
   opens each pending item and decides, posting the same forms a browser posts. Here the "person"
   approves an answer when nearly all its words are in the retrieved context, and rejects it otherwise; with ``--keep-open``
   the service stays up so you can do it yourself in a browser.

Run: ``python cookbook/review_ui_rag_service.py [--keep-open]`` (needs ``semgrad-guard fetch-default-model``).
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from semgrad_guard.guard.policy import GuardPolicy
from semgrad_guard.serve import ServeProcess

HERE = Path(__file__).parent
DOCS = [json.loads(line) for line in (HERE / "data" / "orbitra_docs.jsonl").read_text().splitlines()]
POLICY_FILE = HERE / "policies" / "accept_or_review.yaml"
QUESTIONS = [
    "How much does an adult ticket cost?",
    "When is the museum closed?",
    "Who is the current director of the museum?",
]


def retrieve(question: str, k: int = 2) -> list[dict[str, str]]:
    """The k documents sharing the most words with the question (enough for twelve short documents)."""
    words = set(re.findall(r"\w+", question.lower()))
    return sorted(DOCS, key=lambda d: -len(words & set(re.findall(r"\w+", d["text"].lower()))))[:k]


def ask(client: httpx.Client, question: str) -> dict[str, Any]:
    context = "\n".join(d["text"] for d in retrieve(question))
    messages = [
        {
            "role": "system",
            "content": f"Answer in one short sentence, using only this information:\n{context}",
        },
        {"role": "user", "content": question},
    ]
    r = client.post("/v1/chat/completions", json={"model": "default", "messages": messages, "max_tokens": 40})
    r.raise_for_status()
    h = r.headers
    return {
        "question": question,
        "answer": r.json()["choices"][0]["message"]["content"],
        "action": h.get("x-semgrad-action"),
        "confidence": h.get("x-semgrad-confidence"),
        "review_id": h.get("x-semgrad-review-id"),
    }


def csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]


def clear_queue(base: str, token: str, reviewer: str = "cookbook reviewer") -> list[dict[str, Any]]:
    """Log in to the review pages and decide every pending item, as a person at a browser would."""
    decided = []
    with httpx.Client(base_url=base, follow_redirects=False, timeout=30) as web:
        page = web.get("/review/login")
        web.post("/review/login", data={"csrf": csrf(page.text), "token": token, "name": reviewer})
        url = web.get("/review/?status=pending").text
        ids = [int(i) for i in re.findall(r'data-href="/review/items/(\d+)"', url)]
        for item_id in ids:
            html = web.get(f"/review/items/{item_id}").text
            answer = re.search(r'id="answer">(.*?)</pre>', html, re.S).group(1)  # type: ignore[union-attr]
            context = set(re.findall(r"\w+", html.split('id="question"')[0].lower()))
            words = [w for w in re.findall(r"\w+", answer.lower()) if len(w) > 3]
            supported = sum(w in context for w in words) >= 0.8 * len(words) > 0
            action = "approve" if supported else "reject"
            r = web.post(
                f"/review/items/{item_id}/decision",
                data={"csrf": csrf(html), "action": action, "note": "checked against the context"},
            )
            decided.append({"id": item_id, "action": action, "next": r.headers.get("location")})
    return decided


def run(keep_open: bool = False, review_dir: str | None = None) -> dict[str, Any]:
    token = secrets.token_urlsafe(24)
    review_dir = review_dir or tempfile.mkdtemp(prefix="semgrad-review-ui-")
    policy = GuardPolicy.from_yaml(POLICY_FILE)
    policy = policy.model_copy(
        update={"review": policy.review.model_copy(update={"path": f"{review_dir}/review.db"})}
    )
    policy_file = Path(review_dir) / "policy.json"
    policy_file.write_text(policy.model_dump_json())
    args = ("--calibrator", "shipped", "--policy", str(policy_file), "--review-ui")
    with ServeProcess(*args, token=token) as service:
        with httpx.Client(
            base_url=service.url, headers={"Authorization": f"Bearer {token}"}, timeout=120
        ) as api:
            answers = [ask(api, q) for q in QUESTIONS]
        for a in answers:
            print(
                f"{a['action'] or '-':8} conf={a['confidence'] or '-':>6.6}  {a['question']} -> {a['answer']!r}"
            )
        if keep_open:
            print(f"\nreview pages: {service.url}/review/  (token: {token}); Ctrl-C stops the service")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
            return {"answers": answers, "decided": []}
        decided = clear_queue(service.url, token)
        for d in decided:
            print(f"review item {d['id']}: {d['action']} (then {d['next']})")
    return {"answers": answers, "decided": decided, "db": f"{review_dir}/review.db"}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep-open", action="store_true", help="keep the service up to review in a browser")
    run(keep_open=parser.parse_args().keep_open)
