"""Feature labels: automatic ones from the analysis itself, user and LLM labels in the registry with history.

- ``auto``: made from each latent's top tokens and logit lens when read (``"def / class / return → ( / :"``),
  never stored, so every analysis has them at no cost;
- ``user``: ``feats.label(i, text, note=)``, by the OS user; ``llm``: written by ``sk.explain`` with its
  provenance (explainer, scorer) and scores. A user label shows first, then an LLM one, then the automatic one.

Every change is a row (label, source, author, time); nothing is overwritten (``feats[i].label_history()``).
Rows are also appended to ``analyses/<id>/labels.jsonl`` before they reach the registry, so a registry rebuilt
from the workspace's logs gets them back, and an export/import moves them between workspaces exactly.
"""

from __future__ import annotations

import csv
import datetime as dt
import getpass
import io
import json
import logging
import os
import re
from pathlib import Path

import numpy as np

from saekit import registry
from saekit._faults import fault_point
from saekit.errors import ConfigError, DataError
from saekit.registry.labels import (  # noqa: F401 (check_label and json_object are this module's API too)
    CONTROL,
    COLUMNS,
    JOURNAL,
    MAX_LABEL,
    MAX_NOTE,
    add_labels,
    check_label,
    check_note,
    current_labels,
    json_object,
    label_rows,
)

log = logging.getLogger("saekit.features")

SOURCES = ("user", "llm")
SHOWN_FIRST = ("user", "llm")  # then auto


def author() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name (a container without /etc/passwd entry)
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


def auto_label(top_tokens: list[str], logit_top: list[str] | None) -> str:
    """A cheap label from a latent's top tokens and (when there is a logit lens) the tokens it promotes."""
    def distinct(tokens, n):
        out = []
        for t in tokens or []:
            t = t.strip() or repr(t)
            if t not in out:
                out.append(t)
            if len(out) == n:
                break
        return out

    label = " / ".join(distinct(top_tokens, 3))
    promoted = distinct(logit_top, 2)
    if promoted:
        label = f"{label} → {' / '.join(promoted)}" if label else f"→ {' / '.join(promoted)}"
    return label


def make_row(analysis: str, feature: int, label: str, source: str, *, note=None, provenance=None, scores=None,
         by: str | None = None, at: dt.datetime | None = None) -> dict:
    return {"analysis": analysis, "feature": int(feature), "label": label, "source": source, "author": by or author(),
            "note": check_note(note), "provenance": None if provenance is None else json.dumps(provenance, sort_keys=True),
            "scores": None if scores is None else json.dumps(scores, sort_keys=True),
            "created_at": at or registry.utcnow()}


def write(ws, folder: Path, rows: list[dict]) -> int:
    """Journal ``rows`` in the analysis folder, then insert them in one registry transaction."""
    if not rows:
        return 0
    with open(folder / JOURNAL, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(_jsonable(r), sort_keys=True) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())
    fault_point("labels_journalled")  # the reliability tests kill here: journalled, not yet in the registry
    return add_labels(ws, rows)


def _jsonable(row: dict) -> dict:
    return {**row, "created_at": row["created_at"].isoformat()}


def one_line(text: str) -> str:
    """``text`` made a valid label: control characters as spaces, cut to 500 characters."""
    return " ".join(CONTROL.sub(" ", text).split())[:MAX_LABEL] or "?"


def check_feature(feature, n: int) -> int:
    """``feature`` as an int when it is a latent id (an int or a NumPy integer) in ``0..n-1``."""
    if isinstance(feature, (bool, np.bool_)) or not isinstance(feature, (int, np.integer)):
        raise ConfigError(f"feature {feature!r} ({type(feature).__name__}) is not a latent id: give an int "
                          f"in 0..{n - 1}")
    if not 0 <= feature < n:
        raise ConfigError(f"feature {int(feature)} is not a latent of this analysis (0..{n - 1})")
    return int(feature)


def provenance_of(row: dict) -> dict:
    """A label row's provenance as a dict ({} when it has none or it cannot be read)."""
    try:
        value = json.loads(row.get("provenance") or "{}")
    except (ValueError, TypeError):
        return {}
    return value if isinstance(value, dict) else {}


def shown(ws, analysis: str) -> dict[int, tuple[str, str]]:
    """{feature: (label, source)} of the labels shown first (user, then llm), from the registry."""
    best: dict[int, tuple[str, str]] = {}
    for row in current_labels(ws, analysis):
        old = best.get(row["feature"])
        if old is None or SHOWN_FIRST.index(row["source"]) < SHOWN_FIRST.index(old[1]):
            best[row["feature"]] = (row["label"], row["source"])
    return best


def history(ws, analysis: str, feature: int | None = None):
    import pandas as pd

    rows = label_rows(ws, analysis, feature)
    return pd.DataFrame(rows, columns=["seq", *COLUMNS]).drop(columns=["seq"])


# -- export and import ---------------------------------------------------------------------------------------
EXPORT_COLUMNS = ("feature", "label", "source", "author", "note", "provenance", "scores", "created_at")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")  # what a spreadsheet reads as a formula (and the escape)


def _cell(value) -> str:
    """A CSV cell that no spreadsheet runs as a formula: text starting with = + - @ (or the escape ') gets a
    leading '; ``_uncell`` takes it off again."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def _uncell(text: str) -> str:
    return text[1:] if text.startswith("'") else text


def export(ws, analysis: str, path: str | Path, *, sae: str | None = None) -> Path:
    """Every label row (the history) of an analysis to ``path``: ``.json`` (a list of objects) or ``.csv``.
    ``sae`` (the analysed SAE's fingerprint) is written with them, so an import can tell another SAE's labels."""
    path = Path(path)
    rows = [{c: (r[c].isoformat() if c == "created_at" else _readable(r[c]) if c in ("provenance", "scores") else r[c])
             for c in EXPORT_COLUMNS} for r in label_rows(ws, analysis)]
    if path.suffix == ".json":
        text = json.dumps({"analysis": analysis, "sae": sae, "labels": rows}, indent=1)
    elif path.suffix == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, (*EXPORT_COLUMNS, "sae"), lineterminator="\n")
        writer.writeheader()
        writer.writerows({**{k: _cell(v) for k, v in r.items()}, "sae": _cell(sae)} for r in rows)
        text = buffer.getvalue()
    else:
        raise ConfigError(f"export labels to a .json or .csv file; got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _readable(value: str | None) -> str | None:
    """A stored provenance or scores as an export writes it: a JSON object (text an older saekit let in that is
    not one is kept as ``{"text": ...}``), so that every export imports again."""
    try:
        return json_object(value, "value")
    except ValueError:
        return json.dumps({"text": value})


def _feature_of(value, n_latents: int) -> int:
    if isinstance(value, str) and re.fullmatch(r"\d+", value.strip()):
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"feature {value!r} is not a latent id (a whole number)")
    if not 0 <= value < n_latents:
        raise ValueError(f"feature {value} is not a latent of this analysis (0..{n_latents - 1})")
    return value


def read_import(path: str | Path, analysis: str, n_latents: int, *, sae: str | None = None,
                force: bool = False) -> list[dict]:
    """The rows of an export file, every one checked before any is written (a bad file writes nothing). A file
    exported from another SAE's analysis (its ``sae`` fingerprint differs from ``sae``) is refused unless
    ``force``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"no labels file {str(path)!r}")
    text = path.read_text(encoding="utf-8")
    origin = None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
            raw = data["labels"] if isinstance(data, dict) else data
            origin = data.get("sae") if isinstance(data, dict) else None
            if not isinstance(raw, list):
                raise ValueError("no list of labels")
        elif path.suffix == ".csv":
            raw = list(csv.DictReader(io.StringIO(text)))
            if raw and set(raw[0]) not in (set(EXPORT_COLUMNS), {*EXPORT_COLUMNS, "sae"}):
                raise ValueError(f"columns {sorted(raw[0])}, expected {list(EXPORT_COLUMNS)}")
            raw = [{k: _uncell(v) if isinstance(v, str) else v for k, v in item.items()} for item in raw]
            origin = next((item.get("sae") for item in raw if item.get("sae")), None)
        else:
            raise ValueError("not a .json or .csv file")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{str(path)!r} is not a labels export: {exc}",
                        suggestion="import a file written by feats.export_labels(path)") from exc
    comparable = bool(origin and sae
                      and (origin == sae or (origin.startswith("sha256:") and sae.startswith("sha256:"))))
    if comparable and origin != sae:
        if not force:
            raise DataError(f"{str(path)!r} holds the labels of another SAE ({origin}); this analysis is of {sae}, "
                            "so its latent ids mean other features; nothing was imported",
                            suggestion="import it into an analysis of that SAE, or pass force=True if you know "
                                       "the latents match")
        log.warning("importing %s: labels of SAE %s into an analysis of %s (force=True)", path, origin, sae)
    elif not comparable:
        log.warning("%s does not say which SAE its labels are of in a way this analysis can check (an older export "
                    "or analysis); it is imported as asked", path)
    rows = []
    for n, item in enumerate(raw, start=1):
        try:
            if not isinstance(item, dict):
                raise ValueError(f"{item!r} is not an object")
            source = item["source"]
            if source not in SOURCES:
                raise ValueError(f"source {source!r} is not one of {SOURCES}")
            label = item["label"]
            if not isinstance(label, str):
                raise ValueError(f"label {label!r} is not text")
            if label.strip():  # an empty label is a clearing row
                label = check_label(label)
            author = item["author"]
            if not isinstance(author, str) or not author or len(author) > 200 or CONTROL.search(author):
                raise ValueError(f"author {str(author)[:40]!r} is not a name (one line, at most 200 characters)")
            created = item["created_at"]
            if not isinstance(created, str):
                raise ValueError(f"created_at {created!r} is not an ISO time")
            rows.append({"analysis": analysis, "feature": _feature_of(item["feature"], n_latents), "label": label.strip(),
                         "source": source, "author": author, "note": check_note(item.get("note") or None),
                         "provenance": json_object(item.get("provenance"), "provenance"),
                         "scores": json_object(item.get("scores"), "scores"),
                         "created_at": dt.datetime.fromisoformat(created)})
        except (KeyError, ValueError, TypeError) as exc:
            raise DataError(f"{str(path)!r}, label {n}: {exc}; nothing was imported",
                            suggestion="fix that entry, or export the labels again") from exc
    return rows
