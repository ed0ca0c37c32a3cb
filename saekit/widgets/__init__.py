"""Live widgets (anywidget): a job's view, the system panel, the operations dashboard, run comparisons.

They only render what the registry, the jobs' event logs and the monitor say; one poller task on the
kernel's event loop keeps them current (``poller.py``).
"""
