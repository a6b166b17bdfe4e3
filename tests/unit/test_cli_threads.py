"""The README's speed-section claim, checked: the library respects OMP_NUM_THREADS and
``torch.set_num_threads``, and every command that runs torch takes ``--threads`` (the others never load it).

Threads are read where they matter: a global forward pre-hook records ``torch.get_num_threads()`` at
every module forward, in a fresh interpreter whose OMP_NUM_THREADS the test sets.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from semgrad_guard.cli import build_parser

# Commands that never import torch (checked below): --threads would be an option that does nothing.
TORCH_FREE = {
    "models",
    *(
        f"review {c}"
        for c in ("list", "show", "approve", "reject", "edit", "cannot-tell", "reopen", "export", "ui")
    ),
}


def _leaf_commands() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    def walk(
        parser: argparse.ArgumentParser, path: list[str]
    ) -> Iterator[tuple[str, argparse.ArgumentParser]]:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield " ".join(path), parser
        for action in subs:
            for name, child in action.choices.items():
                yield from walk(child, [*path, name])

    yield from walk(build_parser(), [])


def test_every_command_that_runs_torch_lists_threads_in_its_help() -> None:
    commands = dict(_leaf_commands())
    assert set(commands) >= TORCH_FREE, "a torch-free command was renamed: update TORCH_FREE"
    missing = [
        name for name, p in commands.items() if name not in TORCH_FREE and "--threads" not in p.format_help()
    ]
    assert missing == []
    for name in ("score", "profile", "calibrate", "eval", "serve", "fetch-default-model", "fetch-model"):
        assert name in commands  # the walk reached the model commands


_TORCH_FREE_RUN = r"""
import contextlib, io, sys
from unittest import mock
import uvicorn
from semgrad_guard.cli import main
db = sys.argv[1]
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    codes = [main(["models"]), main(["review", "list", "--db", db]), main(["review", "export", "--db", db])]
    for verb in ("show", "approve", "reject", "cannot-tell", "reopen"):  # no such item: an error, no torch
        codes.append(main(["review", verb, "1", "--db", db]))
    codes.append(main(["review", "edit", "1", "--answer", "x", "--db", db]))
    with mock.patch.object(uvicorn.Server, "run", lambda *a, **k: None):
        codes.append(main(["review", "ui", "--db", db, "--port", "0"]))
print(codes, "torch" in sys.modules)
"""


@pytest.mark.slow  # a fresh interpreter
def test_the_commands_without_threads_never_import_torch(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _TORCH_FREE_RUN, str(tmp_path / "review.db")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    codes, torch_loaded = proc.stdout.strip().rsplit(" ", 1)
    assert codes == "[0, 0, 0, 2, 2, 2, 2, 2, 2, 0]" and torch_loaded == "False"


_THREADS_RUN = r"""
import json, sys
import torch
from semgrad_guard import SemGradScorer
from semgrad_guard.cli import main

seen = []
torch.nn.modules.module.register_module_forward_pre_hook(lambda m, a: seen.append(torch.get_num_threads()))

def during(run):
    seen.clear()
    run()
    assert seen, "no forward pass ran"
    return sorted(set(seen))

model = sys.argv[1]
scorer = SemGradScorer.from_pretrained(model)
out = {"library": during(lambda: scorer.generate("Hi?", max_new_tokens=3))}
argv = ["score", "--model", model, "--prompt", "Hi?", "--answer", "Hello.", "--json"]
out["cli"] = during(lambda: main(argv))
out["cli --threads 2"] = during(lambda: main([*argv, "--threads", "2"]))
torch.set_num_threads(3)
out["library after set_num_threads(3)"] = during(lambda: scorer.score("Hi?", "Hello."))
print("THREADS " + json.dumps(out))
"""


@pytest.mark.slow  # a fresh interpreter, so OMP_NUM_THREADS is read by torch at import
def test_omp_num_threads_holds_in_the_library_and_every_command_and_threads_overrides_it(
    tmp_path: Path,
) -> None:
    from semgrad_guard.testing import tiny_chat_model

    model, tok = tiny_chat_model("qwen2")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    # torch caps OMP_NUM_THREADS at the cores it sees, so 1: below its default on any multi-core machine.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _THREADS_RUN, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("THREADS "))
    assert json.loads(line.removeprefix("THREADS ")) == {
        "library": [1],
        "cli": [1],
        "cli --threads 2": [2],
        "library after set_num_threads(3)": [3],
    }


@pytest.mark.parametrize("command", ["fetch-model"])
def test_threads_is_applied_before_the_command_runs(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import semgrad_guard.cli.model as model_cli
    from semgrad_guard.cli import main

    seen: list[int] = []
    monkeypatch.setattr(model_cli, "_fetch_model", lambda args: seen.append(torch.get_num_threads()) or 0)
    before = torch.get_num_threads()
    try:
        assert main([command, "default", "--threads", "2"]) == 0
        assert seen == [2]
    finally:
        torch.set_num_threads(before)
