"""Registry and event-log benchmark; prints JSON.

    python benchmarks/registry.py [--jobs 10000] [--quick]
    python benchmarks/registry.py --history [--runs 1000] [--quick]

- registry operation latency (p50/p99, ms), alone and under contention: 8 processes each making 50
  registry writes (job creations and state changes) while 2 processes list jobs in a loop, and 4
  workers append progress at 10 Hz while 4 readers tail their logs;
- the cost of one progress update (an event-log append) and of one incremental tail;
- the "active jobs" query and ``sk.jobs()`` with 10,000 jobs in the registry, including the open.

``--history`` is a workspace after a year of use: ``--runs`` finished training runs with 100 metric rows each
(20 logged steps x 5 metrics) and event logs of the usual shape (a heartbeat and a resource sample every 5 s),
plus one run with 1M metric rows. It reports p50/p99 ms of ``job.metrics()`` of one run and of the big one,
``sk.compare`` of 100 runs, ``sk.jobs()``, the dashboard's first poll, ``sk.runs("train")`` and the retention
plan (``saekit gc`` without ``--delete``).

``contention()`` is also what tests/jobs/test_contention.py runs: it returns every acknowledged write
so the test can check that each one is in the registry afterwards.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from saekit import registry
from saekit.jobs.context import JobContext
from saekit.jobs.events import EventTail, EventWriter
from saekit.workspace import Workspace


def _pcts(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return {"n": len(values), "p50_ms": round(statistics.median(ordered), 4), "p99_ms": round(p99, 4),
            "max_ms": round(ordered[-1], 4)}


def _emit(**record) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def _wait_until(t0: float) -> None:
    if t0 > time.time():
        time.sleep(t0 - time.time())


def _timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, (time.perf_counter() - t) * 1e3


def _create(ws: Workspace, key: str):
    return registry.submit_job(ws, new_id=f"job-{key}", kind="bench", key=key, name=None, spec="{}",
                               entry="benchmarks", force=False, launcher="background",
                               worker_pid=os.getpid())


# -- helper processes (python registry.py --role ROLE JSON) -------------------------------------------

def role_writer(a: dict) -> None:
    """Create jobs and move each queued -> running: `writes` registry writes, each acknowledged on stdout."""
    ws = Workspace(a["ws"])
    _wait_until(a["at"])
    for i in range(a["writes"] // 2):
        (row, outcome), ms = _timed(_create, ws, f"w{a['writer']}-{i}")
        _emit(op="create", id=row.id, outcome=outcome, ms=ms)
        moved, ms = _timed(registry.transition, ws, row.id, row.attempt, ("queued",), "running",
                           worker_host="bench-host")
        _emit(op="transition", id=row.id, ok=moved is not None, ms=ms)


def role_reader(a: dict) -> None:
    """`reads` listings (a count, not a deadline: a busy machine slows the readers, it does not skip them)."""
    ws = Workspace(a["ws"])
    _wait_until(a["at"])
    for _ in range(a["reads"]):
        _, ms = _timed(registry.list_jobs, ws, status="running")
        _emit(op="list", ms=ms)


def role_appender(a: dict) -> None:
    writer = EventWriter(Path(a["path"]))
    _wait_until(a["at"])
    for i in range(a["n"]):
        _, ms = _timed(writer.write, {"t": "progress", "done": i + 1, "total": a["n"], "pad": "x" * (i % 64)})
        _emit(op="append", ms=ms)
        time.sleep(1.0 / a["hz"])
    writer.close()


def role_tailer(a: dict) -> None:
    tail = EventTail(Path(a["path"]))
    seen: list[int] = []
    deadline = time.time() + a["timeout"]
    while len(seen) < a["n"] and time.time() < deadline:
        records, ms = _timed(tail.read)
        _emit(op="tail", ms=ms, got=len(records))
        seen += [r["done"] for r in records]
        time.sleep(0.01)
    _emit(op="seen", done=seen)


ROLES = {"writer": role_writer, "reader": role_reader, "appender": role_appender, "tailer": role_tailer}


def _spawn(role: str, **args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--role", role, json.dumps(args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# -- the contention workload ---------------------------------------------------------------------------

def contention(ws_path: str, *, writers: int = 8, writes: int = 50, readers: int = 2, reads: int = 40,
               appenders: int = 4, tailers: int = 4, hz: float = 10.0, lines: int = 30) -> dict:
    """Run the contention workload; returns latencies, acknowledged writes and any error output."""
    ws = Workspace(ws_path)
    registry.list_jobs(ws)  # create the registry before the clock starts
    logs = Path(ws_path) / "bench-logs"
    logs.mkdir(parents=True, exist_ok=True)
    at = time.time() + 1.5
    until = at + (lines / hz) + 2.0
    procs = [_spawn("writer", ws=ws_path, writer=w, writes=writes, at=at) for w in range(writers)]
    procs += [_spawn("reader", ws=ws_path, at=at, reads=reads) for _ in range(readers)]
    paths = [str(logs / f"log{i}.jsonl") for i in range(appenders)]
    procs += [_spawn("appender", path=p, n=lines, hz=hz, at=at) for p in paths]
    procs += [_spawn("tailer", path=paths[i % appenders], n=lines, timeout=until - time.time() + 30)
              for i in range(tailers)]
    records, errors = [], []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        if proc.returncode != 0 or "Error" in err:
            errors.append(err.strip()[-2000:] or f"exit code {proc.returncode}")
        records += [json.loads(line) for line in out.splitlines() if line.strip()]
    ops: dict[str, list[float]] = {}
    for r in records:
        if "ms" in r:
            ops.setdefault(r["op"], []).append(r["ms"])
    acked_creates = [r["id"] for r in records if r["op"] == "create"]
    acked_transitions = [r["id"] for r in records if r["op"] == "transition" and r["ok"]]
    seen = [r["done"] for r in records if r["op"] == "seen"]
    return {
        "latency": {op: _pcts(values) for op, values in sorted(ops.items())},
        "acked_creates": acked_creates,
        "acked_transitions": acked_transitions,
        "tails_seen": seen,
        "errors": errors,
        "lines": lines,
    }


# -- single-process measurements -----------------------------------------------------------------------

def alone(ws: Workspace, n: int = 50) -> dict:
    times: dict[str, list[float]] = {"create": [], "transition": [], "get": [], "list": []}
    for i in range(n):
        (row, _), ms = _timed(_create, ws, f"alone-{i}")
        times["create"].append(ms)
        _, ms = _timed(registry.transition, ws, row.id, 1, ("queued",), "running")
        times["transition"].append(ms)
        _, ms = _timed(registry.get_job, ws, row.id)
        times["get"].append(ms)
        _, ms = _timed(registry.list_jobs, ws)
        times["list"].append(ms)
    return {op: _pcts(v) for op, v in times.items()}


def event_log_costs(tmp: Path, n: int = 20000) -> dict:
    path = tmp / "events.jsonl"
    writer = EventWriter(path)
    record = {"t": "progress", "done": 1, "total": 100, "unit": "tokens", "phase": "extracting"}
    t = time.perf_counter()
    for i in range(n):
        writer.write({**record, "done": i})
    append_ms = (time.perf_counter() - t) * 1e3 / n
    ctx = JobContext(Workspace(tmp / "ws"), "bench", 1, {}, writer=writer)
    t = time.perf_counter()
    for i in range(n):
        ctx.progress(i, n, unit="tokens", phase="extracting")  # throttled to 10 lines/s, checks the cancel flag
    ctx_ms = (time.perf_counter() - t) * 1e3 / n
    tail = EventTail(path)
    t = time.perf_counter()
    tail.read()
    first_ms = (time.perf_counter() - t) * 1e3
    idle = []
    for _ in range(1000):
        _, ms = _timed(tail.read)
        idle.append(ms)
    one = []
    for i in range(1000):
        writer.write({**record, "done": i})
        _, ms = _timed(tail.read)
        one.append(ms)
    writer.close()
    return {"append_ms": round(append_ms, 5), "ctx_progress_call_ms": round(ctx_ms, 5),
            "tail_nothing_new": _pcts(idle), "tail_one_new_line": _pcts(one),
            f"tail_first_read_of_{n}_lines_ms": round(first_ms, 3)}


def many_jobs(ws: Workspace, n_jobs: int, n_active: int = 20, repeats: int = 15) -> dict:
    import saekit as sk
    from saekit.registry._db import transaction

    now = registry.utcnow()
    with transaction(ws, write=True) as tx:
        tx.execute(
            """INSERT INTO jobs (id, kind, key, active_key, status, spec, entry, attempt, created_at, queued_at,
                                 finished_at)
               SELECT 'many-' || i, 'bench', 'key-' || i, NULL,
                      CASE WHEN i % 10 = 0 THEN 'failed' ELSE 'completed' END, '{"i": ' || i || '}', 'benchmarks',
                      1, ?::TIMESTAMP - to_seconds(i), ?::TIMESTAMP, ?::TIMESTAMP
               FROM range(?) t(i)""",
            [now, now, now, n_jobs - n_active],
        )
    for i in range(n_active):  # active jobs with a live lease: this process holds them
        _create(ws, f"active-{i}")
    from saekit.jobs.lease import Lease

    leases = []
    for row in registry.list_jobs(ws, status="queued"):
        lease = Lease(ws.job_dir(row.id))
        lease.acquire(1)
        leases.append(lease)
    active, listing = [], []
    for _ in range(repeats):
        _, ms = _timed(registry.list_jobs, ws, status=registry.ACTIVE_STATES)
        active.append(ms)
        table, ms = _timed(sk.jobs, workspace=ws)
        listing.append(ms)
    for lease in leases:
        lease.release()
    assert len(table) == n_jobs, len(table)
    return {"jobs": n_jobs, "active": n_active, "active_query": _pcts(active), "sk_jobs": _pcts(listing)}


TRAIN_SPEC = {"source": {"store": {"id": "extract-0000", "location": "WS/activations/extract-0000.zarr"}},
              "hook_point": "blocks.6.resid_post", "eval_model": None,
              "saes": [{"arch": "topk", "d_in": 576, "d_sae": 4608, "k": 32, "aux_k": None, "aux_k_coefficient": 0.03125,
                        "expansion_factor": None, "normalize_decoder": True, "b_dec_init": "geometric_median",
                        "encoder_dtype": "float32"}],
              "train": {"total_tokens": 1_000_000, "batch_size": 4096, "lr": None, "lr_warmup": 0.01, "lr_decay": "linear",
                        "lr_decay_fraction": 0.2, "l1_warmup": 0.05, "adam_betas": [0.9, 0.999], "adam_eps": 1e-8,
                        "dead_after_tokens": 10_000_000, "normalize_activations": "expected_norm", "log_every": 50,
                        "checkpoint_every": 1000, "keep_checkpoints": 2, "eval_tokens": 65536, "ce_eval_tokens": 8192,
                        "seed": 0, "device": "auto", "shuffle_buffer_bytes": 268435456, "preload": None}}
METRIC_NAMES = ("loss", "fvu", "l0", "dead_fraction", "lr")


def _history_workspace(ws: Workspace, runs: int, big_rows: int, steps: int = 20) -> list[str]:
    """``runs`` completed training runs written as saekit writes them (registry rows, compacted metrics, event
    logs), plus one run of ``big_rows`` metric rows; returns the ids, oldest first."""
    from saekit.eventlog import EventWriter
    from saekit.registry._db import transaction

    ws.dir("jobs")
    registry.list_jobs(ws)  # the registry exists before the logs do (else it would be rebuilt from them)
    now = time.time()
    ids = [f"train-{i:08x}" for i in range(runs)] + ["train-big"]
    specs, results = [], []
    for i, job_id in enumerate(ids):
        spec = json.loads(json.dumps(TRAIN_SPEC).replace("WS", str(ws.path)))
        spec["saes"][0]["k"] = [16, 32, 64, 128][i % 4]
        spec["train"]["lr"] = [1e-4, 3e-4, 1e-3][i % 3]
        specs.append(spec)
        results.append({"saes": [{"path": f"{ws.path}/saes/{job_id}/final", "eval": {"fvu": 0.1 + (i % 7) / 100}}],
                        "steps": 244, "tokens": 1_000_000, "hook_point": "blocks.6.resid_post"})
        ended = now - (runs - i) * 3600  # one run an hour, for 1000 hours
        writer = EventWriter(ws.job_dir(job_id) / "events.jsonl")
        writer.write({"t": "submit", "attempt": 1, "kind": "train", "key": f"key-{job_id}", "name": None,
                      "spec": spec, "entry": "saekit.sae.training", "launcher": "background",
                      "created_at": ended - 120, "time": ended - 120})
        writer.write({"t": "start", "attempt": 1, "pid": 1000 + i, "host": "bench", "time": ended - 119})
        for n in range(24):  # two minutes of a worker's life: heartbeats, resource samples, progress
            writer.write({"t": "heartbeat", "time": ended - 118 + 5 * n})
            writer.write({"t": "resources", "cpu_percent": 180.0, "rss": 2**30, "gpu_memory": None, "gpu_utilization": None,
                          "gpus": [], "time": ended - 118 + 5 * n})
            writer.write({"t": "progress", "done": n * 10, "total": 244, "unit": "steps", "phase": "training",
                          "time": ended - 118 + 5 * n})
        for step in range(steps if job_id != "train-big" else 0):
            writer.write({"t": "metric", "step": step * 12, "values": {m: 1.0 / (step + 1) for m in METRIC_NAMES},
                          "time": ended - 100 + step})
        writer.write({"t": "end", "attempt": 1, "status": "completed", "result": results[-1], "error_type": None,
                      "error_message": None, "suggestion": None, "time": ended})
        writer.close()
    with transaction(ws, write=True) as tx:
        for i, job_id in enumerate(ids):
            ended = registry.utcnow() - dt.timedelta(hours=runs - i)
            tx.execute("""INSERT INTO jobs (id, kind, key, active_key, status, spec, entry, result, attempt, launcher,
                                            created_at, queued_at, started_at, finished_at)
                          VALUES (?, 'train', ?, NULL, 'completed', ?, 'saekit.sae.training', ?, 1, 'background', ?, ?, ?, ?)""",
                       [job_id, f"key-{job_id}", json.dumps(specs[i]), json.dumps(results[i]), ended, ended, ended, ended])
        tx.execute("""INSERT INTO metrics SELECT 'train-' || lpad(printf('%x', r), 8, '0'), s * 12, n, 1.0 / (s + 1)
                      FROM range(?) a(r), range(?) b(s), unnest(?::VARCHAR[]) c(n)""", [runs, steps, list(METRIC_NAMES)])
        tx.execute("""INSERT INTO metrics SELECT 'train-big', s, n, 1.0 / (s + 1)
                      FROM range(?) b(s), unnest(?::VARCHAR[]) c(n)""", [big_rows // len(METRIC_NAMES), list(METRIC_NAMES)])
    return ids


def _repeat(fn, n: int) -> dict:
    times = []
    for _ in range(n):
        _, ms = _timed(fn)
        times.append(ms)
    return _pcts(times)


def history(root: Path, runs: int, big_rows: int, repeats: int) -> dict:
    import random

    import saekit as sk
    from saekit.widgets.dashboard import Dashboard
    from saekit.widgets.poller import Poller

    from widgets import SerializingComm

    SerializingComm.install()
    ws = Workspace(root / "history")
    t0 = time.perf_counter()
    ids = _history_workspace(ws, runs, big_rows)
    built_s = time.perf_counter() - t0
    rng = random.Random(0)
    out = {"runs": runs, "metric_rows_per_run": 100, "big_run_rows": big_rows, "build_s": round(built_s, 1),
           "event_logs_mib": round(sum(p.stat().st_size for p in ws.path.glob("jobs/*/events.jsonl")) / 2**20, 1),
           "registry_mib": round(ws.registry_path.stat().st_size / 2**20, 1)}
    _, out["job_metrics_first_call_ms"] = _timed(lambda: sk.job(ids[0], workspace=ws).metrics())  # imports pandas
    one = iter([rng.choice(ids[:-1]) for _ in range(repeats * 4)])
    out["job_metrics_one_run"] = _repeat(lambda: sk.job(next(one), workspace=ws).metrics(), repeats * 4)
    out["job_metrics_1M_row_run"] = _repeat(lambda: sk.job("train-big", workspace=ws).metrics(), max(3, repeats // 4))
    hundred = ids[-101:-1]
    out["compare_100_runs"] = _repeat(lambda: sk.compare(hundred, "fvu", workspace=ws), max(3, repeats // 2))
    out["sk_jobs"] = _repeat(lambda: sk.jobs(workspace=ws), repeats)
    out["dashboard_first_poll"] = _repeat(lambda: Dashboard(workspace=ws, poller=Poller()).close(), max(3, repeats // 2))
    if hasattr(sk, "runs"):  # (absent before this case was written: the script also runs against older saekit)
        table = sk.runs("train", workspace=ws)
        assert len(table) == runs + 1 and "fvu" in table, table.columns
        out["sk_runs_train"] = _repeat(lambda: sk.runs("train", workspace=ws), max(3, repeats // 4))
        from saekit.jobs.retention import collect

        out["gc_plan"] = _repeat(lambda: collect(ws), 3)
        out["gc_plan_would_free_mib"] = round(collect(ws, {"events_days": 0}).bytes / 2**20, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--role", choices=sorted(ROLES))
    parser.add_argument("args", nargs="?")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke test of this script)")
    parser.add_argument("--history", action="store_true", help="a workspace with a long history (see above)")
    parser.add_argument("--runs", type=int, default=1000, help="finished runs in the --history workspace")
    opts = parser.parse_args()
    if opts.role:
        ROLES[opts.role](json.loads(opts.args))
        return
    if opts.history:
        with tempfile.TemporaryDirectory() as tmp:
            runs = min(opts.runs, 100) if opts.quick else opts.runs
            print(json.dumps(history(Path(tmp), runs, 10_000 if opts.quick else 1_000_000, 5 if opts.quick else 20),
                             indent=2))
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        out = {"alone": alone(Workspace(tmp / "alone"), n=10 if opts.quick else 50)}
        result = contention(str(tmp / "contention"), writes=10 if opts.quick else 50,
                            lines=10 if opts.quick else 30)
        missing = set(result["acked_creates"]) - {r.id for r in registry.list_jobs(Workspace(tmp / "contention"))}
        out["contention"] = {"latency": result["latency"], "errors": result["errors"],
                             "acknowledged_writes": len(result["acked_creates"]) + len(result["acked_transitions"]),
                             "acknowledged_but_missing": len(missing)}
        out["event_log"] = event_log_costs(tmp, n=2000 if opts.quick else 20000)
        out["many_jobs"] = many_jobs(Workspace(tmp / "many"), 1000 if opts.quick else opts.jobs)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
