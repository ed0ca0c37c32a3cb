"""`make audit` (tools/audit.py): real pip-audit against a real HTTP server speaking the OSV query API, with
planted advisories - a vulnerability with a fixed release fails the audit, one without a fix warns, a package
the service cannot answer for makes the audit say it is incomplete (and fail with --strict)."""

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ADVISORIES = {
    ("jinja2", "3.1.2"): [{"id": "GHSA-test-fixed", "summary": "planted, fixed in 3.1.3",
                           "affected": [{"package": {"name": "jinja2", "ecosystem": "PyPI"},
                                         "ranges": [{"type": "ECOSYSTEM",
                                                     "events": [{"introduced": "0"}, {"fixed": "3.1.3"}]}]}]}],
    ("six", "1.16.0"): [{"id": "GHSA-test-open", "summary": "planted, no fix",
                         "affected": [{"package": {"name": "six", "ecosystem": "PyPI"},
                                       "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}]}]}]}],
}


class OSV(BaseHTTPRequestHandler):
    def do_POST(self):
        query = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        vulns = ADVISORIES.get((query["package"]["name"], query["version"]))
        body = json.dumps({"vulns": vulns} if vulns else {}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def osv_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), OSV)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/query"
    server.shutdown()


def _audit(lock_text, tmp_path, *args):
    lock = tmp_path / "requirements.lock"
    lock.write_text(lock_text)
    return subprocess.run([sys.executable, str(ROOT / "tools" / "audit.py"), "--lock", str(lock), *args],
                          capture_output=True, text=True, timeout=120)


def test_a_vulnerability_with_a_fix_fails_the_audit(osv_url, tmp_path):
    result = _audit("jinja2==3.1.2\nsix==1.16.0\nidna==3.10\n", tmp_path, "--service", "osv", "--osv-url", osv_url)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "VULNERABLE: jinja2 3.1.2: GHSA-test-fixed (fixed in 3.1.3)" in result.stdout
    assert "warning: six 1.16.0: GHSA-test-open (no fixed release yet)" in result.stdout
    assert "audited 3 package(s)" in result.stdout and "INCOMPLETE" not in result.stdout


def test_no_fixable_vulnerability_passes(osv_url, tmp_path):
    result = _audit("jinja2==3.1.3\nsix==1.16.0\n", tmp_path, "--service", "osv", "--osv-url", osv_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 vulnerable with a fix, 1 without one" in result.stdout


def test_the_lock_file_is_complete_and_pinned():
    lines = [line for line in (ROOT / "requirements.lock").read_text().splitlines() if line.strip()]
    names = {line.split("==")[0].lower().replace("_", "-") for line in lines}
    assert all("==" in line for line in lines), [line for line in lines if "==" not in line]
    assert {"torch", "duckdb", "zarr", "transformers", "anywidget", "pip-audit"} <= names
    assert "torch==2.13.0" in lines  # the pin CI installs first, without its local +cpu tag


def test_a_package_the_service_cannot_answer_for_makes_it_incomplete(tmp_path):
    lock = "saekit-no-such-package-4f1c==1.0\n"  # PyPI's JSON API has no such release
    result = _audit(lock, tmp_path, "--service", "pypi")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "AUDIT INCOMPLETE: 1 of 1" in result.stdout and "audited 0 package(s)" in result.stdout
    strict = _audit(lock, tmp_path, "--service", "pypi", "--strict")
    assert strict.returncode == 1
