"""An architecture registered outside the package (tests/plugins/gated_sae.py) trains - in this process and
in a background worker -, saves, loads and exports like the built-in ones, without touching saekit/sae/."""

import json
import sys
from pathlib import Path

import pytest
import torch
from data_for_tests import quick, toy_store

import saekit as sk
from saekit.errors import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))
import gated_sae  # noqa: E402  (registers arch="gated")


def test_the_page_shows_this_plugin():
    """docs/adding-an-architecture.md shows tests/plugins/gated_sae.py as it is."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "adding-an-architecture.md").read_text()
    shown = page.split("```python\n", 1)[1].split("```\n", 1)[0]
    assert shown == Path(gated_sae.__file__).read_text()


def test_the_plugin_config_is_validated_by_its_own_class():
    config = sk.SAEConfig(arch="gated", d_in=16, expansion_factor=4, l1_coefficient=0.5)
    assert isinstance(config.params, gated_sae.GatedParams) and config.l1_coefficient == 0.5
    assert sk.SAEConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="l1_coefficient=nan"):
        sk.SAEConfig(arch="gated", l1_coefficient=float("nan"))
    with pytest.raises(ConfigError, match="no setting.*'k'"):
        sk.SAEConfig(arch="gated", k=4)
    assert "gated" in sk.sae.archs()


@pytest.mark.parametrize("background", [False, True])
def test_a_plugin_architecture_trains_saves_loads_and_exports(ws, tmp_path, background):
    store = toy_store()
    config = sk.SAEConfig(arch="gated", expansion_factor=4, l1_coefficient=0.02)
    job = sk.train(store, "toy", config, quick(total_tokens=60_000), background=background, progress=False)
    sae = job.result()
    assert type(sae) is gated_sae.GatedSAE and sae.d_sae == 64
    metrics = job.metrics()
    assert metrics["fvu"].dropna().iloc[-1] < 0.5 * metrics["fvu"].dropna().iloc[0]
    evaluation = job.info()["result"]["saes"][0]["eval"]
    assert evaluation["fvu"] < 0.5 and evaluation["l0"] < 64

    x = store.read("toy", 0, 200)
    back = sk.SAE.load(job.info()["result"]["saes"][0]["path"])
    torch.testing.assert_close(back(x), sae(x))
    lens = sae.to_saelens(tmp_path / "lens", hook_name="toy")
    cfg = json.loads((lens / "cfg.json").read_text())
    assert cfg["architecture"] == "gated" and cfg["metadata"]["hook_name"] == "toy"
    again = sk.SAE.from_pretrained(lens)
    assert type(again) is gated_sae.GatedSAE
    torch.testing.assert_close(again.encode(x), sae.encode(x), rtol=1e-5, atol=1e-5)
