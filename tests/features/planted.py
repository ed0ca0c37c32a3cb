"""A planted feature on the tiny model: an SAE whose latent PLANTED fires on exactly one token (shared by the
analysis tests, the browser tests and the screenshots)."""

import numpy as np
import torch

import saekit as sk

HOOK = "blocks.0.resid_pre"  # in a Llama the embedding itself: a function of the token alone
D_SAE = 32
PLANTED = 5  # the latent that fires on exactly one token


def tokens(lm, docs_file, n=300, workspace=None):
    return sk.tokenize(sk.load_corpus(docs_file), lm, context_length=64, max_documents=n, background=False,
                       progress=False, workspace=workspace).result()


def common_token(toks, lm) -> int:
    """The most frequent word token of the store (letters, not a special token)."""
    ids = toks["input_ids"][:][toks["attention_mask"][:].astype(bool)]
    counts = np.bincount(ids, minlength=len(lm.tokenizer))
    counts[lm.tokenizer.all_special_ids] = 0
    for token in np.argsort(-counts, kind="stable"):
        if lm.tokenizer.decode([int(token)]).strip().isalpha():
            return int(token)
    raise AssertionError("no word token")


def planted_sae(lm, token: int) -> sk.SAE:
    """A ReLU SAE whose latent PLANTED fires exactly on ``token`` (its encoder is the token's embedding, its
    bias halfway between that token's score and the best other one's) and whose decoder is the token's
    unembedding (so the logit lens should name it); the other latents are random directions."""
    emb = lm.model.get_input_embeddings().weight.detach().float()
    unit = emb[token] / emb[token].norm()
    scores = emb @ unit
    others = torch.cat([scores[:token], scores[token + 1:]]).max()
    g = torch.Generator().manual_seed(0)
    sae = sk.SAE.from_config(sk.SAEConfig(arch="relu", d_in=lm.d_model, d_sae=D_SAE))
    unembedding, scale = lm.unembedding()
    with torch.no_grad():
        sae.W_enc.copy_(torch.nn.functional.normalize(torch.randn(D_SAE, lm.d_model, generator=g), dim=1))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        sae.W_enc[PLANTED] = unit
        sae.b_enc[PLANTED] = -(scores[token] + others) / 2
        direction = unembedding[token].float() / (scale if scale is not None else 1)
        sae.W_dec[PLANTED] = direction / direction.norm()
    return sae


def planted_analysis(workspace, model_dir, docs_file, **kw):
    """Tokenize, extract HOOK and analyse the planted SAE in ``workspace``: (FeatureSet, token id)."""
    lm = sk.load_model(model_dir, device="cpu")
    toks = tokens(lm, docs_file, workspace=workspace)
    store = sk.extract(lm, toks, [HOOK], background=False, progress=False, workspace=workspace).result()
    token = common_token(toks, lm)
    feats = sk.analyze(planted_sae(lm, token), store, model=lm, background=False, progress=False,
                       workspace=workspace, **kw).result()
    return feats, token
