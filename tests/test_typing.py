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
    sessions = [
        (ROOT / "yamux" / name).read_text() for name in ("session.py", "session_protocol.py")
    ]
    stream = (ROOT / "yamux" / "stream.py").read_text()
    for session in sessions:
        assert re.findall(r"\b(?:stream|protocol|session|backlog)\._\w+", session) == []
    assert re.findall(r"\b(?:session|_link|link)\._\w+", stream) == []
