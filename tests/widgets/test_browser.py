"""In a real browser: JupyterLab on loopback, Debian's Chromium (headless) driven by Playwright. A cell
starts a background job and its widget's progress bar rises in the page; after a kernel restart,
``sk.job(id)`` shows the same job's bar, still rising or complete. A screenshot is saved in the
test's tmp dir."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _notebook(path: Path, cells: list[str]) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server on loopback (its own config and runtime dirs), with SAEKIT_HOME in tmp_path."""
    missing = None if Path(CHROMIUM).exists() else "Debian's chromium is not installed (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = missing or "playwright is not installed (pip install -e '.[dev]')"
    if missing:
        if os.environ.get("SAEKIT_REQUIRE_BROWSER"):  # CI sets it: there the browser test must run
            pytest.fail(missing)
        pytest.skip(missing)
    port, token = _free_port(), "saekit-test"
    env = {**os.environ, "SAEKIT_HOME": str(tmp_path / "ws"), "JUPYTER_CONFIG_DIR": str(tmp_path / "jcfg"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "jrun"), "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "jws"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "jsettings"), "PYTHONPATH": str(TESTS),
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    log = open(tmp_path / "jupyterlab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ServerApp.port={port}", "--ServerApp.ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}", "--ServerApp.allow_root=True",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "jupyterlab.log").read_text()[-3000:]
            time.sleep(0.5)
    try:
        yield base, token, tmp_path
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _bar_value(page, cell: int) -> float | None:
    return page.evaluate(
        """(cell) => {
            const cells = document.querySelectorAll('.jp-Notebook .jp-CodeCell');
            const bar = cells[cell] && cells[cell].querySelector('progress.saekit-progress');
            return bar && bar.hasAttribute('value') ? bar.value : (bar ? -1 : null);
        }""", cell)


def _run_cell(page, cell: int) -> None:
    """Select the cell and press the toolbar's Run button until the cell shows it ran (or runs)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    target = page.locator(".jp-Notebook .jp-CodeCell").nth(cell)
    for _ in range(10):
        target.locator(".jp-InputPrompt").click()
        page.locator(".jp-NotebookPanel-toolbar [data-command='notebook:run-cell-and-select-next']").click()
        try:
            page.wait_for_function(
                r"""(cell) => {
                    const prompt = document.querySelectorAll('.jp-Notebook .jp-CodeCell')[cell].querySelector('.jp-InputPrompt');
                    return prompt && /\[(\*|\d+)\]/.test(prompt.textContent);
                }""", arg=cell, timeout=10_000)
            return
        except PlaywrightTimeout:  # the kernel was not ready yet: press again (submitting is idempotent)
            continue
    raise AssertionError(f"cell {cell} never ran")


def _wait(predicate, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, what
        time.sleep(0.25)


def test_progress_rises_in_the_page_and_reattaches_after_a_kernel_restart(jupyterlab):
    from playwright.sync_api import sync_playwright

    base, token, folder = jupyterlab
    _notebook(folder / "jobs.ipynb", [
        "import saekit as sk, kinds_for_tests\n"
        "from saekit.jobs import submit\n"
        "job = submit('count', {'n': 300, 'delay': 0.05})\n"
        "open('job_id.txt', 'w').write(job.id)\n"
        "job",
        "import saekit as sk\n"
        "sk.job(open('job_id.txt').read())",
    ])
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        try:
            _drive(page, base, token, folder)
        finally:  # what the page showed, pass or fail
            page.screenshot(path=str(folder / "jupyterlab.png"), full_page=True)
            (folder / "page.html").write_text(page.content())
            browser.close()
    assert (folder / "jupyterlab.png").stat().st_size > 10_000


def _drive(page, base: str, token: str, folder: Path) -> None:
    page.goto(f"{base}/lab/tree/jobs.ipynb?token={token}")
    page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=120_000)
    _wait(lambda: page.get_by_text("| Idle").count(), "the kernel to start")
    _run_cell(page, 0)
    first = _wait(lambda: (_bar_value(page, 0) or 0) > 0 and _bar_value(page, 0), "a progress bar with a value")
    later = _wait(lambda: (v := _bar_value(page, 0)) and v > first and v, "the bar to rise")
    assert 0 < first < later <= 100
    job_id = (folder / "job_id.txt").read_text()
    assert job_id in page.locator(".jp-Notebook .jp-CodeCell").nth(0).inner_text()

    kernels = json.load(urllib.request.urlopen(f"{base}/api/kernels?token={token}"))
    assert len(kernels) == 1
    request = urllib.request.Request(f"{base}/api/kernels/{kernels[0]['id']}/restart?token={token}", method="POST")
    urllib.request.urlopen(request, timeout=60)
    time.sleep(2)
    _run_cell(page, 1)
    again = _wait(lambda: (_bar_value(page, 1) or 0) > 0 and _bar_value(page, 1), "the re-attached bar")
    assert again >= first  # the same job: its progress, not a new one
    final = _wait(lambda: (v := _bar_value(page, 1)) and (v > again or v == 100) and v, "it to go on")
    assert job_id in page.locator(".jp-Notebook .jp-CodeCell").nth(1).inner_text()
    print(f"screenshot: {folder / 'jupyterlab.png'} (bar {first:.1f} -> {later:.1f}; after restart {again:.1f} -> {final:.1f})")
