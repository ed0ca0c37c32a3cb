"""In a real browser: JupyterLab on loopback, Debian's Chromium (headless) driven by Playwright (tools/lab.py).

- a cell starts a background job and its widget's progress bar rises; after a kernel restart the old view
  says it lost its kernel and its Cancel is disabled, and ``sk.job(id)`` shows the same job, still rising;
- a training job's charts have axis ticks, and they move as it trains; a comparison of running jobs updates;
- a saved notebook, reopened without its kernel, shows the finished job's last state; nbconvert's HTML holds
  the static snapshot.

Screenshots land in the test's tmp dir."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import lab as labtools  # noqa: E402

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    reason = labtools.missing()
    if reason:
        if os.environ.get("SAEKIT_REQUIRE_BROWSER"):  # CI sets it: there the browser tests must run
            pytest.fail(reason)
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("lab")
    with labtools.jupyterlab(folder) as server:
        yield server


@pytest.fixture
def page(lab):
    with labtools.browser() as page:
        yield page
        page.screenshot(path=str(lab.folder / f"{time.time():.0f}.png"), full_page=True)


def _js(page, script: str, cell: int):
    return page.evaluate(f"([cells, cell]) => {{ const el = document.querySelectorAll(cells)[cell]; {script} }}",
                         [labtools.CELLS, cell])


def _bar(page, cell: int):
    return _js(page, "const b = el && el.querySelector('progress.saekit-progress'); "
                     "return b && b.hasAttribute('value') ? b.value : (b ? -1 : null);", cell)


def _ticks(page, cell: int, which: str = "xticks"):
    return _js(page, f"return [...el.querySelectorAll('.saekit-chart')].map((c) => c.dataset.{which} || '');", cell)


def test_progress_rises_and_a_restarted_kernel_leaves_a_view_that_says_so(lab, page):
    labtools.notebook(lab.folder / "jobs.ipynb", [
        "import saekit as sk, kinds_for_tests\n"
        "job = sk.submit('count', {'n': 400, 'delay': 0.05})\n"
        "open('job_id.txt', 'w').write(job.id)\n"
        "job",
        "import saekit as sk\n"
        "sk.job(open('job_id.txt').read())",
    ])
    lab.open(page, "jobs.ipynb")
    lab.run_cell(page, 0)
    first = labtools.wait(lambda: (_bar(page, 0) or 0) > 0 and _bar(page, 0), "a progress bar with a value")
    later = labtools.wait(lambda: (v := _bar(page, 0)) and v > first and v, "the bar to rise")
    assert 0 < first < later <= 100
    job_id = (lab.folder / "job_id.txt").read_text()
    assert job_id in lab.cell(page, 0).inner_text()
    assert _js(page, "return el.querySelector('button.saekit-cancel').disabled", 0) is False

    lab.restart_kernel()
    gone = labtools.wait(lambda: _js(page, "return el.querySelector('.saekit-gone-note')?.textContent", 0),
                         "the old view to say it lost its kernel")
    assert "lost its kernel" in gone and job_id in gone
    assert _js(page, "return el.querySelector('button.saekit-cancel').disabled", 0) is True
    frozen = _bar(page, 0)
    lab.run_cell(page, 1)
    again = labtools.wait(lambda: (_bar(page, 1) or 0) > 0 and _bar(page, 1), "the re-attached bar")
    assert again >= later  # the same job: its progress, not a new one
    labtools.wait(lambda: (v := _bar(page, 1)) and (v > again or v == 100), "it to go on")
    assert _bar(page, 0) == frozen  # the dead view stays as it was
    subprocess.run([sys.executable, "-m", "saekit.cli", "--workspace", str(lab.folder / "ws"), "cancel", job_id],
                   check=True, capture_output=True)


def test_training_charts_have_ticks_that_move_and_a_comparison_updates(lab, page):
    labtools.notebook(lab.folder / "charts.ipynb", [
        "import saekit as sk, kinds_for_tests\n"
        "from data_for_tests import quick, toy_store\n"
        "run = sk.train(toy_store(), 'toy', sk.SAEConfig(arch='relu', d_sae=64, l1_coefficient=0.01),\n"
        "               quick(total_tokens=3_000_000, log_every=5, checkpoint_every=10**6), name='relu-run')\n"
        "open('charts_ids.txt', 'w').write(run.id)\n"
        "run",
        "a = sk.submit('count', {'n': 300, 'delay': 0.05, 'tag': 'a'})\n"
        "b = sk.submit('count', {'n': 300, 'delay': 0.05, 'tag': 'b'})\n"
        "open('charts_ids.txt', 'a').write(f' {a.id} {b.id}')\n"
        "sk.compare([a, b], 'progress', names=['first', 'second'])",
        "sk.dashboard()",
    ])
    lab.open(page, "charts.ipynb")
    lab.run_cell(page, 0)
    first = labtools.wait(lambda: (t := _ticks(page, 0)) and all(t) and len(t) >= 3 and t, "charts with ticks",
                           show=lambda: (_ticks(page, 0), lab.cell(page, 0).inner_text()[-3000:]))
    # every chart has a y axis with ticks (a chart's first point alone, e.g. the lr's, may have one: wait for more)
    labtools.wait(lambda: all(len(ticks.split("|")) >= 2 for ticks in _ticks(page, 0, "yticks")), "y ticks on each chart",
                  show=lambda: _ticks(page, 0, "yticks"))
    labtools.wait(lambda: _ticks(page, 0) != first, "the x axes to move as it trains")
    text = lab.cell(page, 0).inner_text()
    assert "FVU" in text and "relu-run" in text

    lab.run_cell(page, 1)
    start = labtools.wait(lambda: (t := _ticks(page, 1)) and t[0] and t, "the comparison chart")
    labtools.wait(lambda: _ticks(page, 1) != start, "the comparison of running jobs to update")
    legend = lab.cell(page, 1).inner_text()
    assert "first" in legend and "second" in legend and "tag=a" in legend  # names and what differs
    # the dashboard at a normal output width (about 1040 px): no column reaches past its edge
    page.set_viewport_size({"width": 1472, "height": 900})
    lab.run_cell(page, 2)
    past_edge = """const root = el.querySelector('.saekit-panel, .saekit-job'); if (!root) return null;
        const edge = root.getBoundingClientRect();
        return {width: Math.round(edge.width), rows: root.querySelectorAll('tr').length, out: [...root.querySelectorAll('*')].filter((n) => {
          const b = n.getBoundingClientRect(); return b.width > 0 && b.right > edge.right + 1; }).map((n) => `${n.tagName}.${n.className}`).slice(0, 8)};"""
    found = labtools.wait(lambda: (c := _js(page, past_edge, 2)) and c["rows"] > 1 and c, "the dashboard's rows")
    assert abs(found["width"] - 1040) < 60 and not found["out"], found
    for job_id in (lab.folder / "charts_ids.txt").read_text().split():
        subprocess.run([sys.executable, "-m", "saekit.cli", "--workspace", str(lab.folder / "ws"), "cancel", job_id],
                       capture_output=True)


def test_a_saved_notebook_reopened_without_its_kernel_shows_the_last_state(lab, page):
    labtools.notebook(lab.folder / "saved.ipynb", [
        "import saekit as sk, kinds_for_tests\n"
        "done = sk.submit('count', {'n': 30, 'tag': 'saved'}, background=False, progress=False)\n"
        "done.widget()",
    ])
    lab.open(page, "saved.ipynb")
    lab.run_cell(page, 0)
    labtools.wait(lambda: _bar(page, 0) == 100, "the finished job's view")
    lab.wait_idle(page)
    # the static snapshot is an output of its own (nbconvert shows it), hidden where the live view renders: by
    # JupyterLab's output structure and, for any front end, by a rule the view adds for its snapshot's key
    assert _js(page, "return [...el.querySelectorAll('.saekit-snapshot')].map((s) => s.offsetParent === null)", 0) == [True]
    rules = _js(page, "return [...el.querySelectorAll('.saekit-snapshot')].map((s) => "
                      "document.getElementById('saekit-hide-' + s.dataset.saekitKey)?.textContent || '')", 0)
    assert len(rules) == 1 and "display: none" in rules[0], rules
    lab.save(page)
    labtools.wait(lambda: "application/vnd.jupyter.widget-state+json" in (lab.folder / "saved.ipynb").read_text(),
                  "the notebook saved with its widget state")
    for session in lab.api("sessions"):  # no kernel behind the notebook any more
        lab.api(f"sessions/{session['id']}", method="DELETE")
    page.reload()
    page.wait_for_selector(labtools.CELLS, timeout=120_000)
    labtools.wait(lambda: _bar(page, 0) == 100, "the reopened notebook to show the job's last state", 120)
    assert _js(page, "return [...el.querySelectorAll('.saekit-snapshot')].map((s) => s.offsetParent === null)", 0) == [True]
    text = lab.cell(page, 0).inner_text()
    assert "completed" in text and "model not found" not in text
    html = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", "--stdout",
                           str(lab.folder / "saved.ipynb")], capture_output=True, text=True, timeout=300)
    assert html.returncode == 0, html.stderr[-2000:]
    assert "completed" in html.stdout and "object at 0x" not in html.stdout  # the snapshot, not a repr


def test_the_feature_browser_searches_opens_cards_and_highlights_tokens(lab, page, docs_file, tiny_model_dir):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "features"))
    from planted import PLANTED, planted_analysis

    import saekit as sk

    feats, token = planted_analysis(sk.Workspace(lab.folder / "ws"), tiny_model_dir, docs_file)
    word = feats[PLANTED].top_tokens[0][0].strip()
    tokenizer = sk.load_model(tiny_model_dir, device="cpu").tokenizer
    text = f"first{tokenizer.decode([token])} then more{tokenizer.decode([token])} and the end"
    at = tokenizer(text)["input_ids"].index(token)
    labtools.notebook(lab.folder / "features.ipynb", [
        f"import saekit as sk\nfeats = sk.job({feats.id!r}).result()\nfeats",
        f"feats[{PLANTED}]",
        f"lm = sk.load_model({str(tiny_model_dir)!r}, device='cpu')\nfeats.on_text(lm, {text!r})",
    ])
    lab.open(page, "features.ipynb")
    lab.run_cell(page, 0)
    labtools.wait(lambda: _js(page, "return el.querySelectorAll('.saekit-feature-row').length", 0), "the feature list")
    shown = lambda: _js(page, "return el.querySelector('.saekit-card')?.dataset.feature", 0)  # noqa: E731
    first = labtools.wait(shown, "a card beside the list")
    # search: the planted latent is among the matches, and clicking it opens its card
    box = lab.cell(page, 0).locator("input.saekit-search")
    box.fill(word)
    box.press("Enter")
    best = int(feats.search(word).ids[0])  # a latent whose first top token is the word (the planted one, or a tie)
    labtools.wait(lambda: _js(page, "return el.querySelector('.saekit-feature-row')?.dataset.latent", 0) == str(best)
                  and _js(page, f"return !!el.querySelector(\".saekit-feature-row[data-latent='{PLANTED}']\")", 0)
                  and _js(page, "return el.querySelector('.saekit-count').textContent", 0).split()[0] != str(len(feats)),
                  "the search to narrow the list, the best match first (by relevance)")
    assert _js(page, "return el.querySelector('select.saekit-sort').value", 0) == "relevance"
    lab.cell(page, 0).locator(f".saekit-feature-row[data-latent='{PLANTED}']").click()
    labtools.wait(lambda: shown() == str(PLANTED), "the clicked feature's card")
    # its contexts highlight the activating token, with the value on hover
    titles = _js(page, "return [...el.querySelectorAll('.saekit-card .saekit-tok-center')].map((t) => t.title)", 0)
    assert titles and all(word in t for t in titles), titles
    assert _js(page, "return el.querySelectorAll('.saekit-card .saekit-tok[style*=background]').length", 0) >= len(titles)
    # the histogram has axes with ticks; the logit lens names the token
    ticks = _js(page, "return [...el.querySelectorAll('.saekit-card .saekit-chart')].map((c) => c.dataset.xticks || '')", 0)
    assert ticks and all(ticks), ticks
    assert word in lab.cell(page, 0).locator(".saekit-logits").first.inner_text()
    # keys move through the list
    before = shown()
    row = _js(page, f"return [...el.querySelectorAll('.saekit-feature-row')].findIndex((r) => r.dataset.latent === '{PLANTED}')", 0)
    away, back = ("ArrowUp", "ArrowDown") if row > 0 else ("ArrowDown", "ArrowUp")
    lab.cell(page, 0).locator(".saekit-browser").press(away)
    labtools.wait(lambda: shown() != before, f"{away} to open the next feature")
    lab.cell(page, 0).locator(".saekit-browser").press(back)
    labtools.wait(lambda: shown() == before, f"{back} to open the planted feature again")
    # a feature by its id
    box.fill("3")
    box.press("Enter")
    labtools.wait(lambda: _js(page, "return el.querySelector('.saekit-feature-row')?.dataset.latent", 0) == "3",
                  "feature 3 first when searching '3'")
    # a standalone card: a neighbour's button opens that feature in the same card
    lab.run_cell(page, 1)
    labtools.wait(lambda: _js(page, "return el.querySelector('.saekit-card')?.dataset.feature", 1) == str(PLANTED),
                  "the standalone card")
    neighbour = _js(page, "return el.querySelector('.saekit-latent-link')?.dataset.latent", 1)
    lab.cell(page, 1).locator(".saekit-latent-link").first.click()
    labtools.wait(lambda: _js(page, "return el.querySelector('.saekit-card')?.dataset.feature", 1) == neighbour,
                  "the neighbour's card")
    print("card render ms:", _js(page, "return el.querySelector('.saekit-card').dataset.renderMs", 1), first)
    # at a normal output width (about 1040 px) nothing in the browser or the card reaches past its edge
    page.set_viewport_size({"width": 1472, "height": 900})
    clipped = """const root = el.querySelector('.saekit-job'); const edge = root.getBoundingClientRect();
        return {width: Math.round(edge.width), out: [...root.querySelectorAll('*')].filter((n) => {
          const b = n.getBoundingClientRect(); return b.width > 0 && (b.right > edge.right + 1 || n.scrollWidth > n.clientWidth + 1 && getComputedStyle(n).overflowX === 'hidden'); })
          .map((n) => `${n.tagName}.${n.className}`).slice(0, 8)};"""
    for cell in (0, 1):
        found = labtools.wait(lambda: (c := _js(page, clipped, cell)) and abs(c["width"] - 1040) < 60 and c, "the 1040 px layout")
        assert not found["out"], found  # clipped or past the edge (the logit tables were, beside the list)
    # features on my text: a token lists its latents, a latent opens its card
    lab.run_cell(page, 2)
    labtools.wait(lambda: _js(page, "return el.querySelectorAll('.saekit-text .saekit-tok').length", 2), "the text's tokens")
    lab.cell(page, 2).locator(f".saekit-text .saekit-tok[data-position='{at}']").click()
    link = f".saekit-token-latents .saekit-latent-link[data-latent='{PLANTED}']"
    labtools.wait(lambda: _js(page, f"return !!el.querySelector(\"{link}\")", 2), "the token's latents, the planted one among them",
                  show=lambda: lab.cell(page, 2).inner_text()[:1500])
    lab.cell(page, 2).locator(link).click()
    labtools.wait(lambda: _js(page, "return el.querySelector('.saekit-text-card .saekit-card')?.dataset.feature", 2)
                  == str(PLANTED), "the planted feature's card under the text")


def test_a_sweep_over_geometric_coefficients_has_a_log_like_axis_that_shows_zero(lab, page):
    """Coefficients 0, 1, 2, 4 ... 64 are drawn on an asinh x axis (0 still shown), labelled as a log scale;
    evenly spaced ones keep a linear axis."""
    rows = "[{'coeff': c, 'concept': 5000 * c, 'perplexity': 1.5 + c / 64, 'kl': c / 10} for c in %s]"
    cell = ("from saekit.widgets.steering import SweepView\n"
            "SweepView({'features': [3], 'weights': {'3': 0.5}, 'mode': 'add', 'relative': False, 'samples': [], "
            "'rows': " + rows + "})")
    labtools.notebook(lab.folder / "sweep.ipynb", [cell % "[0, 1, 2, 4, 8, 16, 32, 64]", cell % "[0, 10, 20, 30, 40]"])
    lab.open(page, "sweep.ipynb")
    lab.run_cell(page, 0)
    lab.run_cell(page, 1)
    for index, scaled in ((0, True), (1, False)):
        labtools.wait(lambda: any(_ticks(page, index)), f"the sweep's x ticks in cell {index}")
        label = _js(page, "return el.querySelector('.saekit-chart').textContent", index)
        assert ("log scale" in label) == scaled, label
        ticks = [float(t.replace(",", "")) for t in _ticks(page, index)[0].split("|") if t.strip()]
        assert 0 in ticks and max(ticks) >= (64 if scaled else 40)
        if scaled:  # asinh: the ticks grow geometrically past the first positive coefficient
            positive = [t for t in ticks if t > 0]
            assert positive[-1] / positive[0] >= 8, ticks
    assert "#3 ×0.5" in _js(page, "return el.textContent", 0)
    big = _js(page, "return [...el.querySelectorAll('.saekit-chart')].find((c) => c.dataset.chart.includes('concept')).dataset.yticks", 0)
    assert "k" in big and "e+" not in big, big  # 300,000 is "300k", not 3.00e+5
    # the perplexity chart is on a log axis: its ticks are round and labelled (1, 2, 5, 10: not 1.778 = 10**0.25)
    ticks = _js(page, "return [...el.querySelectorAll('.saekit-chart')].find((c) => c.dataset.chart.includes('perplexity')).dataset.yticks", 0)
    values = [float(t.replace(",", "")) for t in ticks.split("|") if t.strip()]
    assert len(values) >= 3 and all(float(f"{v:e}".split("e")[0]) in (1, 1.5, 2, 3, 5, 7) for v in values), ticks


def test_a_notebook_saved_after_its_jobs_ended_shows_their_end_without_widget_state(lab, page):
    """A job shown while it runs (as a cell's value, and while .result() waits) is saved with its end: the
    static snapshot in the output follows the job to completion, so nbconvert without widget state shows
    "completed" where it showed "running 0.0%"."""
    import json

    shown, waited = lab.folder / "gate-shown", lab.folder / "gate-waited"
    labtools.notebook(lab.folder / "followed.ipynb", [
        "import saekit as sk, kinds_for_tests\n"
        f"job = sk.submit('count', {{'n': 5, 'tag': 'shown', 'gate': {str(shown)!r}}}, progress=False)\njob",
        f"sk.submit('count', {{'n': 5, 'tag': 'waited', 'gate': {str(waited)!r}}}).result()",
    ])
    lab.open(page, "followed.ipynb")
    lab.run_cell(page, 0)
    labtools.wait(lambda: "running" in lab.cell(page, 0).inner_text(), "the running job's view")
    shown.touch()  # the job ends after it was displayed
    labtools.wait(lambda: _bar(page, 0) == 100, "the view to follow the job to its end")
    lab.run_cell(page, 1)
    labtools.wait(lambda: "running" in lab.cell(page, 1).inner_text(), "the progress view while .result() waits")
    waited.touch()
    labtools.wait(lambda: "'n': 5" in lab.cell(page, 1).inner_text(), "the result after the wait")
    lab.wait_idle(page)
    lab.save(page)
    saved = lab.folder / "followed.ipynb"
    labtools.wait(lambda: "completed" in saved.read_text(), "the notebook saved")
    notebook = json.loads(saved.read_text())
    notebook["metadata"].pop("widgets", None)  # as a notebook saved without widget state
    for cell in notebook["cells"][:2]:
        html = [o["data"]["text/html"] for o in cell["outputs"] if "text/html" in o.get("data", {})]
        assert html and all("completed" in "".join(h) and "running" not in "".join(h) for h in html), html
    stripped = lab.folder / "stripped.ipynb"
    stripped.write_text(json.dumps(notebook))
    converted = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", "--stdout", str(stripped)],
                               capture_output=True, text=True, timeout=300)
    assert converted.returncode == 0 and converted.stdout.count("completed") >= 2
    assert "running 0" not in converted.stdout


def test_an_evaluation_report_draws_its_tables_bars_and_steering_curves(lab, page):
    """sk.evaluate's result as a cell's value: a table per family with intervals, sparse probing's bars by k, the
    steering curves on a chart with ticks; the static snapshot rides in the output."""
    curves = {"sae": [{"coeff": c, "loss": 3 + c / 4, "concept": 0.2 + c / 10} for c in (0, 1, 2, 4)],
              "diffmean": [{"coeff": c, "loss": 3 + c / 8, "concept": 0.2 + c / 6} for c in (0, 1, 2, 4)]}
    result = {"sae": {"path": "/tmp/sae"}, "run": {"job": "train-x", "sae": None}, "results": {
        "core": {"metrics": {"fvu": 0.12, "l0": 32.0}, "seconds": 1.0},
        "sparse_probing": {"metrics": {"sae_top_1_test_accuracy": 0.6, "sae_top_1_test_accuracy_ci": 0.02,
                                       "llm_top_1_test_accuracy": 0.7, "sae_test_accuracy": 0.9,
                                       "llm_test_accuracy": 0.93}, "seconds": 2.0},
        "steering": {"metrics": {"baseline_loss": 3.0, "sae_area": 0.3, "diffmean_area": 0.4}, "seconds": 3.0,
                     "warnings": ["DiffMean steered better than SAE feature 7"],
                     "details": {"curves": curves, "feature": 7, "winner": "diffmean", "fluency_budget": 1.0,
                                 "prompting": {"loss": 3.5, "concept": 0.8}}}}}
    labtools.notebook(lab.folder / "report.ipynb", [f"from saekit.evals.report import Evaluation\nEvaluation({result!r})"])
    lab.open(page, "report.ipynb")
    lab.run_cell(page, 0)
    labtools.wait(lambda: any(_ticks(page, 0)), "the steering chart's ticks")
    text = _js(page, "return el.textContent", 0)
    assert "sparse probing: held-out accuracy" in text and "± 0.02" in text and "DiffMean steered better" in text
    assert _js(page, "return el.querySelectorAll('.saekit-eval-bar-sae').length", 0) == 2  # k=1 and all
    chart = _js(page, "return el.querySelector('.saekit-chart').dataset.chart", 0)
    assert chart == "concept by loss increase"
    assert "the better steering: DiffMean" in text
