"""Steering views: ``SteeringView`` (generations side by side, the tokens that differ from the unsteered one
highlighted, each output's read-back activation and log-probability) and ``SweepView`` (concept score,
perplexity and KL divergence against the coefficient, as charts with axes, and the table). Each also has
a static HTML snapshot and a text form (``comparison_text``, ``sweep_text``) for saved notebooks and terminals."""

from __future__ import annotations

import traitlets

from saekit.widgets._base import SnapshotWidget, esm
from saekit.widgets.snapshot import box, esc, line_chart, number, table

CHANGED = "background:#fde68a;border-radius:2px"


def _coeff(row: dict) -> str:
    return "unsteered" if row["coeff"] is None else f"{row['coeff']:g}"


def _activation(row: dict) -> str:
    return ", ".join(f"#{k} {number(v)}" for k, v in row["activation"].items()) or "-"


def _heading(data: dict) -> str:
    weights = data.get("weights") or {}
    feats = ", ".join(f"#{i}" + (f" ×{weights[str(i)]:g}" if weights.get(str(i), 1.0) != 1.0 else "")
                      for i in data["features"])
    unit = " × max activation" if data.get("relative") else ""
    return f"steering {feats}, mode {data['mode']}{unit}" + (f", positions {data['positions']}" if "positions" in data else "")


def comparison_text(data: dict) -> str:
    lines = [f"{_heading(data)}; prompt {data['prompt']!r}"]
    for row in data["rows"]:
        lines.append(f"  [{_coeff(row):>9}] {row['text']!r}")
        lines.append(f"              activation {_activation(row)}, log-prob {number(row['logprob'])}, "
                     f"{sum(row['differs'])} of {len(row['differs'])} tokens changed")
    return "\n".join(lines)


def comparison_html(data: dict) -> str:
    rows = []
    for row in data["rows"]:
        text = "".join(f"<span style='{CHANGED if d else ''}'>{esc(t)}</span>" for t, d in zip(row["tokens"], row["differs"]))
        rows.append(f"<tr><td style='padding:3px 8px;white-space:nowrap'>{esc(_coeff(row))}</td>"
                    f"<td style='padding:3px 8px;font-family:monospace;white-space:pre-wrap;word-break:break-word'>{text}</td>"
                    f"<td style='padding:3px 8px'>{esc(_activation(row))}</td>"
                    f"<td style='padding:3px 8px'>{number(row['logprob'])}</td></tr>")
    head = "".join(f"<th style='text-align:left;padding:2px 8px'>{h}</th>"
                   for h in ("coefficient", "generation (changed tokens marked)", "activation read back", "log-prob"))
    return box(f"<div style='font-weight:600'>{esc(_heading(data))}</div>",
               f"<div>prompt: <code>{esc(data['prompt'])}</code></div>",
               f"<table style='border-collapse:collapse;margin-top:4px;width:100%;table-layout:fixed'><tr>{head}</tr>"
               f"{''.join(rows)}</table>")


METRICS = (("concept", "concept score (feature activation)"), ("target_probability", "P(target tokens)"),
           ("perplexity", "perplexity (unsteered model)"), ("kl", "KL on neutral text"))


def sweep_text(data: dict) -> str:
    columns = ["coeff"] + [m for m, _ in METRICS if data["rows"] and m in data["rows"][0]]
    lines = [_heading(data), "  " + "  ".join(f"{c:>18}" for c in columns)]
    for row in data["rows"]:
        lines.append("  " + "  ".join(f"{number(row.get(c)):>18}" for c in columns))
    return "\n".join(lines)


def sweep_series(data: dict) -> dict[str, list[list[float]]]:
    return {m: [[r["coeff"], r[m]] for r in data["rows"] if r.get(m) is not None]
            for m, _ in METRICS if data["rows"] and m in data["rows"][0]}


def sweep_html(data: dict) -> str:
    titles = dict(METRICS)
    charts = "".join(line_chart(f"{titles[m]} by coefficient", {m: points}, log=m == "perplexity", width=260)
                     for m, points in sweep_series(data).items())
    columns = ["coeff"] + list(sweep_series(data))
    return box(f"<div style='font-weight:600'>{esc(_heading(data))}</div>", f"<div>{charts}</div>",
               table(columns, [[number(r.get(c)) for c in columns] for r in data["rows"]]))


class SteeringView(SnapshotWidget):
    """``sk.compare_steering``'s view (the whole comparison is the ``data`` trait)."""

    _esm = esm("steering.js")
    data = traitlets.Dict({}).tag(sync=True)
    view = traitlets.Unicode("comparison").tag(sync=True)

    def __init__(self, data: dict, **kwargs):
        super().__init__(**kwargs)
        self.data = data

    def summary(self) -> str:
        return comparison_text(self.data)

    def snapshot_html(self) -> str:
        return comparison_html(self.data)


class SweepView(SnapshotWidget):
    """``sk.steering_sweep``'s view: one chart per measure against the coefficient, and the table."""

    _esm = esm("steering.js")
    data = traitlets.Dict({}).tag(sync=True)
    series = traitlets.Dict({}).tag(sync=True)
    view = traitlets.Unicode("sweep").tag(sync=True)

    def __init__(self, data: dict, **kwargs):
        super().__init__(**kwargs)
        self.data = data
        self.series = sweep_series(data)

    def summary(self) -> str:
        return sweep_text(self.data)

    def snapshot_html(self) -> str:
        return sweep_html(self.data)
