"""A workspace decides what code runs? Never: a job row names its kind, and the code behind the name comes
from saekit, installed packages or modules the caller names; trust_remote_code comes only from the caller."""

import subprocess
import sys

import pytest

import saekit as sk
from saekit import registry
from saekit.errors import ConfigError, ModelLoadError


def _planted_job(ws, tmp_path, kind="evil"):
    """A job row as someone else's workspace could hold it: its entry names a module that, if imported,
    leaves a mark."""
    module = tmp_path / "planted"
    module.mkdir()
    mark = tmp_path / "MARK"
    (module / "planted_kind.py").write_text(f"open({str(mark)!r}, 'w').write('ran')\n")
    row, _ = registry.submit_job(ws, new_id=f"{kind}-1", kind=kind, key="k", name=None, spec="{}",
                                 entry="planted_kind", force=False, launcher="background", worker_pid=1)
    registry.transition(ws, row.id, 1, ("queued",), "running")
    registry.finish_job(ws, row.id, 1, "completed", result='{"x": 1}', error_type=None, error_message=None,
                        suggestion=None, finished_at=registry.utcnow())
    return row, module, mark


def test_reading_a_job_never_imports_what_its_row_names(ws, tmp_path):
    row, module, mark = _planted_job(ws, tmp_path)
    sys.path.insert(0, str(module))
    try:
        with pytest.raises(ConfigError, match="unknown job kind 'evil'"):
            sk.job(row.id).result()
        sk.job(row.id).delete()  # its rows go, nothing is imported
    finally:
        sys.path.remove(str(module))
    assert not mark.exists() and registry.get_job(ws, row.id) is None


def test_a_worker_never_imports_what_a_row_names(ws, tmp_path):
    row, module, mark = _planted_job(ws, tmp_path)
    with registry.transaction(ws, write=True) as tx:  # queue it again, as a planted workspace would
        tx.execute("UPDATE jobs SET status = 'queued', active_key = key, finished_at = NULL WHERE id = ?", [row.id])
    done = subprocess.run([sys.executable, "-m", "saekit.jobs.worker", row.id, "--workspace", str(ws.path)],
                          capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(module), "PATH": "/usr/bin:/bin"})
    assert not mark.exists()
    job = sk.job(row.id)
    assert job.status == "failed" and "unknown job kind 'evil'" in job.info()["error_message"]
    assert done.returncode == 0


def test_trust_remote_code_comes_from_the_caller_not_the_spec(ws, tiny_model_dir, monkeypatch):
    from saekit._trust import REMOTE_CODE_ENV
    from saekit.models.loading import load_model_from_ref

    monkeypatch.delenv(REMOTE_CODE_ENV, raising=False)
    ref = {**sk.load_model(tiny_model_dir, device="cpu").ref, "trust_remote_code": True}  # a planted spec
    with pytest.raises(ModelLoadError, match="a job spec is not enough"):
        load_model_from_ref(ref, device="cpu")
    monkeypatch.setenv(REMOTE_CODE_ENV, ref["name_or_path"])  # the caller allows it
    assert load_model_from_ref(ref, device="cpu").d_model == 64


def test_a_kind_defined_in_a_notebook_runs_only_there(ws):
    from saekit.jobs import job_kind, submit

    def here(ctx, spec):
        return {"ok": True}

    here.__module__ = "__main__"
    job_kind("notebook-kind")(here)
    with pytest.raises(ConfigError, match="background worker cannot import"):
        submit("notebook-kind", {})
    assert submit("notebook-kind", {}, background=False, progress=False).result() == {"ok": True}
