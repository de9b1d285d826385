"""Measured figures into the docs: a block between two marks, replaced on each run."""

from __future__ import annotations

from pathlib import Path


def write_block(page: Path, name: str, heading: str, intro: str, lines: list[str]) -> None:
    """Put ``intro`` and ``lines`` (as a list) between ``<!-- name:start -->`` and
    ``<!-- name:end -->`` on ``page``; the first time, under a new ``heading`` at the end."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = page.read_text() if page.exists() else ""
    block = "\n".join([start, "", intro, "", *[f"- {line}" for line in lines], "", end])
    if start in text:
        before, rest = text.split(start, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n## {heading}\n\n" + block + "\n"
    page.write_text(text)
