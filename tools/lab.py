"""JupyterLab on loopback, driven in Debian's headless Chromium through Playwright: what the browser test
(tests/widgets/test_browser.py) and the README's screenshots (tools/screenshots.py) share.

    with jupyterlab(folder) as lab, browser() as page:
        lab.open(page, "demo.ipynb"); lab.run_cell(page, 0); ...
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CELLS = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-CodeCell"  # the cells of the notebook in view
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def missing() -> str | None:
    """Why the browser cannot run here (None when it can)."""
    if not Path(CHROMIUM).exists():
        return "Debian's chromium is not installed (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None


def notebook(path: Path, cells: list[str]) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    def __init__(self, base: str, token: str, folder: Path):
        self.base, self.token, self.folder = base, token, folder

    def api(self, path: str, method: str = "GET"):
        request = urllib.request.Request(f"{self.base}/api/{path}?token={self.token}", method=method)
        with urllib.request.urlopen(request, timeout=60) as response:
            body = response.read()
        return json.loads(body) if body else None

    def open(self, page, name: str) -> None:
        """Open notebook ``name`` alone, in a JupyterLab workspace of its own (nothing restored beside it)."""
        self._opened = getattr(self, "_opened", 0) + 1
        page.goto(f"{self.base}/lab/workspaces/w{self._opened}/tree/{name}?reset&token={self.token}")
        page.wait_for_selector(CELLS, timeout=120_000)
        wait(lambda: page.get_by_text("| Idle").count(), "the kernel to start", 180)

    def cell(self, page, index: int):
        return page.locator(CELLS).nth(index)

    def run_cell(self, page, index: int) -> None:
        """Select the cell and press the toolbar's Run button until its prompt shows it ran (or runs)."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        target = self.cell(page, index)
        for _ in range(10):
            target.locator(".jp-InputPrompt").click()
            page.locator(".jp-NotebookPanel-toolbar [data-command='notebook:run-cell-and-select-next']").click()
            try:
                page.wait_for_function(
                    r"""([cells, cell]) => {
                        const prompt = document.querySelectorAll(cells)[cell].querySelector('.jp-InputPrompt');
                        return prompt && /\[(\*|\d+)\]/.test(prompt.textContent);
                    }""", arg=[CELLS, index], timeout=10_000)
                return
            except PlaywrightTimeout:  # the kernel was not ready yet: press again (running a cell twice is harmless here)
                continue
        raise AssertionError(f"cell {index} never ran")

    def wait_idle(self, page, timeout: float = 600) -> None:
        wait(lambda: page.get_by_text("| Idle").count(), "the kernel to finish", timeout)

    def restart_kernel(self) -> None:
        kernels = self.api("kernels")
        assert len(kernels) == 1, kernels
        self.api(f"kernels/{kernels[0]['id']}/restart", method="POST")

    def save(self, page) -> None:
        page.keyboard.press("Control+s")
        time.sleep(1)


def wait(predicate, what: str, timeout: float = 120, show=None):
    """Poll ``predicate`` until it is truthy (a bound for a stuck page, not a timing assumption). ``show``, when
    given, is called on a timeout and its value goes into the message (what the page showed instead)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}" + (f"; the page showed {show()!r}" if show else "")
        time.sleep(0.25)


@contextmanager
def jupyterlab(folder: Path, env: dict | None = None, save_widget_state: bool = True) -> Iterator[Lab]:
    """A JupyterLab server on loopback serving ``folder`` (its own config, runtime and settings dirs), with
    ``SAEKIT_HOME`` in ``folder/ws``. ``save_widget_state`` turns on JupyterLab's "save widget state" setting,
    so that a saved notebook reopened shows each widget's last state."""
    port, token = _free_port(), "saekit-lab"
    settings = folder / "jsettings"
    news = settings / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True, exist_ok=True)
    (news / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))  # no news popup
    if save_widget_state:
        overrides = settings / "@jupyter-widgets" / "jupyterlab-manager"
        overrides.mkdir(parents=True, exist_ok=True)
        (overrides / "plugin.jupyterlab-settings").write_text(json.dumps({"saveState": True}))
    full_env = {**os.environ, "SAEKIT_HOME": str(folder / "ws"), "JUPYTER_CONFIG_DIR": str(folder / "jcfg"),
                "JUPYTER_RUNTIME_DIR": str(folder / "jrun"), "JUPYTERLAB_WORKSPACES_DIR": str(folder / "jws"),
                "JUPYTERLAB_SETTINGS_DIR": str(settings),
                "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
                "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}", **(env or {})}
    log = open(folder / "jupyterlab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ServerApp.port={port}", "--ServerApp.ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={folder}", "--ServerApp.allow_root=True",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=full_env, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, (folder / "jupyterlab.log").read_text()[-3000:]
            time.sleep(0.5)
    try:
        yield Lab(base, token, folder)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@contextmanager
def browser(width: int = 1400, height: int = 900):
    """A headless Chromium page (Debian's, through Playwright)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = chromium.new_page(viewport={"width": width, "height": height})
        try:
            yield page
        finally:
            chromium.close()
