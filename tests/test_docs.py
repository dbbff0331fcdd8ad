"""The documents stay true: the checklist names real tests, CI runs the README's command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_test_named_in_the_checklist_table_exists() -> None:
    table = (ROOT / "docs" / "yamux-checklist.md").read_text()
    named = set(re.findall(r"`(test_[a-z0-9_]+)`", table))
    sources = "".join(path.read_text() for path in (ROOT / "tests").glob("test_*.py"))
    defined = set(re.findall(r"def (test_[a-z0-9_]+)\(", sources))
    assert len(named) > 50
    assert sorted(named - defined) == []


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    first_section = readme.split("\n## ", 2)[1]
    commands = re.findall(r"```(?:sh|console)?\n(.*?)\n```", first_section, re.S)
    assert len(commands) >= 2, "the README must start with the two commands"
    test_command = commands[1].strip()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines
