"""The skeleton of a resumable job that writes an output in steps (a token store, an activation store,
an analysis): start it anew or reopen it from the resume point, commit on a timer and when cancelled,
and finish without a moment at which a kill leaves it unresumable.

    out = ResumableOutput(ctx, exists=lambda: ..., owner=lambda: ..., commit_every=10.0)
    if out.fresh:  ... create the output ...          # no resume point, or the output is gone
    else:          ... reopen it from ctx.resume_point ...
    with out.committing(commit):                      # commit() records a resume point; run on cancel too
        for batch in work:
            ...
            out.tick()                                # commit() when commit_every seconds have passed
    ... finish; ctx.after_end(cleanup) for what only a resume would need ...
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator

from saekit.errors import JobCancelled, StorageError


class ResumableOutput:
    """One job's output and its commits (see the module docstring)."""

    def __init__(self, ctx, *, location: str, exists: Callable[[], bool], owner: Callable[[], str | None],
                 commit_every: float):
        self.ctx, self.location, self.commit_every = ctx, location, commit_every
        if exists():
            made_by = owner()
            if made_by != ctx.job_id:
                raise StorageError(f"{location!r} already holds output made by {made_by or 'something else'}; "
                                   "it is never overwritten: delete it or choose another location")
        self.fresh = ctx.resume_point is None or not exists()
        self.resume = None if self.fresh else ctx.resume_point
        self._commit: Callable[[], None] | None = None
        self._last = time.monotonic()

    def tick(self) -> None:
        """Commit when ``commit_every`` seconds have passed since the last commit."""
        if self._commit is not None and time.monotonic() - self._last > self.commit_every:
            self._commit()
            self._last = time.monotonic()

    @contextmanager
    def committing(self, commit: Callable[[], None]) -> Iterator["ResumableOutput"]:
        """Within the block ``tick()`` commits with ``commit``; a cancel commits once more (what was done
        is kept) before the job ends ``cancelled``."""
        self._commit, self._last = commit, time.monotonic()
        try:
            yield self
        except JobCancelled:
            commit()
            raise
        finally:
            self._commit = None
