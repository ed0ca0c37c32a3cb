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
import os
from pathlib import Path

from saekit import registry
from saekit.errors import ConfigError, DataError
from saekit.registry.labels import COLUMNS, JOURNAL, add_labels, current_labels, label_rows

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
            "note": note, "provenance": None if provenance is None else json.dumps(provenance, sort_keys=True),
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
    return add_labels(ws, rows)


def _jsonable(row: dict) -> dict:
    return {**row, "created_at": row["created_at"].isoformat()}


def check_label(label) -> str:
    if not isinstance(label, str) or not label.strip():
        raise ConfigError(f"label={label!r} must be some text, e.g. 'Python keywords' (feats.clear_label(i) removes one)")
    if "\n" in label or len(label) > 500:
        raise ConfigError("a label is one line of at most 500 characters; put the rest in note=")
    return label.strip()


def check_feature(feature, n: int) -> int:
    if isinstance(feature, bool) or not isinstance(feature, int) or not 0 <= feature < n:
        raise ConfigError(f"feature {feature!r} is not a latent of this analysis (0..{n - 1})")
    return int(feature)


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


def export(ws, analysis: str, path: str | Path) -> Path:
    """Every label row (the history) of an analysis to ``path``: ``.json`` (a list of objects) or ``.csv``."""
    path = Path(path)
    rows = [{c: (r[c].isoformat() if c == "created_at" else r[c]) for c in EXPORT_COLUMNS}
            for r in label_rows(ws, analysis)]
    if path.suffix == ".json":
        text = json.dumps({"analysis": analysis, "labels": rows}, indent=1)
    elif path.suffix == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, EXPORT_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
        text = buffer.getvalue()
    else:
        raise ConfigError(f"export labels to a .json or .csv file; got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_import(path: str | Path, analysis: str, n_latents: int) -> list[dict]:
    """The rows of an export file, every one checked before any is written (a bad file writes nothing)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"no labels file {str(path)!r}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            data = json.loads(text)
            raw = data["labels"] if isinstance(data, dict) else data
            if not isinstance(raw, list):
                raise ValueError("no list of labels")
        elif path.suffix == ".csv":
            raw = list(csv.DictReader(io.StringIO(text)))
            if raw and set(raw[0]) != set(EXPORT_COLUMNS):
                raise ValueError(f"columns {sorted(raw[0])}, expected {list(EXPORT_COLUMNS)}")
        else:
            raise ValueError("not a .json or .csv file")
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{str(path)!r} is not a labels export: {exc}",
                        suggestion="import a file written by feats.export_labels(path)") from exc
    rows = []
    for n, item in enumerate(raw, start=1):
        try:
            feature = int(item["feature"])
            if not 0 <= feature < n_latents:
                raise ValueError(f"feature {feature} is not a latent of this analysis (0..{n_latents - 1})")
            source = item["source"]
            if source not in SOURCES:
                raise ValueError(f"source {source!r} is not one of {SOURCES}")
            label = item["label"]
            if not isinstance(label, str):
                raise ValueError(f"label {label!r} is not text")
            blank = (lambda v: None if v in (None, "") else str(v))
            rows.append({"analysis": analysis, "feature": feature, "label": label, "source": source,
                         "author": str(item["author"]), "note": blank(item.get("note")),
                         "provenance": blank(item.get("provenance")), "scores": blank(item.get("scores")),
                         "created_at": dt.datetime.fromisoformat(item["created_at"])})
        except (KeyError, ValueError, TypeError) as exc:
            raise DataError(f"{str(path)!r}, label {n}: {exc}; nothing was imported",
                            suggestion="fix that entry, or export the labels again") from exc
    return rows
