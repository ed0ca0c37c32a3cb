"""Loading models from local folders and GGUF files; memory checks; clear errors."""

import pytest
import torch

import saekit as sk
from saekit.errors import ConfigError, ModelLoadError
from saekit.models import loading


def test_local_folder_loads_with_reference_and_fingerprint(tiny_model_dir, tiny_lm):
    assert tiny_lm.n_layers == 4 and tiny_lm.d_model == 64 and tiny_lm.max_context == 256
    assert tiny_lm.device.type == "cpu" and tiny_lm.dtype == torch.float32
    assert tiny_lm.ref["name_or_path"] == str(tiny_model_dir)
    assert tiny_lm.ref["fingerprint"].startswith("local:")
    again = loading.load_model_from_ref(tiny_lm.ref, device="cpu")
    assert again.ref == tiny_lm.ref
    assert "tiny-llama" in repr(tiny_lm) and "4 blocks" in repr(tiny_lm)
    out = tiny_lm.generate("Return the", max_new_tokens=4, stop_at_eos=False)
    assert isinstance(out.text, str) and len(out.ids) == 4
    assert out.prompt_ids == tiny_lm.tokenizer("Return the")["input_ids"]
    assert out.text == tiny_lm.tokenizer.decode(out.ids, skip_special_tokens=True)
    assert not any(p.requires_grad for p in tiny_lm.model.parameters())


def test_dtype_and_device_choices(tiny_model_dir):
    lm = sk.load_model(tiny_model_dir, dtype="bfloat16", device="cpu")
    assert lm.dtype == torch.bfloat16 and lm.ref["dtype"] == "bfloat16"
    assert loading.resolve_dtype("auto", torch.device("cpu")) == torch.float32
    with pytest.raises(ConfigError, match="dtype='int3'"):
        sk.load_model(tiny_model_dir, dtype="int3")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            sk.load_model(tiny_model_dir, device="cuda")


def test_refuses_what_does_not_fit_with_the_figure(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(loading, "available_memory", lambda device: 1000)
    with pytest.raises(ModelLoadError) as info:
        sk.load_model(tiny_model_dir)
    assert "needs 834.2 KiB for its weights in float32, but cpu has 1000 B free" in str(info.value)
    assert "dtype='bfloat16'" in str(info.value)


def test_missing_models_give_one_clear_error(tmp_path, tiny_model_dir):
    with pytest.raises(ModelLoadError, match="does not exist"):
        sk.load_model(tmp_path / "nowhere")
    with pytest.raises(ModelLoadError, match="cannot load 'no-such-org/no-such-model'"):
        sk.load_model("no-such-org/no-such-model")  # offline: the hub cannot be reached
    with pytest.raises(ModelLoadError, match=r"gguf_file='x.gguf' is not in .* \(GGUF files there: none\)"):
        sk.load_model(tiny_model_dir, gguf_file="x.gguf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="as a local folder"):
        sk.load_model(tmp_path / "empty")


@pytest.mark.slow
def test_smollm2_gguf_loads_offline(smollm2):
    assert smollm2.n_layers == 30 and smollm2.d_model == 576
    assert smollm2.ref["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    ids = smollm2.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    cache = smollm2.run_with_cache(ids, ["blocks.6.resid_post", "blocks.6.resid_pre", "blocks.6.attn_out",
                                         "blocks.6.mlp_out"])
    with torch.no_grad():
        hidden = smollm2.model(ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(cache["blocks.6.resid_post"], hidden[7])
    total = cache["blocks.6.resid_pre"] + cache["blocks.6.attn_out"] + cache["blocks.6.mlp_out"]
    torch.testing.assert_close(total, cache["blocks.6.resid_post"], rtol=1e-4, atol=1e-4)
    assert "Paris" in smollm2.generate("The capital of France is", max_new_tokens=8).text
