"""A small table of dict rows: text repr for terminals, HTML for Jupyter, ``to_pandas()`` for analysis."""

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
    """Rows (dicts) shown with ``columns``; a ``status`` column is drawn as a coloured badge in HTML."""

    def __init__(self, rows: list[dict], columns: Sequence[str], *, empty: str = "nothing here yet"):
        self.rows = rows
        self.columns = tuple(columns)
        self.empty = empty

    def __len__(self) -> int:
        return len(self.rows)

    def cells(self, row: dict) -> list[str]:
        return [format_cell(row.get(c)) for c in self.columns]

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame([{c: r.get(c) for c in self.columns} for r in self.rows], columns=list(self.columns))

    def __repr__(self) -> str:
        if not self.rows:
            return self.empty
        table = [list(self.columns)] + [self.cells(r) for r in self.rows]
        widths = [max(len(line[i]) for line in table) for i in range(len(self.columns))]
        return "\n".join("  ".join(line[i].ljust(widths[i]) for i in range(len(widths))).rstrip() for line in table)

    def _repr_html_(self) -> str:
        if not self.rows:
            return f"<p>{html.escape(self.empty)}</p>"
        head = "".join(f"<th style='text-align:left'>{html.escape(c)}</th>" for c in self.columns)
        body = []
        for row in self.rows:
            cells = [html.escape(c) for c in self.cells(row)]
            if "status" in self.columns:
                i = self.columns.index("status")
                color = BADGE_COLORS.get(str(row.get("status")), "#6b7280")
                cells[i] = f"<span style='color:white;background:{color};border-radius:4px;padding:1px 6px'>{cells[i]}</span>"
            body.append("<tr>" + "".join(f"<td style='text-align:left'>{c}</td>" for c in cells) + "</tr>")
        return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
