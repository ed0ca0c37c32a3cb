"""Feature-label rows: each function is one registry transaction (and the checks every stored label passes). A change of label is a new row; rows are
ordered by ``seq``, the order of arrival (never by the time a row claims: a clock ahead, or a row dated 2099 in
an imported file, must not hide later changes). The current label of a feature for a source is the row that
arrived last, an empty label meaning cleared."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

from saekit.errors import ConfigError
from saekit.registry._db import transaction
from saekit.workspace import Workspace

COLUMNS = ("analysis", "feature", "label", "source", "author", "note", "provenance", "scores", "created_at")
JOURNAL = "labels.jsonl"  # in each analysis folder: every row, appended before it is inserted here

MAX_LABEL = 500
MAX_NOTE = 10_000
CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")  # newlines, carriage returns, tabs and the other controls


def check_label(label) -> str:
    """``label`` stripped, when it is one line of at most 500 characters without control characters."""
    if not isinstance(label, str) or not label.strip():
        raise ConfigError(f"label={label!r} must be some text, e.g. 'Python keywords' (feats.clear_label(i) removes one)")
    label = label.strip()
    if CONTROL.search(label) or len(label) > MAX_LABEL:
        shown = label[:60] + ("..." if len(label) > 60 else "")
        raise ConfigError(f"label {shown!r} ({len(label):,} characters) is not one line of at most {MAX_LABEL} "
                          "characters without control characters (newlines, tabs); put the rest in note=")
    return label


def check_note(note) -> str | None:
    if note is None:
        return None
    if not isinstance(note, str) or len(note) > MAX_NOTE or "\x00" in note:
        raise ConfigError(f"note must be text of at most {MAX_NOTE:,} characters; got {type(note).__name__} "
                          f"of {len(note) if isinstance(note, str) else '?'} characters")
    return note


def json_object(value, what: str) -> str | None:
    """A provenance or scores value as stored: None, or the text of a JSON object."""
    if value in (None, ""):
        return None
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    try:
        parsed = json.loads(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise ValueError(f"{what} {str(value)[:80]!r} is not a JSON object")
    return json.dumps(parsed, sort_keys=True)


def read_journal(folder: Path) -> list[dict]:
    """The rows of an analysis' label journal (to rebuild the registry); a cut last line is skipped."""
    path = folder / JOURNAL
    rows: list[dict] = []
    if not path.exists():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            row["created_at"] = dt.datetime.fromisoformat(row["created_at"])
            rows.append({c: row.get(c) for c in COLUMNS})
        except (ValueError, KeyError, TypeError):
            continue
    return rows


def add_labels(ws: Workspace, rows: list[dict]) -> int:
    """Insert ``rows`` (dicts of ``COLUMNS``) in one transaction, skipping any already there (the same feature,
    source, label, author and time): an import run twice adds nothing. Returns the number inserted."""
    if not rows:
        return 0
    with transaction(ws, write=True) as tx:
        return insert_labels(tx, rows)


def insert_labels(tx, rows: list[dict]) -> int:
    """``add_labels`` inside an open write transaction (an import inserts its jobs and their labels in one)."""
    if not rows:
        return 0
    columns = {c: [r.get(c) for r in rows] for c in COLUMNS}
    cur = tx.execute(
        "INSERT INTO feature_labels (" + ", ".join(COLUMNS) + ") "
        "SELECT * EXCLUDE (ord) FROM (SELECT unnest(?::INTEGER[]) AS ord, unnest(?::VARCHAR[]) AS analysis, unnest(?::INTEGER[]) AS feature, "
        "unnest(?::VARCHAR[]) AS label, unnest(?::VARCHAR[]) AS source, unnest(?::VARCHAR[]) AS author, "
        "unnest(?::VARCHAR[]) AS note, unnest(?::VARCHAR[]) AS provenance, unnest(?::VARCHAR[]) AS scores, "
        "unnest(?::TIMESTAMP[]) AS created_at) AS incoming "
        "WHERE NOT EXISTS (SELECT 1 FROM feature_labels f WHERE f.analysis = incoming.analysis "
        "AND f.feature = incoming.feature AND f.source = incoming.source AND f.label = incoming.label "
        "AND f.author = incoming.author AND f.created_at = incoming.created_at) ORDER BY ord RETURNING seq",
        [list(range(len(rows)))] + [columns[c] for c in COLUMNS])
    return len(cur.fetchall())


def current_labels(ws: Workspace, analysis: str) -> list[dict]:
    """The latest row per (feature, source) of an analysis, cleared ones left out."""
    with transaction(ws) as tx:
        return tx.rows(
            "SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY feature, source ORDER BY seq DESC) AS n "
            "FROM feature_labels WHERE analysis = ?) WHERE n = 1 AND label <> '' ORDER BY feature, source",
            [analysis])


def label_rows(ws: Workspace, analysis: str, feature: int | None = None) -> list[dict]:
    """Every row (the history) of an analysis, or of one feature, oldest first."""
    with transaction(ws) as tx:
        if feature is None:
            return tx.rows("SELECT * FROM feature_labels WHERE analysis = ? ORDER BY seq", [analysis])
        return tx.rows("SELECT * FROM feature_labels WHERE analysis = ? AND feature = ? ORDER BY seq",
                       [analysis, feature])


def delete_labels(ws: Workspace, analysis: str) -> int:
    with transaction(ws, write=True) as tx:
        return len(tx.execute("DELETE FROM feature_labels WHERE analysis = ? RETURNING seq", [analysis]).fetchall())
