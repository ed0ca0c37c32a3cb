"""The sparse autograd paths equal dense autograd with the same selection."""

import pytest
import torch
import torch.nn.functional as F

import saekit as sk
from saekit.sae.model import TrainingState
from saekit.sae.sparse import Codes, row_dots, sparse_decode


def _dense_reference(sae, x, mask, dead, k_aux):
    sae_in = x - sae.b_dec
    pre = F.linear(sae_in, sae.W_enc, sae.b_enc)
    z = (pre * mask).relu()
    x_hat = z @ sae.W_dec + sae.b_dec
    loss = (x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    residual = (x - x_hat).detach()
    dead_pre = pre[:, dead]
    with torch.no_grad():
        chosen = dead_pre.topk(k_aux, dim=1).indices
    aux_mask = torch.zeros_like(dead_pre, dtype=torch.bool).scatter_(1, chosen, True)
    residual_hat = (dead_pre * aux_mask).relu() @ sae.W_dec[dead]
    return loss + sae.config.aux_k_coefficient * (residual_hat - residual).pow(2).sum() / residual.pow(2).sum()


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_sparse_gradients_equal_dense_autograd(arch):
    torch.manual_seed(0)
    sae = sk.SAE.from_config(sk.SAEConfig(arch=arch, d_in=32, d_sae=128, k=4, aux_k=8))
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(0, 0.1)
    x = torch.randn(64, 32)
    dead = torch.zeros(128, dtype=torch.bool)
    dead[:40] = True
    out = sae.training_forward(x, TrainingState(dead=dead))
    out.loss.backward()
    sparse_grads = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()
    pre = F.linear(x - sae.b_dec, sae.W_enc, sae.b_enc).detach()
    if arch == "topk":
        mask = torch.zeros_like(pre, dtype=torch.bool).scatter_(1, pre.topk(4, dim=1).indices, True)
    else:  # the k * B largest of the whole batch
        mask = torch.zeros(pre.numel(), dtype=torch.bool)
        mask[pre.flatten().topk(4 * 64).indices] = True
        mask = mask.view_as(pre)
    reference = _dense_reference(sae, x, mask, dead, 8)
    reference.backward()
    assert float(out.loss.detach()) == pytest.approx(float(reference.detach()), rel=1e-5)
    for name, p in sae.named_parameters():
        torch.testing.assert_close(sparse_grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert int(out.fired.sum()) == int((mask & (pre > 0)).sum())


def test_batchtopk_selection_is_exact_when_rows_hold_many():
    """One row holding far more than its share still gets all its entries (candidates grow)."""
    torch.manual_seed(1)
    sae = sk.SAE.from_config(sk.SAEConfig(arch="batchtopk", d_in=8, d_sae=64, k=2))
    pre = torch.randn(16, 64)
    pre[3] += 10  # row 3 wins almost every slot
    codes, values = sae._select(pre)
    expected = pre.flatten().topk(32).values.sort().values
    torch.testing.assert_close(values.sort().values, expected)
    assert (codes.rows[1:] >= codes.rows[:-1]).all()  # row-sorted
    assert int((codes.rows == 3).sum()) > 4
    torch.testing.assert_close(pre[codes.rows, codes.cols], values)


def test_batchtopk_selection_with_ties_does_not_depend_on_the_batches_before():
    """Values tied at the cut are taken first by row, then latent, whatever candidate count earlier batches
    left: a resumed run, which starts with the default count, selects what the uninterrupted run did."""
    torch.manual_seed(3)
    sae = sk.SAE.from_config(sk.SAEConfig(arch="batchtopk", d_in=8, d_sae=64, k=2))
    pre = torch.randn(16, 64) - 10
    pre[:, 5] = 0.25  # latents 5 and 9 tie on every row: 30 ties for the 12 slots row 2 leaves
    pre[:, 9] = 0.25
    pre[2, :20] = torch.linspace(1, 2, 20)  # row 2 alone needs more than the default candidates
    picks = []
    for m in (4, 8, 64):
        sae._candidates = m
        codes, values = sae._select(pre)
        picks.append((codes.rows, codes.cols, values))
    for rows, cols, values in picks[1:]:
        assert torch.equal(rows, picks[0][0]) and torch.equal(cols, picks[0][1]) and torch.equal(values, picks[0][2])
    rows, cols, values = picks[0]
    assert len(values) == 32 and int((rows == 2).sum()) == 20
    tied = (values == 0.25).nonzero().squeeze(1)  # the 12 ties taken: the first rows, latent 5 before 9
    assert [(int(rows[i]), int(cols[i])) for i in tied] == [(r, c) for r in (0, 1, 3, 4, 5, 6) for c in (5, 9)]


def test_batchtopk_selection_is_the_brute_force_one_with_ties_and_signed_zeros():
    """The ``k * B`` entries taken are those of a plain sort: value (larger first, -0.0 equal to 0.0), then row,
    then latent; whatever the candidate count it starts with; in (row, latent) order, values as they were."""
    g = torch.Generator().manual_seed(0)
    for case in range(60):
        b, d, k = int(torch.randint(1, 12, (1,), generator=g)), int(torch.randint(3, 40, (1,), generator=g)), 2
        sae = sk.SAE.from_config(sk.SAEConfig(arch="batchtopk", d_in=4, d_sae=d, k=k))
        pre = torch.round(torch.randn(b, d, generator=g) * 2) / 2  # ties everywhere
        pre[torch.rand(b, d, generator=g) < 0.3] = -0.0
        pre[torch.rand(b, d, generator=g) < 0.1] += 4 if case % 2 else 0  # some rows hold many
        sae._candidates = int(torch.randint(k, d + 1, (1,), generator=g))
        codes, values = sae._select(pre)
        flat = pre.reshape(-1).tolist()
        taken = sorted(sorted(range(b * d), key=lambda i: (-flat[i], i))[:b * k])
        assert codes.rows.tolist() == [i // d for i in taken], case
        assert codes.cols.tolist() == [i % d for i in taken], case
        assert torch.equal(values.view(torch.int32), pre.reshape(-1)[taken].view(torch.int32)), case


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka_batchtopk"])
def test_batchtopk_selects_from_bfloat16_pre_activations_as_from_their_float32_values(arch):
    """With ``encoder_dtype="bfloat16"`` (the default on a GPU for large SAEs) the candidates are bfloat16: the
    entries taken are those their float32 values give (the conversion is exact), NaN first as ``topk`` has it;
    a training step runs."""
    torch.manual_seed(0)
    sae = sk.SAE.from_config(sk.SAEConfig(arch=arch, d_in=32, d_sae=256, k=8, encoder_dtype="bfloat16"))
    pre = (torch.randn(16, 256) * 4).bfloat16()  # bfloat16 rounding: ties everywhere
    pre[3, 7] = float("nan")
    codes, values = sae._select(pre)
    sae._candidates = 16
    exact, _ = sae._select(pre.float())
    assert values.dtype == torch.bfloat16 and torch.equal(codes.rows, exact.rows) and torch.equal(codes.cols, exact.cols)
    assert (3, 7) in list(zip(codes.rows.tolist(), codes.cols.tolist()))
    dead = torch.zeros(256, dtype=torch.bool)
    dead[:100] = True
    out = sae.training_forward(torch.randn(64, 32), TrainingState(dead=dead, metrics=False))
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.l0 is None and "auxk" in out.extra


def test_row_dots_and_decode_match_dense():
    torch.manual_seed(2)
    a, w = torch.randn(10, 6), torch.randn(20, 6)
    idx = torch.randint(0, 20, (10, 3))
    codes = Codes.from_topk(idx, 20)
    torch.testing.assert_close(row_dots(a, w, codes), (a[:, None, :] * w[idx]).sum(-1).flatten())
    values = torch.randn(30)
    torch.testing.assert_close(sparse_decode(values, w, codes), codes.dense(values) @ w)


def test_a_training_step_makes_no_host_sync_a_gpu_would_wait_for():
    """On a GPU the host waits whenever a step reads a value back or sizes an output by the data (``bincount``,
    boolean masks, ``nonzero``, ``bool(tensor)``): counted on this CPU, per architecture (issue 25). TopK makes
    none until a latent can be dead (one, for the auxiliary loss, after); BatchTopK's exact selection one for each
    candidate count it tries (here two at its first batch, then one; Matryoshka's prefixes add none); ReLU and
    JumpReLU none. ``count`` gives ``bincount``'s result."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from simulated_cuda import counting_syncs

    from saekit.sae.model import TrainingState
    from saekit.sae.sparse import count

    index = torch.randint(0, 50, (1000,))
    assert torch.equal(count(index, 64), torch.bincount(index, minlength=64))
    where = torch.rand(1000) > 0.5
    assert torch.equal(count(index, 64, where), torch.bincount(index[where], minlength=64))
    expected = {"topk": (0, 1), "batchtopk": (2, 2), "relu": (0, 0), "jumprelu": (0, 0),
                "matryoshka_batchtopk": (2, 2)}  # its prefixes add none
    for arch, (early, later) in expected.items():
        sae = sk.SAE.from_config(sk.SAEConfig(arch=arch, d_in=32, d_sae=256, **({"k": 8} if "topk" in arch else {})))
        x = torch.randn(64, 32)
        for dead, wanted in ((None, early), (torch.zeros(256, dtype=torch.bool), later)):
            with counting_syncs() as seen:
                sae.training_forward(x, TrainingState(dead=dead)).loss.backward()
                sae.remove_parallel_decoder_grad()
                sae.normalize_decoder()
            assert len(seen) == wanted, (arch, dead is not None, seen)
