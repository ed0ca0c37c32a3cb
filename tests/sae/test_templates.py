"""sk.templates: kept in the registry, listed, changed, duplicated, and moved between workspaces as JSON."""

import pytest

import saekit as sk
from saekit.errors import ConfigError


def test_template_life_cycle(ws):
    topk = sk.SAEConfig(arch="topk", expansion_factor=8, k=32)
    tc = sk.TrainConfig(total_tokens=1_000_000, lr=1e-4, adam_betas=(0.9, 0.99))
    saved = sk.templates.save("topk-8x", topk, tc, description="a first try")
    assert saved.sae_config == topk and saved.train_config == tc and saved.created_at is not None
    with pytest.raises(ConfigError, match="exists"):
        sk.templates.save("topk-8x", topk)
    sk.templates.save("relu", sk.SAEConfig(arch="relu", l1_coefficient=3.0))
    sk.templates.favourite("relu")
    assert [r["name"] for r in sk.templates.list().rows] == ["relu", "topk-8x"]  # favourites first
    updated = sk.templates.update("topk-8x", train_config=tc.replace(lr=3e-4), description="faster")
    assert updated.train_config.lr == 3e-4 and updated.description == "faster" and updated.sae_config == topk
    assert updated.created_at == saved.created_at and updated.updated_at >= saved.updated_at
    copy = sk.templates.duplicate("topk-8x", "topk-8x-b")
    assert copy.train_config == updated.train_config and not copy.favourite
    sk.templates.delete("topk-8x-b")
    with pytest.raises(ConfigError, match="no template named 'topk-8x-b'; saved templates: \\['relu', 'topk-8x'\\]"):
        sk.templates.get("topk-8x-b")
    with pytest.raises(ConfigError, match="must be an sk.SAEConfig"):
        sk.templates.save("bad", {"arch": "topk"})
    with pytest.raises(ConfigError, match="non-empty"):
        sk.templates.save("  ", topk)
    assert "topk-8x" in sk.templates.list()._repr_html_()


def test_json_round_trip_is_exact(ws, tmp_path):
    sk.templates.save("a", sk.SAEConfig(arch="jumprelu", d_sae=4096, l0_coefficient=0.5), sk.TrainConfig(seed=3),
                      description="jump", favourite=True)
    sk.templates.save("b", sk.SAEConfig(arch="batchtopk", k=16, encoder_dtype="bfloat16"),
                      sk.TrainConfig(lr_decay="cosine", lr_warmup=0.05))
    text = sk.templates.export_json()
    other = sk.Workspace(tmp_path / "other")
    imported = sk.templates.import_json(text, workspace=other)
    assert [t.name for t in imported] == ["a", "b"]
    assert sk.templates.export_json(workspace=other) == text
    for name in ("a", "b"):
        mine, theirs = sk.templates.get(name), sk.templates.get(name, workspace=other)
        assert (mine.sae_config, mine.train_config, mine.description, mine.favourite) == \
               (theirs.sae_config, theirs.train_config, theirs.description, theirs.favourite)
    with pytest.raises(ConfigError, match="\\['a', 'b'\\] exist"):
        sk.templates.import_json(text, workspace=other)
    sk.templates.import_json(text, workspace=other, overwrite=True)
    with pytest.raises(ConfigError, match="not a saekit templates document"):
        sk.templates.import_json('{"templates": []}')
    with pytest.raises(ConfigError, match="has no field"):
        sk.templates.import_json(text.replace('"seed"', '"sead"'), workspace=tmp_path / "third")
