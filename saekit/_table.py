"""A small table of dict rows: a sequence (iterate, index, slice), text repr for terminals, HTML for Jupyter,
``to_pandas()`` for analysis. ``ObjectTable`` yields objects (stores, jobs) instead of rows."""

from __future__ import annotations

import datetime as dt
import html
from typing import Any, Sequence

BADGE_COLORS = {"queued": "#6b7280", "running": "#2563eb", "completed": "#16a34a", "failed": "#dc2626",
                "cancelled": "#d97706", "orphan": "#7c3aed"}


def format_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return f"{value:%Y-%m-%d %H:%M:%S}"
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


class Table:
    """Rows shown with ``columns``; a ``status`` column is drawn as a coloured badge in HTML.

    Rows are dicts, or tuples with ``names`` (turned into dicts only when asked for: listing 10,000 jobs
    stays cheap). The text and HTML views show the first ``MAX_SHOWN`` rows; ``to_pandas()`` has them all.
    """

    MAX_SHOWN = 50

    def __init__(self, rows: list, columns: Sequence[str], *, names: Sequence[str] | None = None,
                 empty: str = "nothing here yet"):
        self._records = rows
        self._names = tuple(names) if names is not None else None
        self._dicts: list[dict] | None = None if names is not None else rows
        self.columns = tuple(columns)
        self.empty = empty

    @property
    def rows(self) -> list[dict]:
        if self._dicts is None:
            assert self._names is not None  # rows are dicts unless names were given
            self._dicts = [dict(zip(self._names, r)) for r in self._records]
        return self._dicts

    def row(self, index: int) -> dict:
        if self._dicts is not None:
            return self._dicts[index]
        assert self._names is not None  # rows are dicts unless names were given
        return dict(zip(self._names, self._records[index]))

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self):
        return (self.row(i) for i in range(len(self)))

    def __getitem__(self, index: int | slice):
        """``table[0]`` (a row), ``table[:3]`` (a list of them)."""
        if isinstance(index, slice):
            return [self.row(i) for i in range(len(self))[index]]
        if not -len(self) <= index < len(self):
            raise IndexError(f"row {index} out of range for {len(self)} row(s)")
        return self.row(index % len(self))

    def cells(self, row: dict) -> list[str]:
        return [format_cell(row.get(c)) for c in self.columns]

    def to_pandas(self):
        import pandas as pd

        if self._dicts is None:
            frame = pd.DataFrame.from_records(self._records, columns=list(self._names))
            return frame.reindex(columns=list(self.columns))
        return pd.DataFrame([{c: r.get(c) for c in self.columns} for r in self.rows], columns=list(self.columns))

    def _shown(self) -> tuple[list[dict], str]:
        shown = [self.row(i) for i in range(min(len(self), self.MAX_SHOWN))]
        more = len(self) - len(shown)
        return shown, (f"... and {more:,} more (.to_pandas() has them all)" if more > 0 else "")

    def __repr__(self) -> str:
        if not len(self):
            return self.empty
        shown, more = self._shown()
        table = [list(self.columns)] + [self.cells(r) for r in shown]
        widths = [max(len(line[i]) for line in table) for i in range(len(self.columns))]
        text = "\n".join("  ".join(line[i].ljust(widths[i]) for i in range(len(widths))).rstrip() for line in table)
        return text + (f"\n{more}" if more else "")

    def _repr_html_(self) -> str:
        if not len(self):
            return f"<p>{html.escape(self.empty)}</p>"
        shown, more = self._shown()
        head = "".join(f"<th style='text-align:left'>{html.escape(c)}</th>" for c in self.columns)
        body = []
        for row in shown:
            cells = [html.escape(c) for c in self.cells(row)]
            if "status" in self.columns:
                i = self.columns.index("status")
                color = BADGE_COLORS.get(str(row.get("status")), "#6b7280")
                cells[i] = f"<span style='color:white;background:{color};border-radius:4px;padding:1px 6px'>{cells[i]}</span>"
            body.append("<tr>" + "".join(f"<td style='text-align:left'>{c}</td>" for c in cells) + "</tr>")
        tail = f"<p>{html.escape(more)}</p>" if more else ""
        return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{tail}"


class ObjectTable(Table):
    """A table whose items are objects: ``open(row)`` makes the object of a row (a store, ...), so
    ``for store in sk.token_stores()`` iterates stores and ``sk.token_stores()[0]`` is one; ``.rows`` and
    ``to_pandas()`` keep the rows."""

    def __init__(self, rows: list, columns: Sequence[str], *, open, empty: str = "nothing here yet"):
        super().__init__(rows, columns, empty=empty)
        self._open = open

    def __iter__(self):
        return (self._open(self.row(i)) for i in range(len(self)))

    def __getitem__(self, index: int | slice):
        if isinstance(index, slice):
            return [self._open(self.row(i)) for i in range(len(self))[index]]
        if not -len(self) <= index < len(self):
            raise IndexError(f"item {index} out of range for {len(self)} item(s)")
        return self._open(self.row(index % len(self)))
