"""`semgrad-guard serve --port 0` on the embedded model: it says the port it bound, and serves there."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import httpx
import pytest

pytestmark = pytest.mark.integration


def test_port_zero_prints_the_real_address_and_serves_on_it():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("SEMGRAD_GUARD_TOKEN", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "semgrad_guard", "serve", "--port", "0", "--threads", "1"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 300
        line = ""
        while "serving" not in line:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "serve exited before saying where it serves"
            assert time.monotonic() < deadline
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert match and int(match.group(1)) > 0, line
        url = match.group(0)
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert httpx.get(url + "/healthz").json() == {"status": "ok"}
    finally:
        proc.terminate()
        proc.wait(timeout=60)
