"""``sk.runs()``: jobs as one table of their configs and final metrics (W&B's run table), for comparing a sweep
without a loop. Two or three registry reads, whatever the number of runs."""

from __future__ import annotations

from typing import Any

from saekit.errors import ConfigError
from saekit.jobs.kinds import kind_hook
from saekit.registry import history
from saekit.workspace import Workspace, as_workspace

FIXED = ("id", "kind", "name", "status", "created_at", "finished_at")
RESERVED = (*FIXED, "sae")  # names a spec field's column never takes (an evaluation's run.sae stays run.sae)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    if isinstance(value, list):
        value = tuple(value)  # hashable, so a column of them can be grouped and filtered
    return {prefix[:-1]: value}


def _short_names(columns: list[str]) -> dict[str, str]:
    """Each dotted column by its last part, with as many parts before it as tell it apart from the others."""
    names, depth = {}, {c: 1 for c in columns}
    while True:
        names = {c: ".".join(c.split(".")[-depth[c]:]) for c in columns}
        clashes = {n for n in names.values() if list(names.values()).count(n) > 1 or n in RESERVED}
        grow = [c for c in columns if names[c] in clashes and depth[c] < len(c.split("."))]
        if not grow:
            return {c: f"spec.{c}" if n in RESERVED else n for c, n in names.items()}
        for c in grow:
            depth[c] += 1


def _config_rows(row: dict) -> list[dict]:
    """One row per run of a job: its kind's ``runs`` hook splits a sweep (one row per SAE); any other job is one."""
    import json

    spec = json.loads(row["spec"]) if row["spec"] else {}
    split = kind_hook(row["kind"], "runs")
    if split is None:
        return [_flatten(spec)]
    return [{**_flatten(run), "sae": i} for i, run in enumerate(split(spec))]


def runs(kind: str | None = None, status: str | list[str] | None = "completed", *,
         workspace: str | Workspace | None = None, **where: Any):
    """Jobs as a pandas DataFrame: ``id, kind, name, status, created_at, finished_at``, the spec's fields
    (flattened, each under its shortest unambiguous name: ``k``, ``lr``, ``total_tokens``...), and each
    metric's value at its last step, with the metrics of the latest ``sk.evaluate`` of each run as more columns
    (``core/fvu``, ``sparse_probing/sae_top_1_test_accuracy``...). A job that makes several runs (its kind's
    ``runs`` hook: a training job that trained several SAEs) gives one row per run (column ``sae``), with that run's config and its own
    metrics (``sae1/fvu`` becomes ``fvu`` on row 1).

    ``status=None`` includes every state. Keyword arguments filter: ``sk.runs("train", k=32)``, a list
    for any of several values (``arch=["topk", "batchtopk"]``), or a function of the column
    (``fvu=lambda v: v < 0.1``). Sort and plot it as any DataFrame.
    """
    import pandas as pd

    ws = as_workspace(workspace)
    states = None if status is None else [status] if isinstance(status, str) else list(status)
    jobs = history.job_specs(ws, kind=kind, status=states)
    records = []
    for job in jobs:
        for config in _config_rows(job):
            records.append({**{c: job[c] for c in FIXED}, **{f"spec.{k}": v for k, v in config.items() if k != "sae"},
                            **({"sae": config["sae"]} if "sae" in config else {})})
    frame = pd.DataFrame.from_records(records)
    if frame.empty:
        return pd.DataFrame(columns=list(FIXED))
    scorers = _scorers(ws, jobs if kind is None and (states is None or "completed" in states) else None)
    finals = history.final_metrics(ws, [j["id"] for j in jobs] + list(scorers))
    metric_columns: dict[tuple[str, int | None], dict[str, float]] = {}
    scored: dict[tuple[str, int | None], list[tuple[str, str, float]]] = {}
    for job_id, name, value in zip(finals["job_id"], finals["name"], finals["value"]):
        if job_id in scorers:  # an evaluation's metrics join the row of the run it scored
            scored.setdefault(scorers[job_id][0], []).append((scorers[job_id][1], name, value))
        sae, _, metric = name.rpartition("/")
        index = int(sae[3:]) if sae.startswith("sae") and sae[3:].isdigit() else None
        metric_columns.setdefault((job_id, index), {})[metric if index is not None else name] = value
    for run, values in scored.items():  # the latest evaluation of a run wins
        for _, name, value in sorted(values, key=lambda v: v[0]):
            metric_columns.setdefault(run, {})[name] = value
    has_sae = "sae" in frame.columns
    metrics = pd.DataFrame.from_records([
        {**metric_columns.get((i, None), {}), **(metric_columns.get((i, int(s)), {}) if has_sae and not pd.isna(s) else {})}
        for i, s in zip(frame["id"], frame["sae"] if has_sae else [None] * len(frame))], index=frame.index)
    spec_columns = [c for c in frame.columns if c.startswith("spec.")]
    renamed = _short_names([c[len("spec."):] for c in spec_columns] + list(metrics.columns))
    frame = frame.rename(columns={c: renamed[c[len("spec."):]] for c in spec_columns})  # (metric names stay whole)
    frame = pd.concat([frame, metrics], axis=1)
    return _filter(frame, where)


def _scorers(ws: Workspace, completed: list[dict] | None) -> dict[str, tuple[tuple[str, int | None], str]]:
    """Completed jobs that score a run (their kind's ``scores`` hook): job id -> ((run's job, SAE index), when it
    finished). ``completed``: the completed jobs when already read (else one more registry read)."""
    import json

    rows = history.job_specs(ws, status=["completed"]) if completed is None else completed
    out = {}
    for row in rows:
        if row["status"] != "completed":
            continue
        hook = kind_hook(row["kind"], "scores")
        run = hook(json.loads(row["spec"]) if row["spec"] else {}) if hook is not None else None
        if run is not None:
            out[row["id"]] = ((run[0], run[1]), str(row["finished_at"]))
    return out


def _filter(frame, where: dict):
    for column, wanted in where.items():
        if column not in frame.columns:
            raise ConfigError(f"runs() has no column {column!r} to filter on; columns: {sorted(map(str, frame.columns))}")
        if callable(wanted):
            mask = frame[column].map(lambda v, wanted=wanted: bool(wanted(v)))
        elif isinstance(wanted, (list, set)):
            mask = frame[column].isin(list(wanted))
        else:
            mask = frame[column] == wanted
        frame = frame[mask]
    return frame.reset_index(drop=True)
