"""saekit: sparse-autoencoder interpretability in Jupyter, with durable jobs.

The public API is the names in ``__all__``. Heavy parts (torch, transformers, zarr) load on first use,
so ``saekit jobs`` and background workers start fast.
"""

from importlib import import_module

from saekit import _logging, _provided
from saekit._version import __version__
from saekit.errors import (
    ConfigError,
    DataError,
    HookPointError,
    JobFailedError,
    JobNotFoundError,
    ModelLoadError,
    SaekitError,
    StorageError,
    WorkspaceError,
)
from saekit import workspace  # the module, callable: sk.workspace() is the current workspace
from saekit.workspace import Workspace, set_workspace

from saekit import jobs  # the package, callable: sk.jobs() lists the jobs  # noqa: E402
from saekit.jobs.job import Job, get_job as job, submit  # noqa: E402
from saekit.jobs.kinds import job_kind  # noqa: E402
from saekit.jobs.spec import JobSpec, spec_field  # noqa: E402

_logging.configure()

# what the higher layers lend the lower ones (saekit/_provided.py): lower layers ask by name, never import upward
_provided.provide("job widget", "saekit.widgets.job_widget:JobWidget")
_provided.provide("feature card", "saekit.widgets.feature_card:FeatureCard")
_provided.provide("feature browser", "saekit.widgets.feature_browser:FeatureBrowser")
_provided.provide("features html", "saekit.widgets.feature_html:export_html")
_provided.provide("text features", "saekit.widgets.text_features:TextFeaturesView")
_provided.provide("steer", "saekit.steering.intervention:steer")
_provided.provide("eval report", "saekit.widgets.eval_report:EvalReport")
for _name in ("SteeringView", "comparison_text", "SweepView", "sweep_text"):
    _provided.provide(_name, f"saekit.widgets.steering:{_name}")

_LAZY = {
    "extract": ("saekit.activations.extraction", "extract"),
    "ActivationStore": ("saekit.activations.store", "ActivationStore"),
    "activation_stores": ("saekit.activations.store", "activation_stores"),
    "Corpus": ("saekit.data.corpus", "Corpus"),
    "load_corpus": ("saekit.data.corpus", "load_corpus"),
    "tokenize": ("saekit.data.tokenization", "tokenize"),
    "TokenStore": ("saekit.data.tokens", "TokenStore"),
    "token_stores": ("saekit.data.tokens", "token_stores"),
    "LanguageModel": ("saekit.models.language_model", "LanguageModel"),
    "load_model": ("saekit.models.loading", "load_model"),
    "SAE": ("saekit.sae.model", "SAE"),
    "SAEConfig": ("saekit.sae.config", "SAEConfig"),
    "TrainConfig": ("saekit.sae.config", "TrainConfig"),
    "train": ("saekit.sae.training", "train"),
    "templates": ("saekit.sae.templates", "templates"),
    "analyze": ("saekit.features.analysis", "analyze"),
    "analyses": ("saekit.features.featureset", "analyses"),
    "FeatureSet": ("saekit.features.featureset", "FeatureSet"),
    "Feature": ("saekit.features.featureset", "Feature"),
    "explain": ("saekit.features.explain", "explain"),
    "LocalChat": ("saekit.features.llm", "LocalChat"),
    "OpenAIChat": ("saekit.features.llm", "OpenAIChat"),
    "steer": ("saekit.steering.intervention", "steer"),
    "compare_steering": ("saekit.steering.compare", "compare_steering"),
    "steering_sweep": ("saekit.steering.compare", "steering_sweep"),
    "evaluate": ("saekit.evals.evaluate", "evaluate"),
    "SyntheticConfig": ("saekit.evals.synthetic", "SyntheticConfig"),
    "SyntheticFeatures": ("saekit.evals.synthetic", "SyntheticFeatures"),
    "recovery": ("saekit.evals.ground_truth", "recovery"),
    "SystemMonitor": ("saekit.widgets.system_widget", "SystemMonitor"),
    "dashboard": ("saekit.widgets.dashboard", "dashboard"),
    "compare": ("saekit.widgets.dashboard", "compare"),
    "runs": ("saekit.jobs.runs", "runs"),
    "export": ("saekit.jobs.portable", "export"),
    "import_jobs": ("saekit.jobs.portable", "import_jobs"),
    "RetentionPolicy": ("saekit.workspace", "RetentionPolicy"),
}

__all__ = sorted([
    "ConfigError", "DataError", "HookPointError", "JobFailedError", "JobNotFoundError", "ModelLoadError",
    "SaekitError", "StorageError", "Workspace", "WorkspaceError", "__version__", "set_workspace", "workspace", "Job", "job", "jobs",
    "job_kind", "JobSpec", "spec_field", "submit",
    *_LAZY,
])


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'saekit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
