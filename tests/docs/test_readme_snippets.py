"""Every ```python and ```bash block of README.md and integrations/*/README.md runs, as written.

How the blocks run (so a README author knows what a block may assume):

- The ``python`` blocks of one README run in order, in one interpreter and one namespace: a later
  block may use what an earlier one of the same file defined. Each block, not-run ones too, is
  plain Python a reader can paste into a script: no top-level ``await`` (use ``asyncio.run``).
- Each ``bash`` block runs on its own (``bash -euo pipefail``); ``semgrad-guard`` is the CLI of the
  interpreter running the tests (an executable on ``PATH``: a block may start it in the background
  and kill ``$!``).
- Both run in a fresh temporary directory that holds ``cookbook`` and ``benchmarks`` (links to the
  repository's), with the review queue and the user data directory inside it: a snippet never
  writes into the checkout or the user's home. Torch runs on one thread (``OMP_NUM_THREADS=1``).
- A block whose line just before the opening fence is ``<!-- not-run: <reason> -->`` is skipped
  (installs, servers, the test suite itself, or data the reader brings). The reason is required.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
READMES = [REPO / "README.md", *sorted(REPO.glob("integrations/*/README.md"))]
LANGUAGES = ("python", "bash")
NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(?P<reason>\S.*?)\s*-->$")
FENCE = re.compile(r"^```(?P<lang>[A-Za-z0-9_+-]*)\s*$")
TIMEOUT_S = 600  # a whole README's python blocks, each loading at most the embedded model


@dataclass(frozen=True)
class Snippet:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip_reason: str | None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def extract(path: Path) -> list[Snippet]:
    """The fenced ``python`` / ``bash`` blocks of a Markdown file, with their not-run marker if any."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Snippet] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        start, lang = i, m["lang"]
        i += 1
        while i < len(lines) and lines[i].rstrip() != "```":
            i += 1
        if lang in LANGUAGES:
            prev = lines[start - 1].strip() if start > 0 else ""
            marker = NOT_RUN.match(prev)
            if prev.startswith("<!-- not-run") and marker is None:
                raise AssertionError(f"{path}:{start}: write the marker as <!-- not-run: <reason> -->")
            code = "\n".join(lines[start + 1 : i]) + "\n"
            out.append(Snippet(path, start + 1, lang, code, marker["reason"] if marker else None))
        i += 1
    return out


def _workdir(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    work = tmp_path / "work"
    work.mkdir()
    for name in ("cookbook", "benchmarks"):
        (work / name).symlink_to(REPO / name, target_is_directory=True)
    paths = [str(REPO), *(str(p.parent) for p in READMES[1:])]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "SEMGRAD_GUARD_REVIEW_DB": str(tmp_path / "review.db"),
        "PYTHONPATH": os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")]),
        "PYTHONUNBUFFERED": "1",
    }
    return work, env


# Runs the blocks of one file in one namespace; compiled with top-level await allowed.
_DRIVER = r"""
import json, sys, traceback
blocks = json.load(sys.stdin)
ns = {"__name__": "__main__"}
for where, code in blocks:
    print(f"--- {where}", flush=True)
    try:
        exec(compile(code, where, "exec"), ns)
    except BaseException:
        traceback.print_exc()
        print(f"FAILED {where}", flush=True)
        sys.exit(1)
"""


def _ids(snippets: list[Snippet]) -> list[str]:
    return [s.where for s in snippets]


ALL = [s for p in READMES for s in extract(p)]
BASH = [s for s in ALL if s.lang == "bash"]
PYTHON_FILES = sorted({s.path for s in ALL if s.lang == "python"})


def test_the_extractor_reads_fences_and_markers(tmp_path: Path) -> None:
    md = tmp_path / "README.md"
    md.write_text(
        "text\n```python\nx = 1\n```\n<!-- not-run: needs a GPU -->\n```bash\nnvidia-smi\n```\n"
        "```yaml\na: 1\n```\n```\nplain\n```\n"
    )
    got = extract(md)
    assert [(s.lang, s.code, s.skip_reason, s.line) for s in got] == [
        ("python", "x = 1\n", None, 2),
        ("bash", "nvidia-smi\n", "needs a GPU", 6),
    ]
    md.write_text("<!-- not-run -->\n```bash\nls\n```\n")
    with pytest.raises(AssertionError, match="not-run: <reason>"):
        extract(md)


def test_every_python_block_is_plain_python() -> None:
    # Top-level await runs in a notebook, not in the script a newcomer pastes a block into.
    for snippet in (s for s in ALL if s.lang == "python"):
        try:
            compile(snippet.code, snippet.where, "exec")
        except SyntaxError as e:
            raise AssertionError(f"{snippet.where}: {e.msg} (line {e.lineno} of the block)") from None


def test_every_readme_has_runnable_blocks() -> None:
    # A README whose every block is skipped tests nothing: keep at least one running per file.
    for path in READMES:
        assert any(s.skip_reason is None for s in extract(path)), path


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("path", PYTHON_FILES, ids=[str(p.relative_to(REPO)) for p in PYTHON_FILES])
def test_python_blocks_run(path: Path, tmp_path: Path) -> None:
    blocks = [s for s in extract(path) if s.lang == "python"]
    to_run = [(s.where, s.code) for s in blocks if s.skip_reason is None]
    if not to_run:
        pytest.skip(f"every python block of {path.name} is marked not-run")
    work, env = _workdir(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER],
        input=json.dumps(to_run),
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("snippet", BASH, ids=_ids(BASH))
def test_bash_block_runs(snippet: Snippet, tmp_path: Path) -> None:
    if snippet.skip_reason is not None:
        pytest.skip(f"not-run: {snippet.skip_reason}")
    work, env = _workdir(tmp_path)
    # An executable, not a shell function: `semgrad-guard serve &` then gives $! the server's own pid
    # (a function runs in a subshell, and killing that leaves the server running).
    bindir = tmp_path / "bin"
    bindir.mkdir()
    cli = bindir / "semgrad-guard"
    cli.write_text(f'#!/bin/sh\nexec {sys.executable!s} -m semgrad_guard "$@"\n')
    cli.chmod(0o755)
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", snippet.code],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert proc.returncode == 0, f"{snippet.where}\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
