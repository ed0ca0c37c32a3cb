"""Hook points of every supported architecture, checked against the model's own hidden states."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from saekit.errors import ConfigError, HookPointError
from saekit.models import LanguageModel
from saekit.models.hookpoints import get_module
from saekit.models.tiny import tiny_config

ARCHS = ["gpt2", "gpt_neox", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi", "phi3"]


def build(arch, **overrides):
    torch.manual_seed(0)
    config = tiny_config(arch, vocab_size=97, d_model=32, n_layers=3, n_heads=4, **overrides)
    model = AutoModelForCausalLM.from_config(config).eval()
    return LanguageModel(model, None, name=f"tiny-{arch}", ref={})


def inputs():
    return torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("arch,overrides", [(a, {}) for a in ARCHS] + [("gpt_neox", {"use_parallel_residual": False})])
def test_hook_points_match_hidden_states_and_add_up(arch, overrides):
    lm = build(arch, **overrides)
    ids = inputs()
    assert lm.hook_points() == [f"blocks.{i}.{s}" for i in range(3)
                                for s in ("resid_pre", "resid_post", "attn_out", "mlp_in", "mlp_out")]
    cache = lm.run_with_cache(ids, lm.hook_points())
    with torch.no_grad():
        hidden = lm.model(ids, output_hidden_states=True).hidden_states
        last_normed = get_module(lm.model, lm.arch.final_norm)(cache["blocks.2.resid_post"])
    assert len(hidden) == 4
    for i in range(3):
        post, pre = cache[f"blocks.{i}.resid_post"], cache[f"blocks.{i}.resid_pre"]
        # HF's last hidden state has the final norm applied; resid_post of the last block does not
        torch.testing.assert_close(post if i < 2 else last_normed, hidden[i + 1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(pre, hidden[i], rtol=1e-5, atol=1e-5)
        total = pre + cache[f"blocks.{i}.attn_out"] + cache[f"blocks.{i}.mlp_out"]
        torch.testing.assert_close(total, post, rtol=1e-4, atol=1e-5)
        # mlp_in is what the MLP reads: the MLP of it is the branch (Gemma 2 normalises the branch after)
        block = lm.blocks[i]
        with torch.no_grad():
            branch = get_module(block, lm.arch.module_of("mlp_in"))(cache[f"blocks.{i}.mlp_in"])
            if lm.arch.mlp_input is not None:
                branch = get_module(block, lm.arch.mlp)(branch)
        torch.testing.assert_close(branch, cache[f"blocks.{i}.mlp_out"], rtol=1e-4, atol=1e-5)
    assert lm.arch.parallel == (arch == "phi" or (arch == "gpt_neox" and overrides.get("use_parallel_residual", True)))


def test_unknown_architecture_gets_residual_hook_points():
    from transformers import OPTConfig

    torch.manual_seed(0)
    config = OPTConfig(vocab_size=97, hidden_size=32, num_hidden_layers=3, ffn_dim=64, num_attention_heads=4,
                       word_embed_proj_dim=32, max_position_embeddings=64)
    lm = LanguageModel(AutoModelForCausalLM.from_config(config).eval(), None, name="tiny-opt", ref={})
    assert lm.hook_points() == [f"blocks.{i}.{s}" for i in range(3) for s in ("resid_pre", "resid_post")]
    cache = lm.run_with_cache(inputs(), ["blocks.0.resid_post", "blocks.1.resid_post"])
    with torch.no_grad():
        hidden = lm.model(inputs(), output_hidden_states=True).hidden_states
    torch.testing.assert_close(cache["blocks.0.resid_post"], hidden[1])
    torch.testing.assert_close(cache["blocks.1.resid_post"], hidden[2])
    with pytest.raises(HookPointError, match="blocks.0.attn_out"):
        lm.run_with_cache(inputs(), "blocks.0.attn_out")


def test_forward_stops_at_the_deepest_block_needed():
    lm = build("llama")
    calls = []
    for i, block in enumerate(lm.blocks):
        block.register_forward_hook(lambda m, a, o, i=i: calls.append(i))
    head_calls = []
    lm.model.lm_head.register_forward_hook(lambda m, a, o: head_calls.append(1))
    cache = lm.run_with_cache(inputs(), ["blocks.0.resid_post", "blocks.1.mlp_out"])
    assert calls == [0, 1] and head_calls == []  # block 2 and the unembedding never ran
    assert set(cache) == {"blocks.0.resid_post", "blocks.1.mlp_out"}
    calls.clear()
    lm.run_with_cache(inputs(), "blocks.0.resid_post", stop_at=False)
    assert calls == [0, 1, 2] and head_calls == [1]
    with pytest.raises(ConfigError, match="stop_at=7"):
        lm.run_with_cache(inputs(), "blocks.0.resid_post", stop_at=7)


def test_hooks_read_and_replace_activations():
    lm = build("gpt2")
    ids = inputs()
    with torch.no_grad():
        clean = lm.model(ids).logits
    seen = {}
    with lm.hooks({"blocks.1.resid_post": lambda x: torch.zeros_like(x),
                   "blocks.2.resid_pre": lambda x: seen.setdefault("pre", x.clone())}):
        with torch.no_grad():
            patched = lm.model(ids).logits
    assert torch.count_nonzero(seen["pre"]) == 0  # the next block received the replacement
    assert not torch.allclose(clean, patched)
    with torch.no_grad():  # hooks are gone after the block
        torch.testing.assert_close(lm.model(ids).logits, clean)
    with lm.hooks({"blocks.0.attn_out": lambda x: x * 0}):  # a tuple output (attention) is replaced too
        zeroed = lm.run_with_cache(ids, ["blocks.0.attn_out", "blocks.0.resid_pre", "blocks.0.resid_post"])
    # the cache hook sees the replaced branch, and the residual no longer includes attention
    assert torch.count_nonzero(zeroed["blocks.0.attn_out"]) == 0
    for arch in ("gpt2", "llama"):  # the MLP's input is replaced too (GPT-2's MLP takes hidden_states, Llama's x)
        lm = build(arch)
        with lm.hooks({"blocks.0.mlp_in": torch.zeros_like}):
            replaced = lm.run_with_cache(ids, ["blocks.0.mlp_in", "blocks.0.mlp_out"])
        with torch.no_grad():
            from_zeros = get_module(lm.blocks[0], lm.arch.mlp)(torch.zeros_like(replaced["blocks.0.mlp_in"]))
        assert torch.count_nonzero(replaced["blocks.0.mlp_in"]) == 0
        torch.testing.assert_close(replaced["blocks.0.mlp_out"], from_zeros)


def test_bad_hook_point_names_the_valid_ones():
    lm = build("llama")
    with pytest.raises(HookPointError) as info:
        lm.run_with_cache(inputs(), "blocks.40.resid_post")
    message = str(info.value)
    assert "'blocks.40.resid_post' is not a hook point of tiny-llama (3 blocks)" in message
    assert "blocks.{0..2}" in message and "resid_post" in message and "lm.hook_points()" in message
    with pytest.raises(HookPointError):
        with lm.hooks({"blocks.0.resid_mid": print}):
            pass
    assert all(not b._forward_hooks for b in lm.blocks)  # nothing was registered
