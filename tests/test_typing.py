"""The packages type-check under ``mypy --strict`` (configured in pyproject.toml)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_strict_finds_no_error_in_yamux_and_relay() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "yamux", "relay"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout


def test_stream_and_session_use_no_private_member_of_each_other() -> None:
    """They meet through public methods (feed_*, StreamLink), as asyncio's streams do."""
    session = (ROOT / "yamux" / "session.py").read_text()
    stream = (ROOT / "yamux" / "stream.py").read_text()
    assert re.findall(r"\bstream\._\w+", session) == []
    assert re.findall(r"\b(?:session|_link|link)\._\w+", stream) == []
