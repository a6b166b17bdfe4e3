"""A throwaway PostgreSQL server for tests and benchmarks: ``initdb`` + ``pg_ctl`` in a temporary directory.

Uses the server binaries of the machine (Debian's ``postgresql`` package: ``/usr/lib/postgresql/*/bin``,
or ``$SEMGRAD_GUARD_PG_BIN``, or ``PATH``). ``initdb`` refuses to run as root, so as root the
cluster is created and run as the ``postgres`` system user (``runuser``) in a directory it owns.
Trust authentication, listening on 127.0.0.1 only, on a free port.

Example:
    >>> from semgrad_guard.testing.postgres import TemporaryPostgres, find_pg_bin
    >>> if find_pg_bin():  # doctest: +SKIP
    ...     with TemporaryPostgres() as pg:
    ...         url = pg.create_database("queue")
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

_SERVER_USER = "postgres"


def find_pg_bin() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl`` (newest Debian version first), or None."""
    env = os.environ.get("SEMGRAD_GUARD_PG_BIN")
    candidates = [env] if env else []
    candidates += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True
    )
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for c in candidates:
        if c and (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TemporaryPostgres:
    """A PostgreSQL cluster that lives as long as the ``with`` block (or until :meth:`stop`).

    Args:
        fsync: Keep the server's fsync on (benchmarks); off makes tests faster and does not change
            what a client sees unless the server machine itself crashes.
    """

    user = "semgrad"

    def __init__(self, *, fsync: bool = False, bin_dir: Path | None = None) -> None:
        found = bin_dir or find_pg_bin()
        if found is None:
            raise RuntimeError(
                "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql, "
                "or set SEMGRAD_GUARD_PG_BIN to their directory"
            )
        self.bin = found
        self.fsync = fsync
        self.port = 0
        self.dir = Path(tempfile.mkdtemp(prefix="semgrad-pg-"))
        self._as_root = os.geteuid() == 0
        self._started = False

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [*args]
        if self._as_root:
            cmd = ["runuser", "-u", _SERVER_USER, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)

    def start(self) -> TemporaryPostgres:
        if self._as_root:
            shutil.chown(self.dir, _SERVER_USER)
        data = self.dir / "data"
        done = self._run(
            str(self.bin / "initdb"),
            "-D",
            str(data),
            "-A",
            "trust",
            "-U",
            self.user,
            "-E",
            "UTF8",
            "--no-sync",
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr.strip() or done.stdout.strip()}")
        for _ in range(5):  # a port found free can be taken before the server binds it
            self.port = _free_port()
            opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=200"
            if not self.fsync:
                opts += " -c fsync=off -c synchronous_commit=on -c full_page_writes=off"
            done = self._run(
                str(self.bin / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(self.dir / "server.log"),
                "-w",
                "-o",
                opts,
                "start",
            )
            if done.returncode == 0:
                self._started = True
                return self
        log = (
            (self.dir / "server.log").read_text(errors="replace")[-2000:]
            if (self.dir / "server.log").exists()
            else ""
        )
        raise RuntimeError(f"pg_ctl start failed: {done.stderr.strip()}\n{log}")

    def url(self, dbname: str = "postgres") -> str:
        """A libpq URL for ``dbname`` on this server (no password: trust authentication)."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str | None = None) -> str:
        """Create a fresh database; returns its URL."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self._started:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop")
            self._started = False
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> TemporaryPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
