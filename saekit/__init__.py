"""saekit: sparse-autoencoder interpretability in Jupyter, with durable jobs."""

from saekit._version import __version__
from saekit.errors import (
    ConfigError,
    JobFailedError,
    JobNotFoundError,
    SaekitError,
    WorkspaceError,
)
from saekit.jobs import Job, get_job as job, list_jobs as jobs
from saekit.workspace import Workspace, set_workspace, workspace

__all__ = [
    "ConfigError", "Job", "JobFailedError", "JobNotFoundError", "SaekitError", "Workspace", "WorkspaceError",
    "__version__", "job", "jobs", "set_workspace", "workspace",
]
