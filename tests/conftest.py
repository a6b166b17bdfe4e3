from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # for reference_semgrad

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def default_scorer():
    """The embedded SmolLM2-135M-Instruct (fetched by `make test`'s set-up), loaded once."""
    from semgrad_guard import SemGradScorer

    return SemGradScorer.from_pretrained("default")


@pytest.fixture
def one_thread():
    """torch on one thread for the test, like the servers the parity tests start (``--threads 1``):
    float32 sums then run in the same order on both sides (2 threads vs 1 differ by ~1e-6 relative)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL cluster for the session (initdb + pg_ctl in a temp dir, a free port).

    Missing server binaries skip the PostgreSQL tests, except where they must run: ``make test``
    (it sets SEMGRAD_GUARD_REQUIRE_POSTGRES) and CI, where that is a failure.
    """
    from semgrad_guard.testing.postgres import TemporaryPostgres, find_pg_bin

    if find_pg_bin() is None:
        message = (
            "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql "
            "(`make sysdeps` does), or set SEMGRAD_GUARD_PG_BIN"
        )
        if os.environ.get("CI") or os.environ.get("SEMGRAD_GUARD_REQUIRE_POSTGRES"):
            pytest.fail(message)
        pytest.skip(message)
    with TemporaryPostgres() as pg:
        yield pg


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh, empty database on the session's PostgreSQL server."""
    return postgres_server.create_database()


@pytest.fixture(params=["sqlite", "postgres"])
def review_db(request, tmp_path) -> str:
    """A queue spec for each backend: a fresh SQLite file path, a fresh PostgreSQL database URL."""
    if request.param == "sqlite":
        return str(tmp_path / "review.db")
    return request.getfixturevalue("postgres_url")
