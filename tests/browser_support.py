"""A real headless browser (Debian's chromium) for the status page (this module holds no tests).

``dump_dom`` loads a page, lets its scripts run (fetches and timers included, on
chromium's virtual clock) and returns the document as it then is; ``tables`` reads
its ``<section data-table=...>`` tables back; ``screenshot`` takes a PNG of it.
"""

from __future__ import annotations

import os
import struct
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

from conftest import require_program

WINDOW = (1280, 900)
SCREENSHOT = (1280, 480)
"""A screenshot's size: the tables of a few services fit, without a page of blank below."""


def _chromium(
    *args: str, window: tuple[int, int] = WINDOW, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    browser = require_program("chromium")
    with tempfile.TemporaryDirectory(prefix="relay-chromium-") as profile:
        return subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--window-size={window[0]},{window[1]}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
            env={**os.environ, "HOME": profile},
        )


def dump_dom(url: str, virtual_ms: int = 5000) -> str:
    """The page's DOM after ``virtual_ms`` of chromium's virtual time (the page's own
    refreshes run during it)."""
    return _chromium(f"--virtual-time-budget={virtual_ms}", "--dump-dom", url).stdout


def screenshot(url: str, path: Path, virtual_ms: int = 3000) -> tuple[int, int]:
    """A PNG of the page at ``path``; returns its (width, height) from the PNG header."""
    _chromium(f"--virtual-time-budget={virtual_ms}", f"--screenshot={path}", url, window=SCREENSHOT)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


class _Tables(HTMLParser):
    """Every ``<section data-table=NAME>``'s header and rows, as text."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.texts: dict[str, str] = {}
        self._sections: list[str] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._id: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self._id.append(attributes.get("id"))
        if tag == "section" and attributes.get("data-table"):
            name = str(attributes["data-table"])
            self._sections.append(name)
            self.tables.setdefault(name, [])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if self._id:
            self._id.pop()
        if tag == "section" and self._sections:
            self._sections.pop()
        elif tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._sections:
            self.tables[self._sections[-1]].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        current = next((i for i in reversed(self._id) if i), None)
        if current is not None:
            self.texts[current] = self.texts.get(current, "") + data + " "


def tables(dom: str) -> dict[str, list[dict[str, str]]]:
    """Each table of the page as rows of {heading: cell}."""
    parser = _Tables()
    parser.feed(dom)
    return {
        name: [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]
        for name, rows in parser.tables.items()
        if rows
    }


def texts(dom: str) -> dict[str, str]:
    """The text inside each element with an ``id`` (its descendants' included)."""
    parser = _Tables()
    parser.feed(dom)
    return {key: " ".join(value.split()) for key, value in parser.texts.items()}
