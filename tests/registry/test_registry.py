import hashlib

import duckdb
import pytest

from saekit import registry
from saekit.errors import JobStateError, RegistryCorruptError, RegistryVersionError
from saekit.registry import schema
from saekit.registry._db import transaction


def _submit(ws, key, new_id=None, force=False):
    return registry.submit_job(ws, new_id=new_id or f"job-{key}-{force}", kind="count", key=key, name=None,
                               spec="{}", entry="kinds_for_tests", force=force,
                               launcher="inprocess", worker_pid=1)


def _active_key(ws, job_id):
    with transaction(ws) as tx:
        return tx.one("SELECT active_key FROM jobs WHERE id = ?", [job_id])["active_key"]


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_first_access_creates_schema(ws):
    assert registry.list_jobs(ws) == []
    con = duckdb.connect(str(ws.registry_path), read_only=True)
    try:
        version = con.execute("SELECT value FROM saekit_meta WHERE key='schema_version'").fetchone()[0]
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    finally:
        con.close()
    assert int(version) == schema.SCHEMA_VERSION
    assert {"jobs", "metrics", "saekit_meta"} <= tables


def test_one_active_job_per_key_and_outcomes(ws):
    row, outcome = _submit(ws, "k1")
    assert outcome == "created" and row.status == "queued" and _active_key(ws, row.id) == "k1"
    again, outcome = _submit(ws, "k1", new_id="other")
    assert outcome == "active" and again.id == row.id
    assert registry.transition(ws, row.id, 1, ("queued",), "running") is not None
    done = registry.finish_job(ws, row.id, 1, "completed", result='{"x": 1}', error_type=None,
                               error_message=None, suggestion=None, finished_at=registry.utcnow(),
                               metrics=[(0, "loss", 1.0), (1, "loss", 0.5)])
    assert done.status == "completed" and _active_key(ws, row.id) is None
    same, outcome = _submit(ws, "k1", new_id="third")
    assert outcome == "completed" and same.id == row.id
    forced, outcome = _submit(ws, "k1", new_id="forced", force=True)
    assert outcome == "created" and forced.id == "forced"
    assert registry.get_metrics(ws, row.id) == [(0, "loss", 1.0), (1, "loss", 0.5)]


def test_failed_key_starts_a_new_attempt_of_the_same_job(ws):
    row, _ = _submit(ws, "k2")
    registry.transition(ws, row.id, 1, ("queued",), "running")
    registry.finish_job(ws, row.id, 1, "failed", result=None, error_type="data", error_message="bad",
                        suggestion=None, finished_at=registry.utcnow())
    again, outcome = _submit(ws, "k2", new_id="unused")
    assert outcome == "resumed" and again.id == row.id and again.attempt == 2
    assert again.status == "queued" and again.error_type is None


def test_compare_and_set_refuses_wrong_state_and_attempt(ws):
    row, _ = _submit(ws, "k3")
    assert registry.transition(ws, row.id, 1, ("running",), "completed") is None
    assert registry.transition(ws, row.id, 2, ("queued",), "running") is None
    assert registry.get_job(ws, row.id).status == "queued"


def test_check_constraint_keeps_active_key_with_active_states(ws):
    row, _ = _submit(ws, "k4")
    with pytest.raises(duckdb.ConstraintException):
        with transaction(ws, write=True) as tx:
            tx.execute("UPDATE jobs SET status = 'completed' WHERE id = ?", [row.id])
    with pytest.raises(duckdb.ConstraintException):
        with transaction(ws, write=True) as tx:
            tx.execute("INSERT INTO jobs (id, kind, key, active_key, status, spec, entry, created_at, queued_at) "
                       "VALUES ('dup', 'count', 'k4', 'k4', 'queued', '{}', 'e', now()::TIMESTAMP, now()::TIMESTAMP)")
    assert [r.id for r in registry.list_jobs(ws)] == [row.id]  # the failed transactions changed nothing


def test_delete_refuses_active_job(ws):
    row, _ = _submit(ws, "k5")
    with pytest.raises(JobStateError, match="cancel it first"):
        registry.delete_job(ws, row.id)
    cancelled = registry.request_cancel(ws, row.id)
    assert cancelled.status == "cancelled"
    assert registry.delete_job(ws, row.id).id == row.id
    assert registry.get_job(ws, row.id) is None


def test_registry_from_a_newer_saekit_is_refused_untouched(ws):
    _submit(ws, "k6")
    with transaction(ws, write=True) as tx:
        tx.execute("UPDATE saekit_meta SET value = '999' WHERE key = 'schema_version'")
    before = _digest(ws.registry_path)
    for call in (lambda: registry.list_jobs(ws), lambda: _submit(ws, "k7")):
        with pytest.raises(RegistryVersionError, match="schema version 999, newer"):
            call()
    assert _digest(ws.registry_path) == before


def test_corrupt_registry_is_refused_untouched(ws):
    ws.dir()
    ws.registry_path.write_bytes(b"this is not a duckdb file" * 100)
    before = _digest(ws.registry_path)
    for call in (lambda: registry.list_jobs(ws), lambda: _submit(ws, "k8")):
        with pytest.raises(RegistryCorruptError, match="left untouched"):
            call()
    assert _digest(ws.registry_path) == before


def test_forward_migration_runs_once_in_order(ws, monkeypatch):
    _submit(ws, "k9")
    extra = [["CREATE TABLE notes (job_id VARCHAR, note VARCHAR)",
              "INSERT INTO notes SELECT id, 'migrated' FROM jobs"]]
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS + extra)
    monkeypatch.setattr(schema, "SCHEMA_VERSION", len(schema.MIGRATIONS))
    import saekit.registry._db as db

    monkeypatch.setattr(db, "MIGRATIONS", schema.MIGRATIONS)
    monkeypatch.setattr(db, "SCHEMA_VERSION", schema.SCHEMA_VERSION)
    assert len(registry.list_jobs(ws)) == 1  # a read migrates under the write lock, then reads
    with transaction(ws) as tx:
        assert tx.rows("SELECT note FROM notes") == [{"note": "migrated"}]
        assert tx.one("SELECT value FROM saekit_meta WHERE key='schema_version'")["value"] == str(db.SCHEMA_VERSION)
    registry.list_jobs(ws)
    with transaction(ws) as tx:
        assert len(tx.rows("SELECT * FROM notes")) == 1  # not re-run
