"""The example notebooks, run and then shared as a researcher shares them.

Each notebook in ``notebooks/`` runs top to bottom in a fresh kernel (a cell that raises fails the test, as under
``pytest --nbval-lax notebooks``, which stays the way to run one by hand); it is saved twice, with its widget
state (what JupyterLab and ``nbconvert --execute`` store) and without it, and ``jupyter nbconvert --to html``
turns each copy into a page. Each page is opened offline in headless Chromium (the widgets' JavaScript, from a
CDN, cannot load): every saekit widget output must show its final content - a job at 100% with its charts, a
card, a browser - not an empty box and not the state it had when it was first drawn.
"""

import copy
import json
import os
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.heavy  # about a minute a notebook: in make test, not in the quick loop

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SNAPSHOT = "saekit-snapshot"

# the snapshots in the page, as a reader sees them: shown, with their text and what they draw
SNAPSHOTS_IN_PAGE = """() => [...document.querySelectorAll('.saekit-snapshot')].map((s) => {
  const box = s.getBoundingClientRect();
  return {visible: box.height > 10 && box.width > 100 && getComputedStyle(s).display !== 'none', text: s.innerText,
          svgs: s.querySelectorAll('svg').length, progress: [...s.querySelectorAll('progress')].map((p) => p.value)};
})"""


def _run(path: Path):
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=900, kernel_name="python3", store_widget_state=True,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return notebook


def _html(notebook) -> str:
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(notebook)
    return body


def _snapshots(notebook) -> list[str]:
    return ["".join(o["data"]["text/html"]) for cell in notebook.cells for o in cell.get("outputs", [])
            if SNAPSHOT in "".join(o.get("data", {}).get("text/html", ""))]


@pytest.fixture(scope="module")
def page():
    import sys

    sys.path.insert(0, str(ROOT / "tools"))
    import lab as labtools

    reason = labtools.missing()
    if reason:
        if os.environ.get("SAEKIT_REQUIRE_BROWSER"):  # CI sets it: there the pages must be looked at
            pytest.fail(reason)
        yield None
        return
    with labtools.browser(width=1400, height=900) as page:
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
                   else route.abort())  # offline, as a page opened from disk without the network is
        yield page


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_an_example_notebook_runs_and_its_html_shows_every_widget_at_its_end(path, tmp_path, page):
    notebook = _run(path)
    assert "widgets" in notebook.metadata  # saved as JupyterLab saves it, with the widgets' state
    saved = _snapshots(notebook)
    assert saved, f"{path.name} shows no saekit widget"
    stripped = copy.deepcopy(notebook)
    stripped.metadata.pop("widgets")
    if page is None:
        pytest.skip("no browser here to look at the converted pages (the notebook ran)")
    for label, copy_ in (("with widget state", notebook), ("without widget state", stripped)):
        html = tmp_path / f"{path.stem}-{label.replace(' ', '-')}.html"
        html.write_text(_html(copy_))
        page.goto(html.as_uri(), wait_until="load")
        shown = page.evaluate(SNAPSHOTS_IN_PAGE)
        where = f"{path.name} {label}"
        assert len(shown) == len(saved), (where, len(shown), len(saved))
        for snapshot in shown:
            assert snapshot["visible"] and snapshot["text"].strip(), (where, snapshot)
            head = snapshot["text"].splitlines()[0]
            if "running" in head or "queued" in head:
                raise AssertionError(f"{where}: a job saved before its end: {head}")
            if snapshot["progress"]:  # a job's view: at its end, with its charts when it logged metrics
                assert snapshot["progress"] == [100], (where, head, snapshot["progress"])
            if head.startswith("train"):
                assert snapshot["svgs"] >= 2 and "fvu" in snapshot["text"].lower(), (where, snapshot["text"][:400])
        page.screenshot(path=str(tmp_path / f"{path.stem}-{label.replace(' ', '-')}.png"), full_page=True)
    (tmp_path / "saved.json").write_text(json.dumps({"snapshots": len(saved)}))
