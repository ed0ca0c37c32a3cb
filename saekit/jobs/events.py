"""The job's event log (``jobs/<id>/events.jsonl``); it lives in ``saekit.eventlog``, below the registry,
which rebuilds its catalog from these logs."""

from saekit.eventlog import EventTail, EventWriter, LogState, events_path, read_all, read_last

__all__ = ["EventTail", "EventWriter", "LogState", "events_path", "read_all", "read_last"]
