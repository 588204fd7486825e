"""Human output of the `taskq` command: tables, times, and a progress line."""

from __future__ import annotations

import json
import math
import threading
import time
import unicodedata
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

CELL_WIDTH = 48


def compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def format_time(value: datetime | int | float | None) -> str:
    """A time (or unix seconds) in UTC, so that two machines print the same table."""
    if value is None:
        return "-"
    if not isinstance(value, datetime):
        value = datetime.fromtimestamp(value, tz=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def cell(value: Any, width: int = CELL_WIDTH) -> str:
    """One table cell: text as is, anything else as compact JSON, cut to `width`."""
    if value is None:
        text = "-"
    elif isinstance(value, str):
        text = value
    else:
        text = compact_json(value)
    # A newline or tab inside a cell would break the table's rows and columns.
    text = "".join(" " if unicodedata.category(c)[0] == "C" else c for c in text)
    if len(text) > width:
        text = text[: width - 1] + "…"
    return text


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; the last column is never padded."""
    cells = [list(headers)] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [text.ljust(widths[i]) for i, text in enumerate(row[:-1])]
        lines.append("  ".join([*padded, row[-1]]).rstrip())
    return "\n".join(lines)


def fields(pairs: Sequence[tuple[str, Any]]) -> str:
    """One record, a `name: value` line per field (values not cut)."""
    width = max(len(name) for name, _ in pairs) + 1
    return "\n".join(f"{name + ':':<{width}} {cell(value, 10**9)}" for name, value in pairs)


class Progress:
    """One line on a terminal, rewritten in place; nothing at all elsewhere.

    Scripts and logs read stderr for errors, so the line appears only when
    stderr is a terminal. Redraws are throttled: a fast batch must not spend
    its time writing to the terminal.
    """

    def __init__(self, stream: TextIO, *, interval: float = 0.1) -> None:
        self.stream = stream
        try:
            self.enabled = stream.isatty()
        except (AttributeError, ValueError):
            self.enabled = False
        self.interval = interval
        # Never drawn: the first update draws (monotonic time may be small).
        self._last = -math.inf
        self._shown = False
        # A worker's threads all report to the one line.
        self._lock = threading.Lock()

    def update(self, text: str, *, force: bool = False) -> None:
        if not self.enabled:
            return
        with self._lock:
            now = time.monotonic()
            if not force and now - self._last < self.interval:
                return
            self._last = now
            # \r back to the line's start; \x1b[K clears what a longer line left.
            self.stream.write(f"\r{text}\x1b[K")
            self.stream.flush()
            self._shown = True

    def clear(self) -> None:
        """Take the line away, before other output goes to the terminal."""
        with self._lock:
            if self._shown:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
                self._shown = False
                # Never drawn: the first update draws (monotonic time may be small).
        self._last = -math.inf

    def close(self, text: str | None = None) -> None:
        """End the line (with a last `text`), so that what follows starts clean."""
        if text is not None:
            self.update(text, force=True)
        with self._lock:
            if self._shown:
                self.stream.write("\n")
                self.stream.flush()
                self._shown = False
