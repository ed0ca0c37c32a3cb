"""An API key never reaches a stored text (issue 24, item 4): an endpoint that echoes the key it was given in its
401 answer fails the job as a ``credentials`` failure whose message, event log, worker log, registry row and
export show the key masked."""

import pytest

import saekit as sk
from saekit import registry
from saekit._secrets import mask

from json_server import MODELS, json_server
from planted import PLANTED, planted_analysis

KEY = "sk-proj-Zt3xQ9vLmN8pR2sT4uV6wX8yZ0aB2cD4"


def _refusal(headers):
    """A chat completion refused with 401, quoting the bearer token it was sent (as some endpoints do)."""
    return 401, {"error": {"message": f"Invalid API key provided: {headers.get('Authorization')}",
                           "type": "invalid_request_error", "code": "invalid_api_key"}}


def test_masking_hides_keys_tokens_and_secret_variables(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "plain-looking-value-42")
    text = (f"401 Invalid API key provided: Bearer {KEY}; api_key={KEY[:20]}; hf_abcdefghijklmnopqrstu; "
            "AKIAIOSFODNN7EXAMPLE; also plain-looking-value-42")
    masked = mask(text)
    for secret in (KEY, KEY[:20], "hf_abcdefghijklmnopqrstu", "AKIAIOSFODNN7EXAMPLE", "plain-looking-value-42"):
        assert secret not in masked
    assert masked.startswith("401 Invalid API key provided: Bearer ***")
    assert mask("blocks.6.resid_post: fvu 0.12, tokens 200,000") == "blocks.6.resid_post: fvu 0.12, tokens 200,000"


def test_an_echoed_key_is_masked_everywhere_and_the_failure_is_about_credentials(ws, tmp_path, tiny_model_dir,
                                                                                  docs_file, monkeypatch):
    feats, _ = planted_analysis(ws, tiny_model_dir, docs_file)
    monkeypatch.setenv("SAEKIT_TEST_LLM_KEY", KEY)
    with json_server({"/v1/models": MODELS, "/v1/chat/completions": _refusal}) as url:
        remote = sk.OpenAIChat("m", url, api_key_env="SAEKIT_TEST_LLM_KEY", max_retries=0)
        job = sk.explain(feats, [PLANTED], explainer=remote, progress=False)  # a background worker
        job.wait(timeout=240)
    info = job.info()
    assert job.status == "failed" and info["error_type"] == "credentials", info
    assert "***" in info["error_message"] and KEY not in info["error_message"]
    with pytest.raises(sk.JobFailedError) as failure:
        job.result()
    assert KEY not in str(failure.value)
    bundle = sk.export([job.id], tmp_path / "bundle", inputs=False)
    stored = {"events.jsonl": ws.job_dir(job.id) / "events.jsonl", "worker log": ws.log_path(job.id),
              "manifest": bundle / "manifest.json", "bundle's events": bundle / "files" / "jobs" / job.id / "events.jsonl"}
    with registry.transaction(ws, write=True) as tx:
        tx.execute("CHECKPOINT")  # every row in the database file itself
    stored["registry"] = ws.registry_path
    for name, path in stored.items():
        assert path.exists(), name
        assert KEY.encode() not in path.read_bytes(), f"the key is in the {name}"
        assert KEY[8:30].encode() not in path.read_bytes(), f"part of the key is in the {name}"
