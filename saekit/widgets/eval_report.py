"""``EvalReport``: one SAE's ``sk.evaluate`` result: a table per metric family (value and, where the metric has
one, its 95% interval), sparse probing as bars of accuracy by k for the SAE and the model. Python lays out the
rows, the browser draws them; the static snapshot is the same tables."""

from __future__ import annotations

import traitlets

from saekit.widgets._base import SnapshotWidget, esm
from saekit.widgets.snapshot import box, esc, line_chart, number, table

TITLES = {"core": "core: reconstruction and the model's loss", "ground_truth": "ground truth: recovery of the dictionary",
          "sparse_probing": "sparse probing: held-out accuracy", "absorption": "absorption: the first-letter task",
          "autointerp": "auto-interpretation: scored explanations",
          "steering": "steering: SAE feature against DiffMean and prompting"}


def report_rows(evaluation) -> list[dict]:
    """``[{family, title, rows: [[metric, value, ci]], seconds, warnings}]`` of an ``Evaluation``."""
    out = []
    for family, values in evaluation.metrics.items():
        rows = [[k, v, values.get(f"{k}_ci")] for k, v in values.items() if not k.endswith("_ci")]
        result = evaluation.result["results"][family]
        out.append({"family": family, "title": TITLES.get(family, family), "rows": rows,
                    "seconds": result.get("seconds"), "warnings": result.get("warnings", [])})
    return out


def probing_bars(values: dict) -> list[list]:
    """``[[label, sae accuracy, llm accuracy]]`` by k (then all), for sparse probing's bars."""
    ks = sorted({int(k.split("_")[2]) for k in values if k.startswith("sae_top_") and not k.endswith("_ci")})
    bars = [[f"k={k}", values.get(f"sae_top_{k}_test_accuracy"), values.get(f"llm_top_{k}_test_accuracy")] for k in ks]
    return bars + [["all", values.get("sae_test_accuracy"), values.get("llm_test_accuracy")]]


def steering_curves(evaluation) -> dict:
    """``{series: {name: [[loss increase, concept], ...]}, prompting: [loss increase, concept], winner}`` of the
    steering family, or ``{}``."""
    if "steering" not in evaluation.metrics:
        return {}
    details = evaluation.details("steering")
    base = evaluation.metrics["steering"]["baseline_loss"]
    names = {"sae": f"SAE feature {details['feature']}", "diffmean": "DiffMean"}
    series = {names[m]: sorted([r["loss"] - base, r["concept"]] for r in rows) for m, rows in details["curves"].items()}
    prompting = details["prompting"]
    return {"series": series, "prompting": [prompting["loss"] - base, prompting["concept"]],
            "winner": names[details["winner"]], "budget": details["fluency_budget"]}


class EvalReport(SnapshotWidget):
    """The view of an ``Evaluation`` (``job.result()`` of ``sk.evaluate`` as a cell's last expression)."""

    _esm = esm("eval_report.js")

    title = traitlets.Unicode("").tag(sync=True)
    families: traitlets.List[dict] = traitlets.List([]).tag(sync=True)
    probing: traitlets.List[list] = traitlets.List([]).tag(sync=True)
    steering = traitlets.Dict({}).tag(sync=True)

    def __init__(self, evaluation, **kwargs):
        super().__init__(**kwargs)
        self._evaluation = evaluation
        run = evaluation.run
        self.title = f"evaluation of {evaluation.sae_path}" + (f" (run {run['job']})" if run else "")
        self.families = report_rows(evaluation)
        self.probing = probing_bars(evaluation.metrics["sparse_probing"]) if "sparse_probing" in evaluation.metrics else []
        self.steering = steering_curves(evaluation)

    def summary(self) -> str:
        return repr(self._evaluation)

    def snapshot_html(self) -> str:
        parts = [f"<div style='font-weight:600'>{esc(self.title)}</div>"]
        for family in self.families:
            rows = [[name, number(value), "" if ci is None else f"± {number(ci)}"] for name, value, ci in family["rows"]]
            parts.append(f"<div style='margin-top:6px;font-weight:600'>{esc(family['title'])}"
                         f"<span style='font-weight:400;color:#666'> ({number(family['seconds'])} s)</span></div>")
            parts.append(table(["metric", "value", "95% interval"], rows))
            if family["family"] == "steering" and self.steering:
                parts.append(line_chart("concept (probe probability) by loss increase (nats)", self.steering["series"]))
                x, y = self.steering["prompting"]
                parts.append(f"<div>prompting: concept {number(y)} at a loss increase of {number(x)}; "
                             f"the better steering: {esc(self.steering['winner'])}</div>")
            parts += [f"<div style='color:#b45309'>{esc(w)}</div>" for w in family["warnings"]]
        return box(*parts)
