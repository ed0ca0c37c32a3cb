"""``Evaluation``: an evaluate job's result. ``ev.metrics`` (family -> metric -> value), ``ev.to_pandas()``,
``ev.details(family)``, ``ev.to_saebench(folder)`` (SAEBench's JSON, one file per evaluation it has), and as a
cell's last expression, a report widget (with a static snapshot)."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from saekit._fs import write_atomic
from saekit._provided import provided

# SAEBench's eval_type_id and the category of eval_result_metrics each of our metrics goes to
SAEBENCH = {
    "core": ("core", {
        "model_behavior_preservation": {"kl_div_score": "kl_recovered", "kl_div_with_ablation": "kl_zero",
                                        "kl_div_with_sae": "kl"},
        "model_performance_preservation": {"ce_loss_score": "ce_recovered", "ce_loss_with_ablation": "ce_zero",
                                           "ce_loss_with_sae": "ce_sae", "ce_loss_without_sae": "ce_clean"},
        "reconstruction_quality": {"explained_variance": "explained_variance", "mse": "mse", "cossim": "cossim"},
        "shrinkage": {"l2_ratio": "l2_ratio", "relative_reconstruction_bias": "relative_reconstruction_bias"},
        "sparsity": {"l0": "l0", "l1": "l1"},
        "token_stats": {"total_tokens_eval_reconstruction": "eval_tokens"},
    }),
    "sparse_probing": ("sparse_probing", None),  # the llm_* and sae_* metrics, by name
    "absorption": ("absorption_first_letter", {"mean": None}),  # every mean_* and std_dev_* metric
    "autointerp": ("autointerp", {"autointerp": {"autointerp_score": "autointerp_score",
                                                 "autointerp_std_dev": "autointerp_std_dev"}}),
}


class Evaluation:
    """The scores of one SAE by ``sk.evaluate`` (see ``saekit.evals.evaluate``)."""

    def __init__(self, result: dict, workspace=None):
        self.result = result
        self.workspace = workspace
        self.sae_path: str = result["sae"]["path"]
        self.run: dict | None = result.get("run")
        self.metrics: dict[str, dict] = {f: dict(r["metrics"]) for f, r in result["results"].items()}

    def details(self, family: str) -> dict:
        """What a family measured beyond its summary (per task, per letter, per latent)."""
        return self.result["results"][family].get("details", {})

    def to_pandas(self):
        """One row per metric: family, metric, value."""
        import pandas as pd

        return pd.DataFrame([{"family": f, "metric": k, "value": v} for f, m in self.metrics.items()
                             for k, v in m.items()])

    def to_saebench(self, folder: str | Path, *, sae_id: str | None = None) -> list[Path]:
        """Write each evaluation SAEBench also runs as its JSON (``{sae_id}_eval_results.json`` in
        ``folder/<eval_type_id>/``, SAEBench's layout and fields); returns the files."""
        folder = Path(folder)
        sae_id = (sae_id or Path(self.sae_path).name).replace("/", "_")
        config = self.result.get("config", {})
        out = []
        for family, (type_id, layout) in SAEBENCH.items():
            if family not in self.metrics:
                continue
            values = self.metrics[family]
            if layout is None:  # sparse probing: two categories, llm_* and sae_*
                metrics = {side: {k: values[k] for k in values if k.startswith(side + "_") and not k.endswith("_ci")}
                           for side in ("llm", "sae")}
            else:
                metrics = {category: ({k: v for k, v in values.items() if k.startswith(("mean_", "std_dev_"))}
                                      if names is None else {ours_: values.get(mine) for ours_, mine in names.items()})
                           for category, names in layout.items()}
            document = {
                "eval_type_id": type_id, "eval_config": {"saekit_metric": family, **config},
                "eval_id": str(uuid.uuid4()), "datetime_epoch_millis": int(time.time() * 1000),
                "eval_result_metrics": _no_nan(metrics), "eval_result_details": _details(family, self.details(family)),
                "sae_bench_commit_hash": "saekit", "sae_lens_id": sae_id, "sae_lens_release_id": "saekit",
                "sae_lens_version": "Unknown", "sae_cfg_dict": self._sae_cfg(),
                "eval_result_unstructured": None,
            }
            path = folder / type_id / f"saekit_{sae_id}_eval_results.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, json.dumps(document, indent=2, default=str))
            out.append(path)
        return out

    def _sae_cfg(self) -> dict:
        cfg = Path(self.sae_path) / "cfg.json"
        try:
            return json.loads(cfg.read_text()).get("config", {})
        except (OSError, ValueError):
            return {}

    def widget(self):
        """The report as a widget (tables per family; a static snapshot rides along)."""
        return provided("eval report")(self)

    def _repr_mimebundle_(self, include=None, exclude=None):
        return self.widget()._repr_mimebundle_(include=include, exclude=exclude)

    def __repr__(self) -> str:
        lines = [f"Evaluation of {self.sae_path}" + (f" (run {self.run['job']}" + (
            f" sae {self.run['sae']})" if self.run.get("sae") is not None else ")") if self.run else "")]
        for family, values in self.metrics.items():
            shown = [f"{k}={v:.4g}" if isinstance(v, (int, float)) else f"{k}=-" for k, v in values.items()
                     if not k.endswith("_ci")]
            lines.append(f"  {family}: " + ", ".join(shown[:10]))
        if "steering" in self.metrics:
            lines += self._steering_lines()
        return "\n".join(lines)

    def _steering_lines(self) -> list[str]:
        """The steering curves as text: per method, concept and loss increase at each coefficient, and the area."""
        details, values = self.details("steering"), self.metrics["steering"]
        base = values["baseline_loss"]
        names = {"sae": f"SAE feature {details['feature']}", "diffmean": "DiffMean"}
        out = [f"  steering curves (concept, loss increase in nats, by coefficient; area within "
               f"{details['fluency_budget']:g} nats):"]
        for method, rows in details["curves"].items():
            points = "  ".join(f"{r['coeff']:g}: {r['concept']:.3f} {r['loss'] - base:+.2f}" for r in rows)
            out.append(f"    {names[method]:>16}  area {values[f'{method}_area']:.3f} | {points}")
        prompting = details["prompting"]
        out.append(f"    {'prompting':>16}  concept {prompting['concept']:.3f} at {prompting['loss'] - base:+.2f}; "
                   f"better steering: {names[details['winner']]}")
        return out


def _no_nan(value):
    """SAEBench's files hold -1 where a number is missing."""
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if value is None or (isinstance(value, float) and value != value):
        return -1
    return value


def _details(family: str, details: dict) -> list:
    if family == "absorption":
        keys = ("first_letter", "mean_absorption_fraction", "full_absorption_rate", "num_full_absorption",
                "num_probe_true_positives", "num_split_features")
        return [{k: row[k] for k in keys} for row in details.get("letters", [])]
    if family == "sparse_probing":
        datasets: dict[str, dict[str, list[float]]] = {}
        for task, probes in details.items():
            name = task.split("/", 1)[0]
            for probe, value in probes.items():
                datasets.setdefault(name, {}).setdefault(probe, []).append(value["accuracy"])
        return [{"dataset_name": f"{name}_results", **{p: sum(v) / len(v) for p, v in probes.items()}}
                for name, probes in datasets.items()]
    return []
