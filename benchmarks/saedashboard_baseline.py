"""Baseline timing of SAEDashboard (PyPI `sae-dashboard`) feature-dashboard generation on CPU.

Measures, for a random GPT-2-shaped TransformerLens model (d_model 256, 6 layers, 8 heads,
d_vocab 50257, n_ctx 128, seed 0) and a random SAELens ReLU SAE (d_in 256, d_sae 2048) at
`blocks.3.hook_resid_post`, on 256 x 128 random tokens (32768 tokens, seed 0):

  run_s     -- SaeVisRunner(SaeVisConfig(...)).run(sae, model, tokens) for ALL latents, with the
               default feature-centric layout (feature tables, activation + logit histograms,
               logit table, top-activation and quantile sequence groups);
  html_64_s -- save_feature_centric_vis(data, path, include_only=first 64 latents).

Everything is built from configs; nothing is downloaded (the tokenizer is a synthetic WordLevel
vocab, which is all the HTML writer needs). W_U is rescaled x4 (std 0.05 -> 0.2) so per-latent logit
effects are O(1) as in a trained model: with TransformerLens' default init they all stay below 0.3,
and SAEDashboard's "5 ticks" histogram code then picks a 1e-6 tick spacing (~2e5 ticks per logit
histogram), which dominates run time and makes the HTML ~1 MB per latent. --raw-wu keeps that case.

`phases_s` splits run_s by wrapping two library methods with timers: fwd_encode_corr (model
forward + SAE encode + rolling correlations, repeated once per feature batch) and sequences (per-latent top/quantile sequence extraction); other = the rest.

Setup (separate venv: sae-dashboard 0.8.0 pins transformer-lens<3, transformers<4.57, numpy<2):
    python3.11 -m venv .venv-dashboard && .venv-dashboard/bin/pip install torch==2.13.0
    echo torch==2.13.0 > /tmp/c.txt   # keep the CPU torch
    .venv-dashboard/bin/pip install -c /tmp/c.txt --no-deps sae-dashboard==0.8.0 decode-clt==0.0.1
    .venv-dashboard/bin/pip install -c /tmp/c.txt "dataclasses-json>=0.6.4,<0.7" "datasets>=3,<4" \
        "eindex-callum>=0.1,<0.2" einops "hf-transfer>=0.1.9,<0.2" "jaxtyping>=0.2.28,<0.3" \
        "matplotlib>=3.8.4,<4" "rich>=13.7.1,<14" "sae-lens>=6.8,<7" "safetensors>=0.4.3,<0.5" \
        "transformer-lens>=2.2,<3" "transformers<4.57" "typer>=0.12.3,<0.13" "pyarrow<21"
  (decode-clt, a CLT-only dependency, goes in without its deps: they pull torchvision/torchaudio/nnsight/wandb.)
Run:
    .venv-dashboard/bin/python benchmarks/saedashboard_baseline.py            # full size
    .venv-dashboard/bin/python benchmarks/saedashboard_baseline.py --quick    # 32 seqs, 256 latents
Prints one JSON line.
"""

import argparse
import json
import tempfile
import time
from collections import defaultdict
from importlib.metadata import version
from pathlib import Path

import torch
from sae_lens import StandardSAE, StandardSAEConfig
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import PreTrainedTokenizerFast

from sae_dashboard.data_writing_fns import save_feature_centric_vis
from sae_dashboard.feature_data_generator import FeatureDataGenerator
from sae_dashboard.sae_vis_data import SaeVisConfig
from sae_dashboard.sae_vis_runner import SaeVisRunner
from sae_dashboard.sequence_data_generator import SequenceDataGenerator

D_MODEL, D_VOCAB, N_CTX, HOOK = 256, 50257, 128, "blocks.3.hook_resid_post"
PHASES: dict[str, float] = defaultdict(float)


def timed(cls, name, phase):
    """Wrap cls.name so its wall time is accumulated in PHASES[phase]."""
    fn = getattr(cls, name)

    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            PHASES[phase] += time.perf_counter() - t

    setattr(cls, name, wrapper)


def build(n_seqs, d_sae, wu_scale=4.0):
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        d_model=D_MODEL, n_layers=6, n_heads=8, d_head=D_MODEL // 8, d_mlp=4 * D_MODEL,
        d_vocab=D_VOCAB, n_ctx=N_CTX, act_fn="gelu", normalization_type="LN", seed=0,
        device="cpu",
    )
    model = HookedTransformer(cfg).eval()
    model.unembed.W_U.data.mul_(wu_scale)
    vocab = {f"tok{i}": i for i in range(D_VOCAB)}
    model.tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="tok0"))
    )
    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=D_MODEL, d_sae=d_sae, device="cpu"))
    sae.cfg.metadata.hook_name = HOOK
    sae.eval()
    torch.manual_seed(0)
    tokens = torch.randint(0, D_VOCAB, (n_seqs, N_CTX))
    return model, sae, tokens


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="32 sequences, 256 latents")
    ap.add_argument("--raw-wu", action="store_true", help="keep TL's default W_U scale (see above)")
    args = ap.parse_args()
    n_seqs, d_sae = (32, 256) if args.quick else (256, 2048)
    torch.set_grad_enabled(False)
    model, sae, tokens = build(n_seqs, d_sae, 1.0 if args.raw_wu else 4.0)

    timed(FeatureDataGenerator, "get_feature_data", "fwd_encode_corr")
    timed(SequenceDataGenerator, "get_sequences_data", "sequences")

    cfg = SaeVisConfig(hook_point=HOOK, features=list(range(d_sae)), device="cpu")
    t0 = time.perf_counter()
    data = SaeVisRunner(cfg).run(encoder=sae, model=model, tokens=tokens)
    run_s = time.perf_counter() - t0
    assert len(data.feature_data_dict) == d_sae

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "dash.html"
        t0 = time.perf_counter()
        save_feature_centric_vis(data, out, include_only=list(range(64)))
        html_64_s = time.perf_counter() - t0
        html_bytes = out.stat().st_size

    seq_cfg = cfg.feature_centric_layout.seq_cfg
    print(json.dumps({
        "saedashboard_version": version("sae-dashboard"),
        "sae_lens_version": version("sae-lens"),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "tokens": tokens.numel(),
        "d_sae": d_sae,
        "wu_std": round(model.W_U.std().item(), 4),
        "mean_frac_nonzero": round(sum(data.feature_stats.frac_nonzero) / d_sae, 4),
        "run_s": round(run_s, 3),
        "html_64_s": round(html_64_s, 3),
        "html_64_bytes": html_bytes,
        "phases_s": {
            **{k: round(v, 3) for k, v in PHASES.items()},
            "other": round(run_s - sum(PHASES.values()), 3),
        },
        "settings": {
            "minibatch_size_features": cfg.minibatch_size_features,
            "minibatch_size_tokens": cfg.minibatch_size_tokens,
            "quantile_feature_batch_size": cfg.quantile_feature_batch_size,
            "top_acts_group_size": seq_cfg.top_acts_group_size,
            "n_quantiles": seq_cfg.n_quantiles,
            "quantile_group_size": seq_cfg.quantile_group_size,
            "buffer": seq_cfg.buffer,
            "act_hist_bins": cfg.feature_centric_layout.act_hist_cfg.n_bins,
            "logits_hist_bins": cfg.feature_centric_layout.logits_hist_cfg.n_bins,
            "logits_table_rows": cfg.feature_centric_layout.logits_table_cfg.n_rows,
            "feature_tables_rows": cfg.feature_centric_layout.feature_tables_cfg.n_rows,
            "use_dfa": cfg.use_dfa,
            "dtype": cfg.dtype,
            "device": cfg.device,
        },
    }))


if __name__ == "__main__":
    main()
