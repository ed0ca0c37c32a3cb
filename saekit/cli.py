"""The ``saekit`` command: jobs, show, cancel, resume, delete, gc, export, import, backup, worker, join and demo."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import time

from saekit import registry
from saekit.errors import SaekitError
from saekit.jobs import get_job, list_jobs
from saekit.jobs.kinds import kind_hook
from saekit.jobs.events import LogState, read_all
from saekit.jobs.lifecycle import events_path, log_tail, refresh
from saekit.jobs.textbar import render_log
from saekit.workspace import Workspace


def _ws(args) -> Workspace:
    return Workspace(args.workspace)


def _bars(table) -> list[str]:
    """A live line per active job: bar, done/total, elapsed<ETA, rate and the latest metrics."""
    return [f"{job_id}  {render_log(read_all(events_path(table.workspace, job_id)), width=100)}"
            for job_id in table.active_ids]


def _listing(args, ws) -> str:
    table = list_jobs(kind=args.kind, status=args.status, workspace=ws, limit=args.limit)
    return "\n".join([repr(table), "", *_bars(table)]).rstrip()


def cmd_jobs(args) -> int:
    ws = _ws(args)
    if not args.watch:
        print(_listing(args, ws))
        return 0
    # Ctrl-C sets a flag checked between refreshes: DuckDB turns a SIGINT that lands inside a query into its
    # own exception, so a KeyboardInterrupt cannot be relied on to stop the loop
    stop = []
    previous = signal.signal(signal.SIGINT, lambda *_: stop.append(True))
    try:
        while not stop:
            text = _listing(args, ws)
            sys.stdout.write("\x1b[2J\x1b[H" + f"saekit jobs in {ws.path}  ({time.strftime('%H:%M:%S')}, Ctrl-C stops)\n\n"
                             + text + "\n")
            sys.stdout.flush()
            deadline = time.monotonic() + args.interval
            while not stop and time.monotonic() < deadline:
                time.sleep(min(0.05, args.interval))
    finally:
        signal.signal(signal.SIGINT, previous)
    return 0


def _indented(value) -> str:
    """JSON over several lines, indented under the field's name."""
    return json.dumps(value, sort_keys=True, indent=2).replace("\n", "\n           ")


def cmd_show(args) -> int:
    ws = _ws(args)
    job = get_job(args.job_id, ws)
    info = job.info()
    records = read_all(events_path(ws, job.id))
    state = LogState().update(records)
    print(f"job        {info['id']}  ({info['kind']}{', ' + info['name'] if info['name'] else ''})")
    print(f"status     {info['status']}  attempt {info['attempt']}")
    print(f"progress   {render_log(records, status=info['status'], width=100)}")
    for field in ("created_at", "started_at", "finished_at"):
        if info.get(field):
            print(f"{field:<10} {info[field]:%Y-%m-%d %H:%M:%S} UTC")
    if info.get("worker_pid"):
        print(f"worker     pid {info['worker_pid']} on {info['worker_host'] or '?'} ({info['launcher']})")
    print("spec       " + _indented(info["spec"]))
    if info.get("result") is not None:
        print("result     " + _indented(info["result"]))
    if info.get("error_type"):
        print(f"error      {info['error_type']}: {info['error_message']}")
        if info.get("suggestion"):
            print(f"suggestion {info['suggestion']}")
        if info.get("traceback"):
            print("traceback  " + info["traceback"].rstrip().replace("\n", "\n           "))
    last = {}
    for step, name, value in state.metric_rows():
        last[name] = (step, value)
    if last:
        print("metrics    " + ", ".join(f"{n}={v:.4g} (step {s})" for n, (s, v) in sorted(last.items())))
    judge = kind_hook(info["kind"], "health")
    if judge is not None:
        health = judge(state.metrics, info.get("result"))
        if health["level"] != "ok":
            print(f"health     {health['level']}: " + "; ".join(health["reasons"]))
    events = [r for r in records if r.get("t") == "event"][-args.events:]
    if events:
        print("events")
        for e in events:
            print(f"  {time.strftime('%H:%M:%S', time.localtime(e.get('time', 0)))} {e.get('level', 'info'):<7} "
                  f"{e.get('message')}")
    errors = [r for r in records if r.get("t") == "event" and (r.get("data") or {}).get("traceback")]
    if errors and info["status"] == "failed":
        print("traceback (last error)\n" + errors[-1]["data"]["traceback"].rstrip())
    tail = log_tail(ws, job.id)
    if tail and info["status"] != "completed":
        print(f"log        {ws.log_path(job.id)}\n" + "\n".join("  " + line for line in tail.splitlines()))
    return 0


def cmd_cancel(args) -> int:
    job = get_job(args.job_id, _ws(args)).cancel()
    if args.wait:
        job.wait(timeout=args.wait)
    print(f"{job.id}: {job.status}")
    return 0


def cmd_resume(args) -> int:
    job = get_job(args.job_id, _ws(args))
    job.resume(background=not args.here)
    print(f"{job.id}: {job.status} (attempt {job.attempt})")
    return 0


def cmd_delete(args) -> int:
    job = get_job(args.job_id, _ws(args))
    job.delete()
    print(f"deleted {job.id}")
    return 0


def cmd_gc(args) -> int:
    """Record the end of jobs whose workers are gone; plan (or, with --delete, free) what the retention policy
    and orphan files allow."""
    from saekit._fs import format_bytes
    from saekit.jobs.retention import collect

    ws = _ws(args)
    if args.rebuild:
        print(f"rebuilt {ws.registry_path} from the event logs: {registry.rebuild_registry(ws)}")
    reaped = 0
    for row in registry.list_jobs(ws, status=registry.ACTIVE_STATES):
        fresh = refresh(ws, row)
        if fresh.status != row.status:
            reaped += 1
            print(f"reaped {row.id}: {row.status} -> {fresh.status} ({fresh.error_type or ''})")
    changes = {name: getattr(args, name) for name in ("events_days", "reduce_events_days", "worker_logs_days")
               if getattr(args, name) is not None}
    if args.keep_checkpoints:
        changes["checkpoints"] = False
    policy = dataclasses.replace(ws.retention(), **changes)
    plan = collect(ws, policy)
    for line in plan.lines():
        print(line)
    print(f"policy: {', '.join(f'{k}={v}' for k, v in policy.to_dict().items())}")
    summary = ", ".join(f"{a}: {s['count']} ({format_bytes(s['bytes'])})" for a, s in plan.summary().items()) or "nothing to free"
    if args.delete:
        freed = plan.apply()
        print(f"{reaped} stale job(s) reaped; freed {format_bytes(sum(freed.values()))} ({summary})")
    else:
        print(f"{reaped} stale job(s) reaped; would free {format_bytes(plan.bytes)} ({summary}); --delete frees it")
    return 0


def cmd_export(args) -> int:
    from saekit.jobs.portable import export

    path = export(args.job_ids, args.to, inputs=not args.only, workspace=_ws(args))
    print(f"exported to {path}")
    return 0


def cmd_import(args) -> int:
    from saekit.jobs.portable import import_jobs

    ids = import_jobs(args.bundle, workspace=_ws(args))
    print(f"imported {len(ids)} job(s): {' '.join(ids)}")
    return 0


def cmd_backup(args) -> int:
    from saekit.registry.history import backup_registry

    ws = _ws(args)
    target = args.to or ws.path / "backups" / f"registry-{time.strftime('%Y%m%d-%H%M%S')}.duckdb"
    print(f"backed up {ws.registry_path} to {backup_registry(ws, target)}")
    return 0


def cmd_worker(args) -> int:
    from saekit.jobs.worker import main as worker_main

    return worker_main([args.job_id, "--workspace", str(_ws(args).path)])


def cmd_join(args) -> int:
    """Join this machine to a multi-node torchrun attempt of a job (blocks until this node's ranks end)."""
    import subprocess

    from saekit._trust import worker_environment
    from saekit.jobs.launchers import join_command

    command = join_command(_ws(args), args.job_id)
    print(" ".join(command), file=sys.stderr)
    return subprocess.run(command, env=worker_environment(dict(os.environ, PYTHONUNBUFFERED="1"))).returncode


def cmd_demo(args) -> int:
    from saekit.demo import run_demo

    return run_demo(workspace=args.workspace, max_documents=args.max_documents, max_tokens=args.max_tokens,
                    train_tokens=args.train_tokens)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="saekit", description="saekit: SAE interpretability with durable jobs")
    parser.add_argument("--workspace", "-w", default=None,
                        help="workspace folder (default: $SAEKIT_HOME, else ./saekit-workspace)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("jobs", help="list jobs")
    p.add_argument("--kind")
    p.add_argument("--status", choices=registry.JOB_STATES)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    p.add_argument("--interval", type=float, default=1.0)
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("show", help="one job in full")
    p.add_argument("job_id")
    p.add_argument("--events", type=int, default=10, help="how many recent events to print")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("cancel", help="cancel a job")
    p.add_argument("job_id")
    p.add_argument("--wait", type=float, default=None, metavar="SECONDS", help="wait for it to stop")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("resume", help="start a new attempt of a failed or cancelled job")
    p.add_argument("job_id")
    p.add_argument("--here", action="store_true", help="run in this process instead of a background worker")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("delete", help="delete a finished job and its files")
    p.add_argument("job_id")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("gc", help="reap jobs whose workers are gone; show (or free) what retention and orphans allow")
    p.add_argument("--delete", action="store_true", help="free it: compact logs, delete old worker logs, "
                                                          "leftover checkpoints and orphan files")
    p.add_argument("--events-days", type=float, help="compact event logs of jobs finished this many days ago")
    p.add_argument("--reduce-events-days", type=float,
                   help="reduce event logs to submit/start/end (metrics kept in metrics.parquet) after this many days")
    p.add_argument("--worker-logs-days", type=float, help="delete worker logs after this many days")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep leftover checkpoints of completed runs")
    p.add_argument("--rebuild", action="store_true",
                   help="move a damaged registry.duckdb aside and rebuild the job catalog from the event logs")
    p.set_defaults(func=cmd_gc)

    p = sub.add_parser("export", help="write finished jobs with their files into a bundle folder or .tar(.gz)")
    p.add_argument("job_ids", nargs="+")
    p.add_argument("--to", required=True, help="a new folder, or a file ending in .tar or .tar.gz")
    p.add_argument("--only", action="store_true", help="leave out the jobs they were made from")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="bring an exported bundle's jobs into this workspace")
    p.add_argument("bundle")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("backup", help="copy the registry consistently, also while jobs run")
    p.add_argument("--to", default=None, help="the copy's file name (default: <workspace>/backups/registry-<time>.duckdb)")
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser("worker", help="run a queued job in this process (what background workers do)")
    p.add_argument("job_id")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("join", help="run this machine's ranks of a multi-node job (submitted with nnodes > 1)")
    p.add_argument("job_id")
    p.set_defaults(func=cmd_join)

    p = sub.add_parser("demo", help="the whole pipeline on SmolLM2-135M, as far as it is built")
    p.add_argument("--max-documents", type=int, default=None, help="tokenize only this many documents")
    p.add_argument("--max-tokens", type=int, default=20_000, help="tokens of activations to extract")
    p.add_argument("--train-tokens", type=int, default=200_000, help="tokens the demo SAE trains on")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SaekitError as exc:
        print(f"saekit: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
