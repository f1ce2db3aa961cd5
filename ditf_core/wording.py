"""Small helpers for messages people read: counts with the right plural, short lists of names."""

from __future__ import annotations

from collections.abc import Sequence


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``plural(1, "file")`` -> "1 file"; ``plural(2, "file")`` -> "2 files"; ``many`` for irregular plurals."""
    return f"{count} {noun if count == 1 else many or noun + 's'}"


def short_list(names: Sequence[str], shown: int = 4) -> str:
    """"a, b, c, d and 3 more": the first ``shown`` names and how many were left out."""
    names = [str(name) for name in names]
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (libraries add pages of detail), or its type when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
