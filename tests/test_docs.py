"""The documents stay true: links, commands and option tables match the code.

Also what the user docs must not contain: issue numbers and commit hashes.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_program

from relay_support import HOST, echo_roundtrip, free_port, relay_command

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


# ------------------------------------------------------------------ the user docs

USER_DOCS = sorted(
    [
        ROOT / "README.md",
        *(ROOT / "docs").glob("*.md"),
        ROOT / "examples" / "README.md",
        ROOT / "bench" / "README.md",
        ROOT / "bench" / "RESULTS.md",
        ROOT / "tests" / "README.md",
        ROOT / "testkit" / "README.md",
        ROOT / "interop" / "SCENARIOS.md",
    ]
)
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
ISSUE = re.compile(r"(?<![\w&/])#\d+\b(?!-)")
# 7 to 40 hex digits with a letter and a digit in them; not the upstream commit in a Debian
# package version (0.0+git20190923.df201c7)
COMMIT = re.compile(r"(?<!git\d{8}\.)\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b")


def prose(path: Path) -> str:
    """The text of a document without its link targets (anchors are not issues)."""
    return LINK.sub("[]", path.read_text())


def test_the_readme_is_for_a_newcomer_and_short() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move details to docs/"


def test_the_detectors_find_issue_numbers_and_commit_hashes() -> None:
    sample = "fixed in #14 (c66ee23, merged as 4fd80da); see [x](a.md#3-tls)"
    assert ISSUE.findall(LINK.sub("[]", sample)) == ["#14"]
    assert COMMIT.findall(sample) == ["c66ee23", "4fd80da"]
    assert COMMIT.findall("a 64-hex nonce " + "ab12" * 16 + ", 16777216 bytes, deadbeef") == []


def test_no_user_doc_names_an_issue_or_a_commit() -> None:
    found = {
        str(path.relative_to(ROOT)): ISSUE.findall(prose(path)) + COMMIT.findall(prose(path))
        for path in USER_DOCS
    }
    assert {doc: hits for doc, hits in found.items() if hits} == {}


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a markdown file's headings."""
    headings = re.findall(r"^#+ (.+)$", FENCE.sub("", path.read_text()), re.M)
    return {re.sub(r"[^a-z0-9 _-]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_every_relative_link_resolves() -> None:
    broken = []
    for doc in USER_DOCS:
        for target in LINK.findall(FENCE.sub("", doc.read_text())):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            path = (doc.parent / file).resolve() if file else doc
            where = f"{doc.relative_to(ROOT)}: {target}"
            if not path.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                broken.append(f"{where} (no such heading)")
    assert broken == []


def command_line() -> tuple[set[str], set[str]]:
    """The long options (option column) and environment variables of ``relay --help``.

    The seed form's help lists the options of both modes.
    """
    done = subprocess.run(
        [*relay_command(), "--help"], capture_output=True, text=True, timeout=30, check=True
    )
    flags = set()
    for line in done.stdout.splitlines():
        column = re.match(r"^  (-\S.*?)(?:  |$)", line)
        if column:
            flags.update(re.findall(r"--[a-zA-Z][a-zA-Z0-9-]*", column.group(1)))
    return flags - {"--help", "--version"}, set(re.findall(r"RELAY_[A-Z0-9_]+", done.stdout))


def test_the_operations_option_table_is_the_command_line() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    table = text[text.index("## Options") : text.index("## Environment and config file")]
    rows = [line.split(" | ")[:2] for line in table.splitlines() if line.startswith("| `")]
    documented = set(re.findall(r"--[a-zA-Z][a-zA-Z0-9-]*", " ".join(row[0] for row in rows)))
    documented_env = set(re.findall(r"RELAY_[A-Z0-9_]+", " ".join(row[1] for row in rows)))
    flags, env = command_line()
    assert len(flags) > 40
    assert sorted(flags - documented) == [], "options missing from docs/operations.md"
    assert sorted(documented - flags) == [], "docs/operations.md names options that do not exist"
    assert sorted(env ^ documented_env) == [], "environment variables differ"


@pytest.mark.e2e
def test_the_tls_recipe_in_operations_runs_as_written(procs, echo_port, tmp_path) -> None:
    """docs/operations.md's TLS commands, with only host, ports and --bind changed."""
    require_program("openssl")
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text[text.index("## TLS") :]
    block = re.search(r"```console\n(.*?)```", section, re.S).group(1)
    steps = [line[2:] for line in block.splitlines() if line.startswith("$ ")]
    assert [step.split()[:2] for step in steps] == [
        ["openssl", "req"],
        ["relay", "gen-secret"],
        ["relay", "server"],
        ["relay", "forward"],
    ]
    ports = {"7000": str(free_port()), "6379": str(echo_port)}

    def argv(step: str) -> list[str]:
        step = step.replace("relay.example.com", "localhost")
        return shlex.split(re.sub(r"\b(7000|6379)\b", lambda m: ports[m.group(1)], step))

    openssl, gen_secret, server, forward = (argv(step) for step in steps)
    subprocess.run(openssl, cwd=tmp_path, check=True, capture_output=True, timeout=60)
    subprocess.run(
        [*relay_command(), *gen_secret[1:]], cwd=tmp_path, check=True, capture_output=True
    )
    server[1:2] = ["server", f"--bind={HOST}"]
    relay = procs.start([*relay_command(), *server[1:]], "relay", cwd=tmp_path)
    relay.wait_line(r"Serving relay requests")
    forwarder = procs.start([*relay_command(), *forward[1:]], "forwarder", cwd=tmp_path)
    _, match = forwarder.wait_line(r"^localhost:(\d+)$", stream="stdout")
    assert echo_roundtrip(int(match.group(1))) == b"ping through the relay\n"
    assert "authenticated client" in relay.stderr_text


@pytest.mark.e2e
def test_the_readme_api_example_serves_behind_a_relay(procs, tmp_path) -> None:
    """The README's Python example, with only the relay's host and port changed."""
    readme = (ROOT / "README.md").read_text()
    snippet = re.search(r"## Python API\n.*?```python\n(.*?)```", readme, re.S).group(1)
    assert '"relay.example.com", 7000' in snippet
    _, relay_port = procs.relay()
    script = tmp_path / "readme_example.py"
    script.write_text(snippet.replace('"relay.example.com", 7000', f'"{HOST}", {relay_port}'))
    proc = procs.start([sys.executable, str(script)], "readme-example")
    _, match = proc.wait_line(rf"^{re.escape(HOST)}:(\d+)$", stream="stdout")
    assert echo_roundtrip(int(match.group(1))) == b"ping through the relay\n"


def test_tests_readme_names_every_test_file() -> None:
    named = set(re.findall(r"`(test_[a-z0-9_]+\.py)`", (ROOT / "tests" / "README.md").read_text()))
    files = {path.name for path in (ROOT / "tests").glob("test_*.py")}
    assert sorted(files - named) == [], "tests/README.md does not say where these belong"
    assert sorted(named - files) == [], "tests/README.md names files that do not exist"
