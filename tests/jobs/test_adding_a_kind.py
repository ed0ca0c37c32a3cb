"""The worked example of docs/adding-a-job-kind.md, tested as that page says to test a kind of one's own: it
runs, a finished spec is found again, bad input is refused, a worker killed before its end resumes from its
last commit to the same result, and delete and gc know its outputs."""

import re
import sys
from pathlib import Path

import pytest

import saekit as sk
from saekit.errors import ConfigError
from saekit.jobs.gc import orphan_files

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
sys.path.insert(0, str(EXAMPLES))
import line_count  # noqa: E402,F401  (registers the kind; background workers are told to import it too)


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("".join(f"line {i} has {'some ' * (i % 5)}words\n" for i in range(3000)))
    return path


def _truth(path):
    data = Path(path).read_bytes()
    return {"lines": data.count(b"\n"), "words": len(data.split())}


def test_the_page_shows_this_module():
    page = (EXAMPLES.parent / "adding-a-job-kind.md").read_text()
    shown = re.search(r"```python\n(.*?)```", page, re.S).group(1)
    assert shown == (EXAMPLES / "line_count.py").read_text()


def test_it_counts_and_a_finished_spec_is_found_again(ws, text):
    job = sk.submit("line_count", {"path": str(text), "block_bytes": 4096}, background=False, progress=False)
    assert job.result() == _truth(text)
    assert len(job.metrics()) == job.metrics().index.max() > 10  # a metric per block
    again = sk.submit("line_count", {"path": str(text), "block_bytes": 512}, background=False, progress=False)
    assert again.id == job.id and again.attempt == 1  # block_bytes is volatile: the same work, not run again
    text.write_text(text.read_text() + "one more\n")
    changed = sk.submit("line_count", {"path": str(text)}, background=False, progress=False)
    assert changed.id != job.id and changed.result() == _truth(text)  # new content, new job


def test_bad_input_is_refused_with_the_fix(ws, tmp_path):
    with pytest.raises(ConfigError, match="is not a file; give the path of a text file"):
        sk.submit("line_count", {"path": str(tmp_path / "missing.txt")}, background=False)
    assert len(sk.jobs()) == 0  # refused before anything was written


def test_a_worker_killed_before_its_end_resumes_from_its_last_commit(ws, text, monkeypatch):
    reference = sk.submit("line_count", {"path": str(text), "block_bytes": 2048}, background=False, progress=False,
                          workspace=sk.Workspace(ws.path.parent / "reference"))
    monkeypatch.setenv("SAEKIT_FAULT", "before_end:1")  # the worker kills itself after the work, before its end
    job = sk.submit("line_count", {"path": str(text), "block_bytes": 2048})
    assert job.wait(timeout=120, progress=False).status == "failed" and job.info()["error_type"] == "worker_lost"
    monkeypatch.delenv("SAEKIT_FAULT")
    job.resume()
    assert job.result(timeout=120) == _truth(text) and job.attempt == 2
    starts = [e for e in job.events(all_records=True) if e["t"] == "start"]
    assert [s["resume"] for s in starts] == [False, True]  # the second attempt began at the last commit
    assert job.metrics().equals(reference.metrics())


def test_delete_and_gc_know_its_outputs(ws, text):
    job = sk.submit("line_count", {"path": str(text)}, background=False, progress=False)
    output = ws.path / "counts" / f"{job.id}.json"
    assert output.exists() and orphan_files(ws) == []
    job.delete()
    assert not output.exists() and not ws.job_dir(job.id).exists()
