"""Written aside, published in one rename: two processes saving the same corpus or tokenizer for the first
time both succeed (one of them publishes it), and nothing half-written is ever visible."""

import json
import subprocess
import sys
import time

import pytest

from saekit._fs import publish, publishing, staging_path


SAVE_BOTH = """
import json, sys, time
import datasets, saekit as sk
from saekit.data.tokenization import tokenizer_spec
from saekit.models.tiny import train_tokenizer
a = json.loads(sys.argv[1])
ws = sk.Workspace(a["ws"])
corpus = sk.load_corpus(datasets.Dataset.from_dict({"text": ["one document", "and another one"] * 500}))
tokenizer = train_tokenizer(["one document", "and another one"] * 50, vocab_size=300)
while time.time() < a["at"]:
    time.sleep(0.001)
print(json.dumps({"corpus": corpus.spec(ws)["ref"]["path"], "tokenizer": tokenizer_spec(tokenizer, "t", ws)["path"]}))
"""


@pytest.mark.heavy  # eight processes: about 9 s
def test_concurrent_first_saves_of_one_corpus_and_tokenizer_all_succeed(tmp_path):
    at = time.time() + 8  # every process is ready before it; each then saves at once
    procs = [subprocess.Popen([sys.executable, "-c", SAVE_BOTH, json.dumps({"ws": str(tmp_path / "ws"), "at": at})],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]  # was ENOTEMPTY for all but one
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert len({r["corpus"] for r in results}) == 1 and len({r["tokenizer"] for r in results}) == 1
    assert not [p for p in (tmp_path / "ws" / "corpora").iterdir() if p.name.startswith(".")]
    import datasets

    assert len(datasets.load_from_disk(results[0]["corpus"] + "/train")) == 1000


def test_publishing_is_all_or_nothing(tmp_path):
    final = tmp_path / "out"
    try:
        with publishing(final) as tmp:
            tmp.mkdir()
            (tmp / "half").write_text("x")
            raise RuntimeError("the writer died")
    except RuntimeError:
        pass
    assert not final.exists() and not list(tmp_path.iterdir())
    with publishing(final) as tmp:
        tmp.mkdir()
        (tmp / "whole").write_text("x")
    first = staging_path(final)
    first.mkdir()
    (first / "other").write_text("y")
    assert publish(first, final) is False  # someone published first: theirs stays, ours goes
    assert [p.name for p in final.iterdir()] == ["whole"] and not first.exists()


def test_the_package_names_are_the_packages(ws):
    import types

    import saekit
    import saekit.jobs
    import saekit.workspace

    assert isinstance(saekit.jobs, types.ModuleType) and saekit.jobs.job_kind is saekit.job_kind  # the package
    assert saekit.jobs.submit is saekit.submit and hasattr(saekit.workspace, "Workspace")
    assert saekit.workspace() == ws and len(saekit.jobs()) == 0  # and callable, as the README says
