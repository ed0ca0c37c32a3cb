"""The workspace: one folder holding the registry, the job folders, stores, checkpoints and logs.

Calling this module returns the current workspace: ``saekit.workspace()`` is ``sk.workspace()``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from saekit.errors import ConfigError, WorkspaceError

DEFAULT_PATH = "./saekit-workspace"
JOB_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,127}")  # what saekit makes: <kind>-<8 hex>
CONFIG_FILE = "saekit.json"  # the workspace's own settings (its retention policy)


@dataclass(frozen=True)
class RetentionPolicy:
    """What ``saekit gc`` may remove from finished jobs; ages count from a job's end. None: never.

    Nothing a finished job's result or ``metrics()`` needs is ever removed: metrics stay in the registry
    (and beside a reduced log, for a rebuild), results, stores, SAEs and analyses are never touched.
    Each field can be overridden by ``SAEKIT_RETENTION_<FIELD>`` (a number, ``none``, or for
    ``checkpoints`` true/false).
    """

    events_days: float | None = 90
    """Compact the event log: drop heartbeats, resource samples and all but the last progress line."""
    reduce_events_days: float | None = None
    """Reduce the event log to its submit, start and end records; metrics move to ``metrics.parquet`` beside it."""
    worker_logs_days: float | None = 30
    """Delete the background worker's stdout/stderr file ``logs/<id>.log``."""
    checkpoints: bool = True
    """Delete the checkpoints (``step_N/``) left beside a completed run's ``final/``."""

    def __post_init__(self):
        for name in ("events_days", "reduce_events_days", "worker_logs_days"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise ConfigError(f"RetentionPolicy.{name}={value!r} must be a number of days >= 0, or None (never)")
        if not isinstance(self.checkpoints, bool):
            raise ConfigError(f"RetentionPolicy.checkpoints={self.checkpoints!r} must be True or False")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "RetentionPolicy":
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"unknown retention setting(s) {unknown}; known: "
                              f"{[f.name for f in dataclasses.fields(cls)]}")
        return cls(**values)

    @classmethod
    def strictest(cls) -> "RetentionPolicy":
        """Everything removable, at once (what the retention test runs)."""
        return cls(events_days=0, reduce_events_days=0, worker_logs_days=0, checkpoints=True)


def _env_overrides() -> dict:
    out: dict[str, float | bool | None] = {}
    for field in dataclasses.fields(RetentionPolicy):
        raw = os.environ.get(f"SAEKIT_RETENTION_{field.name.upper()}")
        if raw is None or raw == "":
            continue
        if field.name == "checkpoints":
            out[field.name] = raw.strip().lower() not in ("0", "false", "no", "off")
        elif raw.strip().lower() in ("none", "never"):
            out[field.name] = None
        else:
            try:
                out[field.name] = float(raw)
            except ValueError:
                raise ConfigError(f"SAEKIT_RETENTION_{field.name.upper()}={raw!r} is not a number of days; "
                                  "give a number, or none") from None
    return out


class Workspace:
    """One directory that owns the registry, stores, checkpoints and logs.

    ``Workspace()`` uses ``$SAEKIT_HOME``, else ``./saekit-workspace``. Nothing is created until
    something is written; a path that cannot be written raises ``WorkspaceError`` then.
    """

    def __init__(self, path: str | os.PathLike | Workspace | None = None):
        raw = path if path is not None else (os.environ.get("SAEKIT_HOME") or DEFAULT_PATH)
        if isinstance(raw, Workspace):
            raw = raw.path
        self.path: Path = Path(os.path.abspath(Path(raw).expanduser()))
        if self.path.exists() and not self.path.is_dir():
            raise WorkspaceError(
                f"workspace path {str(self.path)!r} is a file, not a folder; "
                "give a folder path (it is created when first needed)"
            )

    # -- paths (never created by asking) -------------------------------------------------------
    @property
    def registry_path(self) -> Path:
        return self.path / "registry.duckdb"

    @property
    def registry_lock_path(self) -> Path:
        return self.path / "registry.lock"

    def job_dir(self, job_id: str) -> Path:
        return self.path / "jobs" / job_id

    def contains(self, path: str | os.PathLike) -> bool:
        """Whether ``path`` (symbolic links resolved) lies inside this workspace, below its folder."""
        if "://" in str(path):
            return False
        root = os.path.realpath(self.path)
        return os.path.realpath(path).startswith(root + os.sep)

    def log_path(self, job_id: str) -> Path:
        return self.path / "logs" / f"{job_id}.log"

    # -- settings --------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    def _config(self) -> dict:
        try:
            return json.loads(self.config_path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise ConfigError(f"{str(self.config_path)!r} is not valid JSON ({exc}); fix or delete it") from None

    def retention(self, **changes) -> RetentionPolicy:
        """The workspace's retention policy; keyword arguments change it and save it in ``saekit.json``
        (``ws.retention(events_days=30)``). Environment variables ``SAEKIT_RETENTION_<FIELD>`` override the file."""
        config = self._config()
        saved = RetentionPolicy.from_dict(config.get("retention", {}))
        if changes:
            RetentionPolicy.from_dict(changes)  # names and values checked
            saved = dataclasses.replace(saved, **changes)
            config["retention"] = saved.to_dict()
            from saekit._fs import write_atomic

            self.dir()
            write_atomic(self.config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")
        return dataclasses.replace(saved, **_env_overrides())

    # -- creation ------------------------------------------------------------------------------
    def dir(self, *parts: str) -> Path:
        """Return ``<workspace>/<parts...>``, creating it (and the workspace) when missing."""
        target = self.path.joinpath(*parts)
        if target.is_dir():
            return target
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WorkspaceError(
                f"cannot create {str(target)!r} in workspace {str(self.path)!r}: {exc.strerror or exc}; "
                "choose a writable folder with sk.set_workspace(path) or $SAEKIT_HOME"
            ) from exc
        if not os.access(target, os.W_OK | os.X_OK):
            raise WorkspaceError(
                f"workspace folder {str(target)!r} is not writable; "
                "choose a writable folder with sk.set_workspace(path) or $SAEKIT_HOME"
            )
        return target

    def ensure(self) -> "Workspace":
        """Create the workspace folder now (it is otherwise created lazily); returns self."""
        self.dir()
        return self

    def __fspath__(self) -> str:
        return str(self.path)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Workspace) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def __repr__(self) -> str:
        return f"Workspace({str(self.path)!r})"


def check_job_id(job_id) -> str:
    """``job_id`` when it has the form of a job id (letters, digits, ``_`` and ``-``): an id from outside (an
    imported row, a command line) never names a path outside ``jobs/``."""
    if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
        raise ConfigError(f"{job_id!r} is not a job id: ids are letters, digits, '_' and '-' (at most 128), "
                          "e.g. 'train-1a2b3c4d'")
    return job_id


_current: Workspace | None = None


def workspace() -> Workspace:
    """The current workspace: the one given to ``set_workspace``, else ``$SAEKIT_HOME``, else ``./saekit-workspace``."""
    return _current if _current is not None else Workspace()


def set_workspace(path: str | os.PathLike | Workspace | None) -> Workspace:
    """Make ``path`` the default workspace of this process (``None`` returns to ``$SAEKIT_HOME``)."""
    global _current
    _current = None if path is None else as_workspace(path)
    return workspace()


def as_workspace(value: str | os.PathLike | Workspace | None) -> Workspace:
    """Accept what public functions take as ``workspace=``: None (the current one), a path or a Workspace."""
    if value is None:
        return workspace()
    if isinstance(value, Workspace):
        return value
    return Workspace(value)


from saekit._modules import make_callable  # noqa: E402

make_callable(__name__, workspace)
