"""Operations on a workspace with a history: the run table (``sk.runs``), retention (``saekit gc``) under the
strictest policy over 200 jobs of every kind, export/import across two workspaces in different folders, and a
registry backup taken while a job runs. Real pipelines on the tiny model, real CLI processes."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import saekit as sk
from saekit import registry
from saekit.config import config
from saekit.errors import ConfigError, JobStateError
from saekit.eventlog import read_all
from saekit.jobs.retention import collect

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "features"))
from data_for_tests import quick  # noqa: E402
from planted import HOOK, PLANTED, planted_analysis  # noqa: E402

N_JOBS = 200


def _cli(ws, *args, timeout=240):
    return subprocess.run([sys.executable, "-m", "saekit.cli", "--workspace", str(ws.path), *args],
                          capture_output=True, text=True, timeout=timeout)


def _disk(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def history(tmp_path_factory, tiny_model_dir, docs_file):
    """A workspace with N_JOBS jobs: the whole pipeline (tokenize, extract, a 2-SAE sweep, a single run, analyze,
    labels), counts in the foreground and in background workers, failed, resumable and cancelled jobs."""
    home = tmp_path_factory.mktemp("home")
    ws = sk.Workspace(tmp_path_factory.mktemp("history") / "ws")
    feats, _ = planted_analysis(ws, tiny_model_dir, docs_file)
    feats.label(PLANTED, "the planted token")
    store = sk.activation_stores(workspace=ws)[0]
    sweep = sk.train(store, HOOK, [sk.SAEConfig(arch="topk", d_sae=32, k=4), sk.SAEConfig(arch="relu", d_sae=32)],
                     quick(total_tokens=6000, batch_size=250, eval_tokens=1000), background=False, progress=False,
                     workspace=ws)
    single = sk.train(store, HOOK, sk.SAEConfig(arch="topk", d_sae=32, k=8), quick(total_tokens=6000, batch_size=250,
                      eval_tokens=1000), background=False, progress=False, workspace=ws)
    of_run = sk.analyze(single, store, n_tokens=500, background=False, progress=False, workspace=ws)  # a job's SAE
    # a checkpoint left beside final/ (a kill between the end and the cleanup)
    shutil.copytree(ws.path / "saes" / single.id / "final", ws.path / "saes" / single.id / "step_00000005")
    background = [sk.submit("count", {"n": 20, "tag": f"bg{i}"}, workspace=ws) for i in range(2)]
    failed = sk.submit("count", {"n": 30, "fail_at": 25, "commit_every": 10}, background=False, progress=False,
                       workspace=ws)
    with pytest.raises(sk.JobFailedError):
        failed.result()
    secret = f"cannot read {home}/private/data.txt"
    boom = sk.submit("boom", {"message": secret}, background=False, progress=False, workspace=ws)
    for job in background:
        job.wait(timeout=120, progress=False)
    cancelled = registry.submit_job(ws, new_id="count-cancelled", kind="count", key="never-ran", name=None,
                                    spec='{"n": 1}', entry="kinds_for_tests", force=False, launcher="background",
                                    worker_pid=os.getpid())[0]
    registry.request_cancel(ws, cancelled.id)
    with config.set(heartbeat=0.002):  # a long job's log is mostly heartbeats and resource samples
        for i in range(N_JOBS - len(registry.list_jobs(ws))):
            sk.submit("count", {"n": 8 + i % 5, "tag": i, "delay": 0.002}, background=False, progress=False,
                      workspace=ws)
    assert len(registry.list_jobs(ws)) == N_JOBS
    return {"ws": ws, "feats": feats, "sweep": sweep, "single": single, "of_run": of_run, "failed": failed, "boom": boom,
            "home": home, "secret": secret}


def _snapshot(ws):
    """What every completed job gives back: the type of its result and its metrics. Jobs with files (stores, SAEs,
    analyses, labels) are loaded through their handles; the ~190 counts, whose results and metrics live only in
    the registry, through the same reads batched (one registry open each, instead of ~4 per job)."""
    out, counts = {}, []
    for row in registry.list_jobs(ws, status="completed"):
        if row.kind == "count":
            counts.append(row.id)
            continue
        job = sk.Job(row.id, ws, _row=row)
        out[job.id] = (type(job.result()).__name__, job.metrics().to_json())  # (JSON: NaN equals NaN)
    metrics = registry.metric_frame(ws, counts)
    for row in registry.get_jobs(ws, counts):
        mine = metrics[metrics["job_id"] == row.id].pivot(index="step", columns="name", values="value")
        out[row.id] = (type(row.result_value).__name__, mine.to_json())
    return out


@pytest.mark.heavy  # the history fixture: the whole pipeline, about 35 s
def test_runs_is_a_table_of_configs_and_final_metrics(history):
    ws, sweep, single = history["ws"], history["sweep"], history["single"]
    table = sk.runs("train", workspace=ws)
    assert len(table) == 3  # two SAEs of the sweep, one of the single run
    sweep_rows = table[table["id"] == sweep.id].sort_values("sae")
    assert list(sweep_rows["arch"]) == ["topk", "relu"] and list(sweep_rows["sae"]) == [0, 1]
    finals = sweep.metrics().ffill().iloc[-1]
    assert sweep_rows["fvu"].tolist() == pytest.approx([finals["sae0/fvu"], finals["sae1/fvu"]])
    assert sweep_rows["eval_fvu"].tolist() == pytest.approx([s.metadata["eval"]["fvu"] for s in sweep.result()])
    one = table[table["id"] == single.id].iloc[0]
    assert one["k"] == 8 and one["fvu"] == pytest.approx(single.metrics()["fvu"].dropna().iloc[-1])
    assert one["eval_fvu"] == pytest.approx(single.result().metadata["eval"]["fvu"])
    assert {"total_tokens", "batch_size", "d_sae", "hook_point", "finished_at"} <= set(table.columns)
    assert "eval_tokens" in table and "train.eval_tokens" in table  # a metric and a config field of one name
    # filters: a value, a list of values, a function
    assert set(sk.runs("train", arch="relu", workspace=ws)["id"]) == {sweep.id}
    assert len(sk.runs("train", arch=["topk", "relu"], workspace=ws)) == 3
    assert len(sk.runs("train", fvu=lambda v: v <= table["fvu"].min(), workspace=ws)) == 1
    with pytest.raises(ConfigError, match="no column 'nope'"):
        sk.runs("train", nope=1, workspace=ws)
    everything = sk.runs(status=None, workspace=ws)
    assert len(everything) == N_JOBS + 1 and set(everything["status"]) == {"completed", "failed", "cancelled"}
    assert sk.runs("no-such-kind", workspace=ws).empty


@pytest.mark.heavy  # the history fixture: the whole pipeline, about 35 s
def test_export_and_import_across_two_workspaces(history, tmp_path, monkeypatch):
    ws, feats, sweep, boom = history["ws"], history["feats"], history["sweep"], history["boom"]
    monkeypatch.setenv("HOME", str(history["home"]))
    bundle = sk.export([feats.id, sweep.id, boom.id], tmp_path / "bundle.tar.gz", workspace=ws)
    folder = sk.export([sweep.id], tmp_path / "folder", inputs=False, workspace=ws)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [r["id"] for r in manifest["jobs"]] == [sweep.id]
    text = "\n".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.suffix in (".json", ".jsonl"))
    assert str(ws.path) not in text and "${WORKSPACE}" in text
    with pytest.raises(ConfigError, match="exists; give a new folder"):
        sk.export([sweep.id], folder, workspace=ws)
    with pytest.raises(ConfigError, match="no bundle at"):
        sk.import_jobs(tmp_path / "nowhere", workspace=ws)
    of_run = sk.export([history["of_run"].id], tmp_path / "of-run", workspace=ws)  # an analysis names its run's SAE
    exported = {r["id"] for r in json.loads((of_run / "manifest.json").read_text())["jobs"]}
    assert history["single"].id in exported and len(exported) == 4  # with its run, store and tokens
    with pytest.raises(JobStateError, match="not finished|finished"):
        queued = registry.submit_job(ws, new_id="count-queued", kind="count", key="q", name=None, spec='{"n": 1}',
                                     entry="x", force=False, launcher="background", worker_pid=os.getpid())[0]
        try:
            sk.export([queued.id], tmp_path / "nope", workspace=ws)
        finally:
            registry.request_cancel(ws, queued.id)
            registry.delete_job(ws, queued.id)

    other = sk.Workspace(tmp_path / "elsewhere" / "second")  # a different folder, as on another machine
    imported = sk.import_jobs(bundle, workspace=other)
    kinds = {sk.job(i, workspace=other).kind for i in imported}
    assert kinds == {"tokenize", "extract", "analyze", "train", "boom"}  # the inputs came along
    f2 = sk.job(feats.id, workspace=other).result()
    assert f2[PLANTED].label == "the planted token" and f2[PLANTED].label_source == "user"
    assert f2.to_pandas()["count"].tolist() == feats.to_pandas()["count"].tolist()
    assert str(f2.sae().saved_folder()).startswith(str(other.path))
    saes = sk.job(sweep.id, workspace=other).result()
    assert [str(s.saved_folder()).startswith(str(other.path)) for s in saes] == [True, True]
    assert sk.job(sweep.id, workspace=other).metrics().equals(sweep.metrics())
    store = sk.job(sk.activation_stores(workspace=ws)[0].id, workspace=other).result()
    assert store[HOOK][:5].tolist() == sk.activation_stores(workspace=ws)[0][HOOK][:5].tolist()
    failed = sk.job(boom.id, workspace=other)
    assert failed.status == "failed" and str(history["home"]) not in failed.info()["error_message"]
    assert "~/private/data.txt" in failed.info()["error_message"]
    def messages(workspace):  # what the log says happened (its spec is the job's input, kept as given)
        return json.dumps([r for r in read_all(workspace.job_dir(boom.id) / "events.jsonl") if r["t"] in ("event", "end")])

    assert str(history["home"]) not in messages(other) and "~/private" in messages(other)
    assert str(history["home"]) in messages(ws)  # the source keeps it whole

    before = len(registry.list_jobs(other))
    with pytest.raises(JobStateError, match="exist in"):
        sk.import_jobs(bundle, workspace=other)
    assert len(registry.list_jobs(other)) == before
    result = _cli(other, "jobs")
    assert result.returncode == 0 and sweep.id in result.stdout
    third = sk.Workspace(tmp_path / "third")
    cli = _cli(third, "import", str(folder))
    assert cli.returncode == 0 and f"imported 1 job(s): {sweep.id}" in cli.stdout
    assert len(sk.job(sweep.id, workspace=third).result()) == 2


@pytest.mark.heavy  # the history fixture: the whole pipeline, about 35 s
def test_backup_while_a_job_runs(history, tmp_path):
    ws = sk.Workspace(tmp_path / "busy")
    gate = tmp_path / "gate"
    job = sk.submit("count", {"n": 50, "gate": str(gate)}, workspace=ws)
    deadline = time.monotonic() + 120
    while not job.progress and time.monotonic() < deadline:  # until it runs and has written progress
        time.sleep(0.05)
    assert job.status == "running"
    result = _cli(ws, "backup", "--to", str(tmp_path / "copy.duckdb"))
    assert result.returncode == 0, result.stderr
    gate.touch()
    job.wait(timeout=120, progress=False)
    copy = sk.Workspace(tmp_path / "restored")
    copy.path.mkdir()
    shutil.copy(tmp_path / "copy.duckdb", copy.registry_path)
    rows = registry.list_jobs(copy)
    assert [(r.id, r.status) for r in rows] == [(job.id, "running")]  # the state at the time of the copy
    again = _cli(ws, "backup", "--to", str(tmp_path / "copy.duckdb"))
    assert again.returncode == 2 and "exists; choose a new file name" in again.stderr


@pytest.mark.heavy  # the history fixture: the whole pipeline, about 35 s
def test_retention_strictest_policy_keeps_every_result_and_metric(history, capsys):
    ws = history["ws"]  # (the last test of this module to use it: it compacts the workspace in place)
    before = _snapshot(ws)
    assert len(before) == N_JOBS - 3  # all but the failed, the boom and the cancelled ones
    metrics_before = registry.metric_frame(ws, list(before))
    disk_before, logs_before = _disk(ws.path), _disk(ws.path / "jobs")
    assert list(ws.path.glob("logs/*.log")) and list(ws.path.glob("saes/*/step_*"))

    dry = _cli(ws, "gc", "--events-days", "0", "--reduce-events-days", "0", "--worker-logs-days", "0")
    assert dry.returncode == 0, dry.stderr
    assert "would free" in dry.stdout and "reduce log" in dry.stdout and _disk(ws.path) == disk_before
    freed = _cli(ws, "gc", "--delete", "--events-days", "0", "--reduce-events-days", "0", "--worker-logs-days", "0")
    assert freed.returncode == 0, freed.stderr
    disk_after, logs_after = _disk(ws.path), _disk(ws.path / "jobs")
    with capsys.disabled():
        print(f"\n[retention] {N_JOBS} jobs: workspace {disk_before:,} -> {disk_after:,} bytes, of which event logs "
              f"{logs_before:,} -> {logs_after:,} (the rest is stores, SAEs and analyses, all kept); "
              f"{freed.stdout.strip().splitlines()[-1]}")
    assert disk_after < disk_before and logs_after < 0.5 * logs_before
    assert not list(ws.path.glob("logs/*.log")) and not list(ws.path.glob("saes/*/step_*"))
    assert _snapshot(ws) == before
    assert collect(ws, sk.RetentionPolicy.strictest()).items == []  # nothing left to free: a second run is a no-op
    # the reduced logs still rebuild the registry, metrics included (from metrics.parquet where they moved)
    registry.rebuild_registry(ws)
    assert registry.metric_frame(ws, list(before)).equals(metrics_before)
    assert {r.id for r in registry.list_jobs(ws, status="completed")} == set(before)
    # and the failed job still resumes from its last commit
    failed = sk.job(history["failed"].id, workspace=ws)
    failed.resume(background=False)
    assert failed.wait(timeout=60, progress=False).status == "completed" and failed.result()["started_from"] == 20


def test_retention_policy_lives_in_the_workspace_with_environment_overrides(tmp_path, monkeypatch):
    ws = sk.Workspace(tmp_path / "ws")
    assert ws.retention() == sk.RetentionPolicy()  # the defaults: 90 days of full logs, 30 of worker logs
    assert ws.retention(events_days=30, worker_logs_days=None).events_days == 30
    assert json.loads(ws.config_path.read_text())["retention"]["worker_logs_days"] is None
    assert sk.Workspace(ws.path).retention().events_days == 30  # saved
    monkeypatch.setenv("SAEKIT_RETENTION_EVENTS_DAYS", "7")
    monkeypatch.setenv("SAEKIT_RETENTION_CHECKPOINTS", "false")
    assert (ws.retention().events_days, ws.retention().checkpoints) == (7, False)
    monkeypatch.setenv("SAEKIT_RETENTION_EVENTS_DAYS", "soon")
    with pytest.raises(ConfigError, match="SAEKIT_RETENTION_EVENTS_DAYS"):
        ws.retention()
    with pytest.raises(ConfigError, match="unknown retention"):
        ws.retention(days=3)
    with pytest.raises(ConfigError, match="events_days=-1"):
        sk.RetentionPolicy(events_days=-1)
    with pytest.raises(ConfigError, match="policy="):
        collect(ws, policy=3)


def test_retention_ages_count_from_the_end_and_compacting_keeps_metrics_in_the_log(ws):
    import datetime as dt

    job = sk.submit("count", {"n": 40}, background=False, progress=False)
    log = read_all(ws.job_dir(job.id) / "events.jsonl")
    young = collect(ws, {"events_days": 1})
    assert young.items == []
    later = registry.utcnow() + dt.timedelta(days=2)
    plan = collect(ws, {"events_days": 1}, now=later)
    assert [i.action for i in plan.items] == ["compact log"] and "compact log" in repr(plan)
    plan.apply()
    kept = read_all(ws.job_dir(job.id) / "events.jsonl")
    assert [r for r in kept if r["t"] == "metric"] == [r for r in log if r["t"] == "metric"]
    assert sum(r["t"] == "progress" for r in kept) == 1 and kept[-1]["t"] == "compacted"
    assert collect(ws, {"events_days": 1}, now=later).items == []
    assert job.metrics()["value"].tolist() == [float(i) for i in range(40)]
