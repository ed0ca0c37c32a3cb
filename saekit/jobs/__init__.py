"""Durable jobs: submit a spec, run it here or in a detached worker, re-attach from any process.

Layers register their job kinds with ``@job_kind("name", spec=ASpecClass)``; ``submit(kind, spec)`` returns a
``Job``.
Calling the package lists the jobs: ``saekit.jobs()`` is ``sk.jobs()``.
"""

from saekit._modules import make_callable
from saekit.jobs.context import JobContext
from saekit.jobs.job import Job, get_job, submit
from saekit.jobs.kinds import job_kind, kinds
from saekit.jobs.spec import JobSpec, spec_field
from saekit.jobs.table import JobTable, list_jobs

__all__ = ["Job", "JobContext", "JobSpec", "JobTable", "get_job", "job_kind", "kinds", "list_jobs", "spec_field",
           "submit"]

make_callable(__name__, list_jobs)
