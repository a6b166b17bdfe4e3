"""The browser tests fail in CI when the browser is missing, and skip (saying what to install) elsewhere."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("browser_conftest", Path(__file__).with_name("conftest.py"))
assert _spec and _spec.loader
conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(conftest)


def test_a_missing_browser_fails_in_ci_and_skips_elsewhere(tmp_path, monkeypatch):
    monkeypatch.setattr(conftest, "CHROMIUM", tmp_path / "chromium")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="install Debian's chromium"):
        conftest._need_browser()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="make sysdeps"):
        conftest._need_browser()
