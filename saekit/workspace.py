"""The workspace: one folder holding the registry, the job folders, stores, checkpoints and logs.

Calling this module returns the current workspace: ``saekit.workspace()`` is ``sk.workspace()``.
"""

from __future__ import annotations

import os
from pathlib import Path

from saekit.errors import WorkspaceError

DEFAULT_PATH = "./saekit-workspace"


class Workspace:
    """One directory that owns the registry, stores, checkpoints and logs.

    ``Workspace()`` uses ``$SAEKIT_HOME``, else ``./saekit-workspace``. Nothing is created until
    something is written; a path that cannot be written raises ``WorkspaceError`` then.
    """

    def __init__(self, path: str | os.PathLike | None = None):
        raw = path if path is not None else (os.environ.get("SAEKIT_HOME") or DEFAULT_PATH)
        if isinstance(raw, Workspace):
            raw = raw.path
        self.path = Path(os.path.abspath(Path(raw).expanduser()))
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

    def log_path(self, job_id: str) -> Path:
        return self.path / "logs" / f"{job_id}.log"

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
