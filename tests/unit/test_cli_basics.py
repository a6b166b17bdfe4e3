"""The CLI's shared options: ``--version`` and ``--threads`` on every command that runs the model."""

from __future__ import annotations

from importlib.metadata import version

import pytest
import torch

import semgrad_guard
from semgrad_guard.cli import build_parser, main

MODEL_COMMANDS = ("score", "profile", "fetch-default-model", "calibrate", "eval", "serve")


def test_version_comes_from_the_installed_metadata(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"semgrad-guard {version('semgrad-guard')}"
    assert semgrad_guard.__version__ == version("semgrad-guard")


@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_every_model_command_takes_threads(command):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    options = {o for a in sub.choices[command]._actions for o in a.option_strings}  # type: ignore[attr-defined]
    assert "--threads" in options


@pytest.mark.parametrize("bad", ["0", "-2", "two"])
def test_threads_below_one_is_a_usage_error_before_any_model_loads(bad, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["score", "--model", "/nonexistent", "--prompt", "q", "--answer", "a", "--threads", bad])
    assert exit_.value.code == 2
    assert "--threads" in capsys.readouterr().err


def test_threads_sets_torch_threads_and_its_absence_leaves_them_alone(tmp_path, monkeypatch):
    before = torch.get_num_threads()
    seen: list[int] = []

    def fake_fetch(args):
        seen.append(torch.get_num_threads())
        return 0

    import semgrad_guard.cli.model as model_cli

    monkeypatch.setattr(model_cli, "_fetch", fake_fetch)
    try:
        parser_args = ["fetch-default-model"]
        assert main(parser_args) == 0
        assert seen[-1] == before  # no --threads: the user's (or OMP_NUM_THREADS's) setting holds
        assert main([*parser_args, "--threads", "2"]) == 0
        assert seen[-1] == 2
    finally:
        torch.set_num_threads(before)


def test_loading_and_scoring_never_change_the_users_thread_setting(tmp_path):
    from semgrad_guard import SemGradScorer
    from semgrad_guard.testing import tiny_chat_model

    model, tok = tiny_chat_model("qwen2")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        scorer = SemGradScorer.from_pretrained(str(tmp_path))
        scorer.generate("Hi?", max_new_tokens=3)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_no_foreign_progress_bar_in_a_command(tmp_path):
    import os
    import subprocess
    import sys

    from semgrad_guard.testing import tiny_chat_model

    model, tok = tiny_chat_model("qwen2")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    argv = [sys.executable, "-m", "semgrad_guard", "score", "--model", str(tmp_path), "--prompt", "Hi"]
    proc = subprocess.run(
        [*argv, "--answer", "Hello", "--json", "--threads", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Loading weights" not in proc.stderr and "it/s" not in proc.stderr


def test_foreign_progress_bars_are_silenced_when_the_libraries_are_already_imported(monkeypatch):
    import huggingface_hub.utils as hub_utils
    import transformers.utils.logging as hf_logging

    from semgrad_guard.cli import _quiet_foreign_progress

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    was_hub, was_hf = hub_utils.are_progress_bars_disabled(), hf_logging.is_progress_bar_enabled()
    try:
        _quiet_foreign_progress()
        assert hub_utils.are_progress_bars_disabled() and not hf_logging.is_progress_bar_enabled()
    finally:
        if not was_hub:
            hub_utils.enable_progress_bars()
        if was_hf:
            hf_logging.enable_progress_bar()
