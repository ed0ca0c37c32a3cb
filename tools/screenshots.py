"""Make the README's screenshots from real runs: JupyterLab in headless Chromium (tools/lab.py), a notebook
that trains on a tiny model, and a picture of each widget's output.

    python tools/screenshots.py [--out docs/images] [--features WORKSPACE]

Writes job.png (a training job's widget), compare.png (a comparison of a small sweep) and dashboard.png,
plus any extra shots other notebooks add (see ``SHOTS``). With ``--features`` (a workspace where
``saekit demo`` ran), also features.png (the feature browser over the demo's analysis of its SmolLM2 SAE),
steering.png and sweep.png (steering SmolLM2 with one of those features).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lab as labtools  # noqa: E402

SETUP = """
import saekit as sk, torch
from data_for_tests import dictionary_data
x, _ = dictionary_data(60_000, 32, 128, 4, seed=3)
acts = sk.ActivationStore.from_array(x, "resid")
tc = sk.TrainConfig(total_tokens=600_000, batch_size=1024, eval_tokens=4096)
"""

# (file name, cell source, what to wait for in the cell's text)
SHOTS = [
    ("job.png", "run = sk.train(acts, 'resid', sk.SAEConfig(arch='topk', d_sae=256, k=4), tc, name='topk k=4')\n"
                "run.wait(progress=False)\nrun", "held out"),
    ("compare.png", "sweep = [sk.train(acts, 'resid', sk.SAEConfig(arch='topk', d_sae=256, k=k), tc, name=f'k={k}')"
                    " for k in (2, 8, 16)]\nfor j in sweep:\n    j.wait(progress=False)\nsk.compare(sweep, 'fvu')", "k=16"),
    ("dashboard.png", "sk.dashboard()", "recently finished"),
]


STEERING = """
from saekit.models.fetch import SMOLLM2, fetch_model
lm = sk.load_model(fetch_model(), gguf_file=SMOLLM2["gguf_file"])
sae = feats.sae()
by = feats.sort("frequency")
fid = next(int(i) for i, q in zip(by.ids, by.column("frequency")) if 0.0005 < q < 0.02)
sk.compare_steering(lm, sae, "The Python standard library", [fid], coeffs=[0.5, 1, 2], relative_to=feats,
                    max_new_tokens=24)
"""
SWEEP = """sk.steering_sweep(lm, sae, [fid], coeffs=[0, 0.25, 0.5, 1, 2, 4], relative_to=feats,
                  max_new_tokens=16)"""


def demo_shots(workspace: str, out: Path, query: str) -> None:
    """features.png (the browser over the newest analysis of ``workspace``, searched for ``query``), then
    steering.png and sweep.png (a comparison and a sweep with one of its features on SmolLM2)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        labtools.notebook(folder / "features.ipynb", [
            f"import saekit as sk\nsk.set_workspace({workspace!r})\nfeats = sk.analyses()[0]\n"
            f"browser = feats.browse()\nbrowser.query = {query!r}\nbrowser", STEERING, SWEEP])
        with labtools.jupyterlab(folder) as lab, labtools.browser(width=1400, height=1100) as page:
            lab.open(page, "features.ipynb")
            lab.run_cell(page, 0)
            labtools.wait(lambda: lab.cell(page, 0).locator(".saekit-card .saekit-context").count(), "a feature card", 600)
            lab.wait_idle(page, 600)
            page.wait_for_timeout(1000)
            lab.cell(page, 0).locator(".jp-OutputArea-child:has(.saekit-live)").last.screenshot(path=str(out / "features.png"))
            print(f"wrote {out / 'features.png'}")
            for index, name, marker in ((1, "steering.png", ".saekit-steering"), (2, "sweep.png", ".saekit-chart")):
                lab.run_cell(page, index)
                labtools.wait(lambda: lab.cell(page, index).locator(marker).count(), name, 900)
                lab.wait_idle(page, 900)
                page.wait_for_timeout(1000)
                lab.cell(page, index).locator(".jp-OutputArea-child:has(.saekit-live)").last.screenshot(path=str(out / name))
                print(f"wrote {out / name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(labtools.ROOT / "docs" / "images"))
    parser.add_argument("--features", default=None, help="a workspace where `saekit demo` ran")
    parser.add_argument("--query", default="return", help="what the feature browser searches for")
    parser.add_argument("--only-features", action="store_true", help="only the shots of --features")
    args = parser.parse_args()
    reason = labtools.missing()
    if reason:
        sys.exit(f"cannot make screenshots: {reason}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.features:
        demo_shots(args.features, out, args.query)
        if args.only_features:
            return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        labtools.notebook(folder / "shots.ipynb", [SETUP, *(source for _, source, _ in SHOTS)])
        with labtools.jupyterlab(folder) as lab, labtools.browser(width=1400, height=1000) as page:
            lab.open(page, "shots.ipynb")
            lab.run_cell(page, 0)
            lab.wait_idle(page, 600)
            for i, (name, _, marker) in enumerate(SHOTS, start=1):
                lab.run_cell(page, i)
                labtools.wait(lambda: marker in lab.cell(page, i).inner_text(), f"{name}: {marker!r}", 600)
                lab.wait_idle(page, 600)
                page.wait_for_timeout(1500)  # the charts' last draw
                output = lab.cell(page, i).locator(".jp-OutputArea-child:has(.saekit-live)").last
                output.screenshot(path=str(out / name))
                print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
