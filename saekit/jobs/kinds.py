"""Job kinds: functions ``(ctx, spec) -> result`` registered by name by the layer that owns them.

A job row stores only its kind's name. The code behind the name comes from saekit itself (the
modules in ``BUILTIN``, imported on first use, so ``saekit.jobs`` never imports a higher layer and a
worker imports only what its job needs), from installed packages (entry points of the
``saekit.job_kinds`` group: ``name = "module"``), or from plug-in modules the caller names (see
``saekit._trust``) - never from anything a workspace holds.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any, Callable

from saekit._trust import load_plugins, note_registration
from saekit.errors import ConfigError
from saekit.jobs.spec import JobSpec

# saekit's own kinds and the modules that register them
BUILTIN = {
    "tokenize": "saekit.data.tokenization",
    "fetch_model": "saekit.models.fetch",
    "extract": "saekit.activations.extraction",
    "train": "saekit.sae.training",
    "analyze": "saekit.features.analysis",
    "explain": "saekit.features.explain",
    "evaluate": "saekit.evals.evaluate",
}
ENTRY_POINT_GROUP = "saekit.job_kinds"


@dataclass(frozen=True)
class JobKind:
    name: str
    fn: Callable[..., Any]
    module: str  # the module that registers the kind (recorded in job rows for people to read, never imported)
    validate: Callable[[Any], Any] | None = None  # normalise a spec (dict, or spec instance); ConfigError on bad input
    load_result: Callable[[Any, Any], Any] | None = None  # (workspace, result JSON) -> user object
    outputs: Callable[[Any, Any], list] | None = None  # (workspace, job record) -> paths that job.delete() removes
    output_dirs: tuple[tuple[str, str | None], ...] = ()  # workspace folders holding its outputs, for `saekit gc`
    volatile: tuple[str, ...] = ()  # spec fields that do not change the result (left out of the key)
    disposable: Callable[[Any, Any], list] | None = None  # (workspace, completed job) -> paths retention may delete
    runs: Callable[[dict], list[dict]] | None = None  # spec -> one spec per run the job makes (a sweep: per SAE)
    health: Callable[[dict, Any], dict] | None = None  # (metrics {(step, name): value}, result) -> level, reasons
    tokens_per_step: Callable[[dict], float] | None = None  # spec -> tokens a logged step stands for (charts)
    bookkeeping: tuple[str, ...] = ()  # settings that do not change what a run learns (comparisons skip them)
    scores: Callable[[dict], tuple[str, int | None] | None] | None = None  # spec -> the run its metrics join
    spec: type[JobSpec] | None = None  # the spec's fields (a frozen dataclass); None: a dict the kind checks itself

    def parse(self, data: Any) -> Any:
        """The spec the kind's function gets: an instance of its spec class, or the dict when it has none."""
        return data if self.spec is None else self.spec.from_dict(data, self.name)


_KINDS: dict[str, JobKind] = {}


def job_kind(name: str, *, validate=None, load_result=None, outputs=None, output_dirs=None,
             volatile: tuple[str, ...] = (), disposable=None, runs=None, health=None, tokens_per_step=None,
             bookkeeping: tuple[str, ...] = (), scores=None, spec: type[JobSpec] | None = None):
    """Decorator registering ``fn(ctx, spec) -> result`` (JSON-able) as the job kind ``name``.

    ``outputs(workspace, job)`` lists the files a job made (``job.delete()`` removes them);
    ``output_dirs`` maps the workspace folders those live in to a glob of entries there that belong
    to no job (e.g. ``{"activations": "array-*"}``), so ``saekit gc`` can tell orphans apart.
    ``disposable(workspace, job)`` lists files of a completed job that nothing needs any more (a run's
    leftover checkpoints), which retention deletes.
    What the run table, ``saekit show``, the job widget and the dashboard show of a kind beyond what every job
    has comes from three more hooks (no code outside a kind's module knows a kind by name):
    ``runs(spec)`` splits a job that makes several runs (a training sweep) into one spec per run, each a row of
    ``sk.runs()`` and a line of ``sk.compare``; ``health(metrics, result)`` judges a run from its logged metrics
    (``{(step, name): value}``) and its result (``{"level": "ok"|"suspicious"|"diverged", "reasons": [...]}``);
    ``tokens_per_step(spec)`` says how many tokens a step stands for, so charts can count tokens;
    ``bookkeeping`` names settings that do not change what a run learns (how often it logs or checkpoints, how
    much it evaluates), which ``sk.compare``'s labels leave out, as they leave out volatile fields;
    ``scores(spec)`` names the run a job scores (``(training job id, SAE index or None)``): ``sk.runs()`` shows the
    job's metrics as columns of that run's row too (an evaluation beside its SAE).
    ``spec`` is a frozen dataclass deriving from ``JobSpec``: ``submit`` refuses a spec with an unknown, missing or
    mistyped field (naming it), the function gets the instance, and its ``spec_field(volatile=True)`` fields are
    the volatile ones.
    A background worker finds the kind by importing the same module, so define it in a module (see
    ``saekit._trust`` for how the worker learns of it).
    """

    if spec is not None and not (isinstance(spec, type) and issubclass(spec, JobSpec) and dataclasses.is_dataclass(spec)):
        raise ConfigError(f"job_kind({name!r}, spec={spec!r}) needs a dataclass deriving from saekit.JobSpec")

    def register(fn):
        module = fn.__module__
        existing = _KINDS.get(name)
        if existing is not None and (existing.module, existing.fn.__qualname__) != (module, fn.__qualname__):
            raise ConfigError(f"a job kind named {name!r} is registered already by {existing.module}; choose another name")
        _KINDS[name] = JobKind(
            name=name, fn=fn, module=module, validate=validate, load_result=load_result, outputs=outputs,
            output_dirs=tuple((output_dirs or {}).items()),
            volatile=tuple(dict.fromkeys((*volatile, *(spec.volatile() if spec is not None else ())))),
            disposable=disposable, runs=runs, health=health, tokens_per_step=tokens_per_step,
            bookkeeping=tuple(bookkeeping), scores=scores, spec=spec,
        )
        note_registration(module)
        return fn

    return register


def _import_provider(name: str) -> None:
    """Import the module that registers kind ``name``: saekit's own, an installed package's, or a plug-in."""
    if name in BUILTIN:
        importlib.import_module(BUILTIN[name])
        return
    try:
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP, name=name):
            importlib.import_module(ep.value.split(":")[0])
            return
    except ImportError:  # an installed package whose module is broken or gone: said below
        pass
    load_plugins()


def get_kind(name: str) -> JobKind:
    """The kind registered as ``name``, importing the module that provides it when needed."""
    if name not in _KINDS:
        _import_provider(name)
    if name not in _KINDS:
        known = ", ".join(sorted(set(_KINDS) | set(BUILTIN))) or "none"
        raise ConfigError(
            f"unknown job kind {name!r} (known here: {known}); saekit imports the code of a kind only from "
            "itself, installed packages (entry points of 'saekit.job_kinds') or plug-in modules its caller names",
            suggestion=f"import the module that registers {name!r} in this process, or name it in $SAEKIT_PLUGINS "
                       "(a kind defined in a notebook or script runs only there, with background=False)",
        )
    return _KINDS[name]


def kind_hook(name: str, hook: str):
    """A kind's hook (``runs``, ``health``, ``tokens_per_step``...), or None when the kind has none or is unknown
    here (a row of a kind this process cannot import is shown as any job)."""
    try:
        return getattr(get_kind(name), hook)
    except ConfigError:
        return None


def kinds() -> list[str]:
    return sorted(set(_KINDS) | set(BUILTIN))


def builtin_kinds() -> list[JobKind]:
    """saekit's own kinds (their modules imported), e.g. for ``saekit gc`` to read their output folders."""
    return [get_kind(name) for name in BUILTIN]
