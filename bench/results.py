"""bench/RESULTS.md: the latest run of each benchmark first, earlier runs condensed below.

Each benchmark owns a block between `<!-- latest:KIND -->` markers holding its newest
report, and a history table after `<!-- history:KIND -->`. Recording a run puts its
report in the block and moves the one-line summary of the report it replaces to the
top of the history table, so the file stays short while the history shows progress.
"""

from __future__ import annotations

import re
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
_SUMMARY = re.compile(r"<!-- summary: (.*?) -->")


def _demote(section: str) -> str:
    """Report headings one level down: the block sits under a `##` heading."""
    return re.sub(r"^(#{2,5}) ", r"#\1 ", section.strip(), flags=re.M)


def record(kind: str, section: str, summary: str, path: Path = RESULTS) -> None:
    """Make `section` the latest report of `kind`; `summary` is its history-table row."""
    text = path.read_text()
    start, end = f"<!-- latest:{kind} -->", f"<!-- /latest:{kind} -->"
    i, j = text.index(start) + len(start), text.index(end)
    previous = _SUMMARY.search(text[i:j])
    text = f"{text[:i]}\n<!-- summary: {summary} -->\n{_demote(section)}\n{text[j:]}"
    if previous:
        marker = f"<!-- history:{kind} -->\n"
        k = text.index(marker) + len(marker)
        header_end = text.index("\n", text.index("\n", k) + 1) + 1  # the table's two header lines
        text = text[:header_end] + previous.group(1) + "\n" + text[header_end:]
    path.write_text(text)
