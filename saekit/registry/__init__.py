"""The DuckDB job registry: the only package that imports duckdb.

Every function here is one transaction under the registry's OS lock; no connection is kept open.
"""

from saekit.registry._db import RegistryRebuiltWarning, rebuild_registry, transaction
from saekit.registry.jobs import (
    current_job,
    delete_job,
    finish_job,
    get_job,
    get_jobs,
    get_metrics,
    metric_frame,
    metric_table,
    job_ids,
    job_table,
    jobs_locked,
    list_jobs,
    request_cancel,
    resume_job,
    submit_job,
    transition,
    utcnow,
)
from saekit.registry.records import JobRecord, Status
from saekit.registry.schema import ACTIVE_STATES, FINAL_STATES, JOB_STATES, SCHEMA_VERSION

__all__ = [
    "ACTIVE_STATES", "FINAL_STATES", "JOB_STATES", "JobRecord", "SCHEMA_VERSION", "Status", "current_job", "delete_job", "finish_job", "get_job",
    "get_jobs", "get_metrics", "metric_frame", "metric_table", "job_ids", "job_table", "jobs_locked", "list_jobs", "rebuild_registry", "RegistryRebuiltWarning", "request_cancel",
    "resume_job", "submit_job", "transition",
    "transaction", "utcnow",
]
