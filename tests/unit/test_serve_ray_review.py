"""Two Ray Serve replicas, one PostgreSQL review queue: what one replica queues, a reviewer anywhere clears.

Skipped, saying why, where the ``ray`` extra is not installed; the PostgreSQL server is the test
session's throwaway cluster (see tests/conftest.py).
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytest.importorskip("ray", reason="the 'ray' extra is not installed: pip install 'semgrad-guard[ray]'")

from semgrad_guard import PostgresReviewQueue, ReviewStatus  # noqa: E402
from semgrad_guard.serve import ServeSettings  # noqa: E402
from semgrad_guard.serve.ray_app import ray_application, run_on_ray, shutdown_ray  # noqa: E402
from semgrad_guard.testing import tiny_scorer  # noqa: E402

pytestmark = pytest.mark.slow

TOKEN = "ray-review-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_two_replicas_enqueue_into_one_postgres_queue_and_a_reviewer_clears_it(postgres_server) -> None:
    import psycopg
    import ray

    url = postgres_server.create_database()
    policy = {"rules": [{"name": "everything", "action": "review"}], "review": {"path": url}}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        app = ray_application(
            functools.partial(tiny_scorer, "llama"),
            policy=policy,
            token=TOKEN,
            settings=ServeSettings(max_batch_size=4, max_wait_ms=20),
            replicas=2,
            threads=1,
        )
        base = run_on_ray(app, port=0)

        def ask(k: int) -> httpx.Response:
            return httpx.post(
                base + "/v1/chat/completions",
                json={
                    "model": "tiny-random-llama",
                    "messages": [{"role": "user", "content": f"Question number {k}?"}],
                    "max_tokens": 4,
                },
                headers=AUTH,
                timeout=120,
            )

        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(ask, range(24)))
        assert [r.status_code for r in responses] == [200] * 24, responses[0].text
        ids = [int(r.headers["x-semgrad-review-id"]) for r in responses]
        assert len(set(ids)) == 24  # no id given out twice across replicas
        with psycopg.connect(url) as conn:  # both replicas hold their own connections to the one queue
            (clients,) = conn.execute(
                "SELECT count(DISTINCT pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = 'semgrad-guard review queue'"
            ).fetchone()
        assert clients >= 2
    finally:
        shutdown_ray()

    with PostgresReviewQueue(url) as reviewer:
        pending = reviewer.list("pending")
        assert sorted(it.id for it in pending) == sorted(ids)
        questions = sorted(it.question for it in pending)
        assert questions == sorted(f"Question number {k}?" for k in range(24))
        for it in pending:
            reviewer.approve(it.id, reviewer="ana")
        assert reviewer.counts()[ReviewStatus.PENDING.value] == 0
        assert reviewer.counts()[ReviewStatus.APPROVED.value] == 24
