"""A bundle is data from outside (issue 24, items 1, 2, 7 and 8): what it names is checked before anything is
written, its files land only inside this workspace's data folders, and deleting an imported job never removes
what this workspace did not write. Imports are all or nothing, and one cut short can be run again."""

import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

import saekit as sk
from saekit import registry
from saekit.errors import DataError, JobStateError

from planted import PLANTED, planted_analysis


def _bundle(ws, tmp_path, name="bundle"):
    """A folder bundle of one finished count job (cheap: no model)."""
    job = sk.submit("count", {"n": 3}, workspace=ws, background=False, progress=False)
    return job, sk.export([job.id], tmp_path / name, workspace=ws)


def _edit(bundle, change):
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def _nothing_imported(target):
    return not target.path.exists() or registry.list_jobs(target) == []


def test_a_manifest_path_outside_the_workspace_writes_nothing(ws, tmp_path):
    job, bundle = _bundle(ws, tmp_path)
    target = sk.Workspace(tmp_path / "repo" / "saekit-workspace")  # the default place: inside a repository
    hook = tmp_path / "repo" / ".git" / "hooks" / "pre-commit"
    planted = bundle / "files" / ".." / ".git" / "hooks" / "pre-commit"  # where the copy reads it from
    planted.parent.mkdir(parents=True)
    planted.write_text("#!/bin/sh\ntouch /tmp/pwned\n")
    planted.chmod(0o755)
    for evil in ("../.git/hooks/pre-commit", str(hook), "jobs/../../.git/hooks/pre-commit", "saekit.json",
                 "registry.duckdb", "jobs", "logs/x.log", "jobs/someone-else/events.jsonl"):
        _edit(bundle, lambda m: m.__setitem__("files", [f"jobs/{job.id}", evil]))
        with pytest.raises(DataError, match="nothing was imported"):
            sk.import_jobs(bundle, workspace=target)
        assert not hook.exists() and _nothing_imported(target)
        assert not (target.path / "saekit.json").exists()


def test_a_tar_bundle_is_checked_the_same_way(ws, tmp_path):
    job, bundle = _bundle(ws, tmp_path)
    _edit(bundle, lambda m: m.__setitem__("files", [f"jobs/{job.id}", "../outside.txt"]))
    (bundle / "outside.txt").write_text("x")  # files/../outside.txt
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(bundle, arcname="bundle")
    target = sk.Workspace(tmp_path / "target")
    with pytest.raises(DataError, match="not a path inside a workspace's data folders"):
        sk.import_jobs(archive, workspace=target)
    assert not (tmp_path / "outside.txt").exists() and _nothing_imported(target)


def test_symbolic_links_in_a_folder_bundle_are_refused(ws, tmp_path):
    job, bundle = _bundle(ws, tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("the importer's private file")
    link = bundle / "files" / "jobs" / job.id / "stolen.json"
    link.symlink_to(secret)
    target = sk.Workspace(tmp_path / "target")
    with pytest.raises(DataError, match="symbolic link|not a plain file"):
        sk.import_jobs(bundle, workspace=target)
    assert _nothing_imported(target)
    link.unlink()
    folder = bundle / "files" / "jobs" / job.id
    shutil.move(folder, tmp_path / "real")
    folder.symlink_to(tmp_path / "real")  # the job's folder itself a link
    with pytest.raises(DataError, match="symbolic link"):
        sk.import_jobs(bundle, workspace=target)
    assert _nothing_imported(target)


@pytest.mark.parametrize("change, match", [
    (lambda row: row.update(id="/abs/path/precious"), "is not a job id"),
    (lambda row: row.update(id="../../x"), "is not a job id"),
    (lambda row: row.update(status="running"), "only finished jobs travel"),
    (lambda row: row.update(spec="not json"), "not JSON"),
    (lambda row: row.update(kind="../evil"), "not a job kind name"),
    (lambda row: row.update(created_at="yesterday"), "not an ISO time"),
    (lambda row: row.update(attempt=-1), "not a positive number"),
    (lambda row: row.pop("spec"), "spec is missing"),
])
def test_imported_rows_are_checked(ws, tmp_path, change, match):
    job, bundle = _bundle(ws, tmp_path)
    _edit(bundle, lambda m: change(m["jobs"][0]))
    target = sk.Workspace(tmp_path / "target")
    with pytest.raises(DataError, match=match):
        sk.import_jobs(bundle, workspace=target)
    assert _nothing_imported(target)


def test_bad_manifests_are_saekit_errors(ws, tmp_path):
    job, bundle = _bundle(ws, tmp_path)
    target = sk.Workspace(tmp_path / "target")
    for text in ("{", "[]", json.dumps({"format": 1}), json.dumps({"format": 1, "jobs": "x", "files": []}),
                 json.dumps({"format": 1, "jobs": [1], "files": []})):
        (bundle / "manifest.json").write_text(text)
        with pytest.raises(DataError, match="nothing was imported"):
            sk.import_jobs(bundle, workspace=target)
    job, bundle = _bundle(ws, tmp_path, "second")
    (bundle / "metrics.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="metrics.parquet cannot be read"):
        sk.import_jobs(bundle, workspace=target)
    assert _nothing_imported(target)


def test_deleting_an_imported_job_removes_only_what_this_workspace_holds(ws, tmp_path):
    """A row that names a root outside (a URL, a folder) imports, and its delete leaves that root alone."""
    job, bundle = _bundle(ws, tmp_path)
    precious = tmp_path / "precious"
    (precious / job.id).mkdir(parents=True)
    (precious / job.id / "data.bin").write_bytes(b"x")

    def point_elsewhere(manifest):
        row = manifest["jobs"][0]
        spec = json.loads(row["spec"])
        spec["root"] = f"file://{precious}"
        row.update(kind="analyze", spec=json.dumps(spec))

    _edit(bundle, point_elsewhere)
    target = sk.Workspace(tmp_path / "target")
    [imported] = sk.import_jobs(bundle, workspace=target)
    assert (target.job_dir(imported) / "imported.json").exists()
    with registry.transaction(target, write=True) as tx:  # as if it had failed: a resume would write at its root
        tx.execute("UPDATE jobs SET status = 'failed' WHERE id = ?", [imported])
    with pytest.raises(JobStateError, match="which this workspace did not write"):
        sk.job(imported, workspace=target).resume()
    with pytest.warns(UserWarning, match="is kept, a reference to data this workspace did not write"):
        sk.job(imported, workspace=target).delete()
    assert (precious / job.id / "data.bin").exists()
    assert not target.job_dir(imported).exists() and registry.get_job(target, imported) is None


@pytest.fixture(scope="module")
def analysed(tmp_path_factory, tiny_model_dir, docs_file):
    """A planted analysis with a user label, its tables under an object-store root (fsspec's in-memory store, a
    real filesystem of this process)."""
    ws = sk.Workspace(tmp_path_factory.mktemp("analysed") / "ws")
    feats, _ = planted_analysis(ws, tiny_model_dir, docs_file, root="memory://bucket/analyses")
    feats.label(PLANTED, "the planted token")
    return ws, feats


def test_deleting_an_imported_analysis_keeps_the_originals_remote_tables(analysed, tmp_path):
    ws, feats = analysed
    bundle = sk.export([feats.id], tmp_path / "bundle", workspace=ws)
    target = sk.Workspace(tmp_path / "target")
    sk.import_jobs(bundle, workspace=target)
    copy = sk.job(feats.id, workspace=target)
    assert copy.result()[PLANTED].label == "the planted token"
    with pytest.warns(UserWarning, match="memory://bucket/analyses"):
        copy.delete()
    again = sk.job(feats.id, workspace=ws).result()  # the original's tables are still there
    assert again[PLANTED].label == "the planted token" and again.n_latents == feats.n_latents


def test_content_addressed_files_are_shared_and_a_cut_import_runs_again(analysed, tiny_model_dir, docs_file, tmp_path):
    """The tokenizer (tokenizers/<hash>) that both workspaces saved is shared, not a clash; an import killed while
    its files move into place leaves nothing half-imported, and running it again imports all, labels included."""
    ws, feats = analysed
    bundle = sk.export([feats.id], tmp_path / "bundle.tar", workspace=ws)
    target = sk.Workspace(tmp_path / "target")
    lm = sk.load_model(tiny_model_dir, device="cpu")
    sk.tokenize(sk.load_corpus(docs_file), lm, context_length=32, max_documents=20, background=False, progress=False,
                workspace=target)
    tokenizers = sorted(p.name for p in (target.path / "tokenizers").iterdir())
    manifest = json.loads(tarfile.open(bundle).extractfile("bundle/manifest.json").read())
    assert any(f.startswith("tokenizers/") for f in manifest["files"])  # the same tokenizer, on both sides
    env = {**os.environ, "SAEKIT_FAULT": "import_publishing"}
    killed = subprocess.run([sys.executable, "-m", "saekit.cli", "--workspace", str(target.path), "import", str(bundle)],
                            env=env, capture_output=True, text=True, timeout=240)
    assert killed.returncode == -9, killed.stderr
    assert registry.get_job(target, feats.id) is None  # rows and labels come in one transaction: none of it
    imported = sk.import_jobs(bundle, workspace=target)
    assert feats.id in imported
    copy = sk.job(feats.id, workspace=target).result()
    assert copy[PLANTED].label == "the planted token" and copy[PLANTED].label_source == "user"
    assert sorted(p.name for p in (target.path / "tokenizers").iterdir()) == tokenizers
    with pytest.raises(JobStateError, match="exist in"):
        sk.import_jobs(bundle, workspace=target)
