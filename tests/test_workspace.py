import os

import pytest

import saekit as sk
from saekit.errors import WorkspaceError
from saekit.jobs import submit


def test_default_workspace_comes_from_saekit_home(tmp_path, monkeypatch):
    sk.set_workspace(None)
    monkeypatch.setenv("SAEKIT_HOME", str(tmp_path / "home"))
    assert sk.workspace().path == tmp_path / "home"
    monkeypatch.delenv("SAEKIT_HOME")
    monkeypatch.chdir(tmp_path)
    assert sk.workspace().path == tmp_path / "saekit-workspace"


def test_set_workspace_and_lazy_creation(tmp_path):
    ws = sk.set_workspace(tmp_path / "lazy")
    try:
        assert sk.workspace() == ws
        assert not ws.path.exists()  # nothing is created by naming it
        assert ws.dir("jobs", "x").is_dir()
        assert (tmp_path / "lazy" / "jobs" / "x").is_dir()
    finally:
        sk.set_workspace(None)


def test_workspace_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "afile"
    target.write_text("not a folder")
    with pytest.raises(WorkspaceError, match="afile.*is a file"):
        sk.Workspace(target)


def test_unwritable_workspace_names_path_and_reason(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    ws = sk.Workspace(blocker / "ws")
    with pytest.raises(WorkspaceError) as info:
        submit("count", {"n": 1}, workspace=ws, background=False)
    assert str(blocker / "ws") in str(info.value)
    assert "Not a directory" in str(info.value)
    assert blocker.read_text() == "a file where a folder should be"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_workspace(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(WorkspaceError, match="not writable|Permission"):
        sk.Workspace(ro / "ws").dir()
