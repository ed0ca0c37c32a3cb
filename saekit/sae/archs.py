"""The built-in SAE architectures: each owns its activation rule and its training loss.

- ``relu``: ``z = relu(pre)``; loss = MSE + ``l1_coefficient`` * sum(z * ||W_dec row||) (Anthropic, 2024).
- ``topk``: the ``k`` largest pre-activations per token, ReLU'd; loss = FVU + ``aux_k_coefficient`` * AuxK,
  where AuxK reconstructs the residual from the top ``aux_k`` *dead* latents (Gao et al., 2024).
- ``batchtopk``: the ``k * B`` largest over the whole batch while training; a threshold (running mean of
  the smallest selected activation) at inference (Bussmann et al., 2024); AuxK as TopK.
- ``jumprelu``: ``z = pre * (pre > threshold)`` per latent, thresholds learned with straight-through
  (rectangle-kernel) gradients; loss = MSE + ``l0_coefficient`` * L0 (Rajamanoharan et al., 2024).

MSE is summed over ``d_in`` and averaged over tokens; FVU divides the squared error by the batch's
total variance. TopK and BatchTopK run on sparse codes (``sparse.py``): the decoder and the encoder's
backward touch only the selected latents.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from saekit.errors import ConfigError
from saekit.sae.config import JumpReLUParams, ReLUParams, SparseCodedParams
from saekit.sae.model import SAE, TrainingOutput, TrainingState, register_arch
from saekit.sae.sparse import Codes, count, gathered_linear, row_dots, sparse_decode


ENCODER_INIT_SCALE = 3 ** -0.5
"""TopK and BatchTopK start with ``W_enc = W_dec * ENCODER_INIT_SCALE``: the norm PyTorch's default linear
initialisation gives a row (sparsify's encoder starts there). Adam moves every weight by about the learning rate,
so a smaller encoder changes faster relative to its size: at d 512 / 8192 / k 32 on Gaussian rows, held-out
FVU after 60 steps was 0.682 with unit rows and 0.641 with this (sparsify: 0.641). `benchmarks/convergence.py`."""


def _float_order(values: torch.Tensor) -> torch.Tensor:
    """int64 numbers in the order of ``values`` (float32 or bfloat16): -0.0 equal to 0.0, as a comparison has them,
    and NaN above +inf, as ``topk`` ranks it."""
    exact = values.float() + 0.0  # bfloat16 to float32 changes no value
    bits = exact.view(torch.int32)
    order = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return order.masked_fill_(exact.isnan(), 2**31 - 1).long()


def _squared_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a - b).pow(2).sum()``, bit for bit, in one operator forward and one backward (a GPU launches fewer
    kernels: a small training step is bound by its launches)."""
    return F.mse_loss(a, b.expand_as(a), reduction="sum")


def _total_variance(x: torch.Tensor) -> torch.Tensor:
    return _squared_error(x, x.mean(0)).clamp_min(1e-12)


class _SparseCodedSAE(SAE):
    """Shared by TopK and BatchTopK: encoder forward once (dense), everything else on the selected entries."""

    uses_dead_latents = True  # AuxK

    LR_AT_16K = 8e-4
    """4x Gao et al.'s 2e-4 (sparsify's default). On SmolLM2-135M's layer 6 (d_sae 4608, k 32, batch 4096) held-out FVU
    after 60 steps fell from 0.376 to 0.128 and after one epoch (244 steps) from 0.105 to 0.058 (sparsify: 0.350 and
    0.118); a planted dictionary at d_sae = atoms is recovered 0.996 instead of 0.848 (with `dead_after`, a twentieth
    of the run). `benchmarks/convergence.py`."""

    def __init__(self, config, *, device=None):
        super().__init__(config, device=device)
        with torch.no_grad():
            self.W_enc.mul_(ENCODER_INIT_SCALE)

    def _select(self, pre: torch.Tensor) -> tuple[Codes, torch.Tensor]:
        raise NotImplementedError

    BF16_FROM = 2**24  # d_in * d_sae from which "auto" selects in bfloat16 on a GPU (an H200 measured: docs/gpu.md)

    def encoder_dtype(self) -> torch.dtype:
        """The dtype of the encoder's matmul: ``encoder_dtype="auto"`` is bfloat16 on a GPU when the matmul is
        large (``d_in * d_sae >= 2**24``, where it is the step's largest cost), float32 otherwise."""
        name = self.config.encoder_dtype
        if name == "auto":
            name = "bfloat16" if self.W_enc.is_cuda and self.d_in * self.d_sae >= self.BF16_FROM else "float32"
        return torch.bfloat16 if name == "bfloat16" else torch.float32

    def _pre_for_selection(self, sae_in: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if self.encoder_dtype() == torch.bfloat16:
                return F.linear(sae_in.bfloat16(), self.W_enc.bfloat16(), self.b_enc.bfloat16())
            return torch.addmm(self.b_enc, sae_in, self.W_enc.t())

    def _entries(self, sae_in: torch.Tensor, pre: torch.Tensor, codes: Codes, values: torch.Tensor) -> torch.Tensor:
        """Differentiable pre-activations at the entries (recomputed in float32 when the matmul was bf16).
        ``sae_in`` is the shifted input without gradient; the shift's gradient goes to ``b_dec``."""
        if values.dtype != torch.float32:
            with torch.no_grad():
                values = row_dots(sae_in, self.W_enc, codes) + self.b_enc[codes.cols]
        return gathered_linear(values, sae_in, self.W_enc, self.b_enc, codes,
                               shift=None if self.config.transcoder else self.b_dec)

    def training_forward(self, x: torch.Tensor, state: TrainingState, target: torch.Tensor | None = None
                         ) -> TrainingOutput:
        y = x if target is None else target
        sae_in = self._centered(x).detach()
        pre = self._pre_for_selection(sae_in)
        codes, values = self._select(pre)
        acts = self._entries(sae_in, pre, codes, values).relu()
        x_hat, losses = self._reconstruct(y, acts, codes, self._output_base(x))
        loss = losses.pop("fvu")
        for more in losses.values():  # what an architecture adds (Matryoshka: each prefix's FVU)
            loss = loss + more
        extra = {name: value.detach() for name, value in losses.items()}
        dead_ids = None if state.dead is None else state.dead.nonzero().squeeze(1)  # the step's one read-back
        if dead_ids is not None and len(dead_ids):
            auxk = self._auxk(sae_in, pre, dead_ids, (y - x_hat).detach())
            loss = loss + self.config.aux_k_coefficient * auxk
            extra["auxk"] = auxk.detach()
        acts = acts.detach()
        active = acts > 0
        fired = count(codes.cols, self.d_sae, active)
        if not state.metrics:
            return TrainingOutput(loss, x_hat.detach(), fired, None, extra)
        return TrainingOutput(loss, x_hat.detach(), fired, active.sum() / len(x), {**extra, "l1": acts.sum() / len(x)})

    def _reconstruct(self, y: torch.Tensor, acts: torch.Tensor, codes: Codes, base: torch.Tensor
                     ) -> tuple[torch.Tensor, dict]:
        """The prediction of ``y`` (the input, or a transcoder's target) from the code plus ``base`` (``b_dec``,
        and a skip-transcoder's linear path), and the losses that score it (``fvu``, and whatever a subclass
        adds: their sum is trained, and each but ``fvu`` is logged as a metric)."""
        y_hat = sparse_decode(acts, self.W_dec, codes) + base
        return y_hat, {"fvu": _squared_error(y_hat, y) / _total_variance(y)}

    def _auxk(self, sae_in, pre, dead_ids, residual) -> torch.Tensor:
        """Reconstruct the residual from the top ``aux_k`` dead latents (``dead_ids``: their gradients revive
        them); the squared error is normalized by the residual's, as in Gao et al.'s code."""
        k_aux = self.config.aux_k or max(1, self.d_out // 2)
        k = min(k_aux, len(dead_ids))
        values, local = pre[:, dead_ids].topk(k, dim=1, sorted=False)
        codes = Codes.from_topk(dead_ids[local], self.d_sae, keep_layout=False)  # k follows the dead count
        acts = self._entries(sae_in, pre, codes, values.reshape(-1)).relu()
        residual_hat = sparse_decode(acts, self.W_dec, codes)
        return _squared_error(residual_hat, residual) / residual.pow(2).sum().clamp_min(1e-12)


@register_arch("topk", SparseCodedParams)
class TopKSAE(_SparseCodedSAE):
    saelens_architecture, saelens_imports = "topk", ("topk",)

    @classmethod
    def saelens_settings(cls, cfg):
        return {"k": int(cfg.get("k") or (cfg.get("activation_fn_kwargs") or {})["k"])}

    def saelens_cfg(self):
        return {"k": self.config.k}

    def _select(self, pre):
        values, indices = pre.topk(self.config.k, dim=1, sorted=False)
        return Codes.from_topk(indices, self.d_sae), values.reshape(-1)

    def encode(self, x):
        pre = self.pre_activations(x)
        values, indices = pre.topk(self.config.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, indices, values.relu())

    def encode_sparse(self, x):
        pre = self.pre_activations(x)
        values, indices = pre.topk(self.config.k, dim=-1, sorted=False)
        indices, by_latent = indices.sort(dim=-1)  # entries by row, then latent (as encode_sparse promises)
        values = values.gather(-1, by_latent)
        rows = torch.arange(len(pre), device=pre.device).repeat_interleave(self.config.k)
        values, latents = values.reshape(-1), indices.reshape(-1)
        keep = (values > 0).nonzero().squeeze(1)  # one read-back on a GPU, not one per tensor
        return rows[keep], latents[keep], values[keep]


@register_arch("batchtopk", SparseCodedParams)
class BatchTopKSAE(_SparseCodedSAE):
    """Exported to SAELens as the JumpReLU it is at inference (one threshold for every latent), as SAELens does."""

    THRESHOLD_MOMENTUM = 0.99
    saelens_architecture = "jumprelu"
    threshold: torch.Tensor  # a buffer, registered in __init__

    def saelens_tensors(self):
        return {**super().saelens_tensors(), "threshold": self.threshold.detach().clamp_min(0).expand(self.d_sae).clone()}

    def __init__(self, config, *, device=None):
        super().__init__(config, device=device)
        self.register_buffer("threshold", torch.tensor(-1.0, device=device))  # < 0: not estimated yet

    def _select(self, pre):
        """The ``k * B`` largest entries of the batch, exactly and whatever the candidates were: each row's
        top ``m`` are the candidates (enough unless a row's ``m`` all reach the cut, then ``m`` doubles);
        every entry above the cut is taken, and of those equal to it the first by row, then latent. (Float
        ties at the cut happen: twice in the 1,200 steps of the kill test's run. Left to ``topk``, which
        one it took depended on ``m``, so on the batches before, and a resumed run parted from an
        uninterrupted one.) One ``topk`` of integer keys (the value's order, then the entry's place) takes the
        entries, ties included, so a step reads one number back (whether ``m`` sufficed), not four."""
        b, d_sae = pre.shape
        total = self.config.k * b
        m = min(getattr(self, "_candidates", 2 * self.config.k), d_sae)
        while True:
            if b * m > 2**32:  # an entry's place takes the low 32 bits of its key
                raise ConfigError(f"BatchTopK selects among at most 2**32 candidates a batch; this batch of {b:,} rows "
                                  f"needs {b * m:,}", suggestion="train with a smaller batch_size")
            candidates, cols = pre.topk(m, dim=1, sorted=False)
            cols, by_latent = cols.sort(dim=1)  # each row's candidates by latent: the flat place is (row, latent)
            candidates = candidates.gather(1, by_latent)
            del by_latent
            # each candidate's key, made in place: its value's order in the high 32 bits, then 2**32 - 1 - its
            # place in the low ones (larger first; of equal values the first place)
            keys = _float_order(candidates).reshape(-1)
            keys.bitwise_left_shift_(32).add_(2**32 - 1).sub_(torch.arange(b * m, device=pre.device))
            top = keys.topk(total, sorted=False).values
            cut = top.min() >> 32 << 32  # the smallest value taken, as high bits: key >= cut where value >= it
            if m == d_sae or int((keys.view(b, m) >= cut).sum(1).max()) < m:
                break
            m = min(2 * m, d_sae)
        self._candidates = m  # the next batch starts with what sufficed
        taken = (2**32 - 1 - (top & (2**32 - 1))).sort().values  # places in (row, latent) order
        rows = taken // m
        codes = Codes(rows, cols.reshape(-1)[taken], b, d_sae)
        values = candidates.reshape(-1)[taken]
        self._update_threshold(values)
        return codes, values

    @torch.no_grad()
    def _update_threshold(self, values: torch.Tensor) -> None:
        """The running threshold: the smallest positive selected value, averaged with momentum (the first one
        taken as it is); a batch with none leaves it. On the device, with no host sync."""
        smallest = torch.where(values > 0, values, torch.inf).min().float() if len(values) else values.new_tensor(torch.inf)
        blended = self.threshold * self.THRESHOLD_MOMENTUM + (1 - self.THRESHOLD_MOMENTUM) * smallest
        new = torch.where(self.threshold < 0, smallest, blended)
        self.threshold.copy_(torch.where(torch.isfinite(smallest), new, self.threshold))

    def encode(self, x):
        pre = self.pre_activations(x)
        return pre.relu() * (pre > self.threshold.clamp_min(0))


class _JumpReLU(torch.autograd.Function):
    """``pre * (pre > theta)``; d/d theta by a rectangle kernel of width ``bandwidth``."""

    @staticmethod
    def forward(ctx, pre, theta, bandwidth):
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx, grad):
        pre, theta = ctx.saved_tensors
        bw = ctx.bandwidth
        near = ((pre - theta).abs() < bw / 2).to(grad.dtype)
        grad_theta = (-(theta / bw) * near * grad).sum(0)
        return grad * (pre > theta), grad_theta, None


class _Step(torch.autograd.Function):
    """``pre > theta`` as a number; d/d theta by the same rectangle kernel (no gradient to ``pre``)."""

    @staticmethod
    def forward(ctx, pre, theta, bandwidth):
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, theta = ctx.saved_tensors
        bw = ctx.bandwidth
        near = ((pre - theta).abs() < bw / 2).to(grad.dtype)
        return None, (-(1.0 / bw) * near * grad).sum(0), None


@register_arch("jumprelu", JumpReLUParams)
class JumpReLUSAE(SAE):
    saelens_architecture, saelens_imports = "jumprelu", ("jumprelu",)

    def saelens_tensors(self):
        return {**super().saelens_tensors(), "threshold": self.threshold.detach()}

    @classmethod
    def state_from_saelens(cls, tensors, cfg):
        return {**super().state_from_saelens(tensors, cfg),
                "log_threshold": tensors["threshold"].float().clamp_min(1e-12).log()}

    def __init__(self, config, *, device=None):
        super().__init__(config, device=device)
        log_init = math.log(max(float(config.jumprelu_init_threshold), 1e-12))  # a number: nothing runs on meta
        self.log_threshold = nn.Parameter(torch.full((self.d_sae,), log_init, device=device))

    @property
    def threshold(self) -> torch.Tensor:
        return self.log_threshold.exp()

    def encode(self, x):
        pre = self.pre_activations(x)
        return pre * (pre > self.threshold)

    def training_forward(self, x, state, target=None):
        y = x if target is None else target
        pre = F.linear(self._centered(x), self.W_enc, self.b_enc)
        theta, bw = self.threshold, self.config.jumprelu_bandwidth
        z = _JumpReLU.apply(pre, theta, bw)
        x_hat = z @ self.W_dec + self._output_base(x)
        mse = (x_hat - y).pow(2).sum(-1).mean()
        l0 = _Step.apply(pre, theta, bw).sum(-1).mean()
        loss = mse + self.config.l0_coefficient * state.sparsity_scale * l0
        z = z.detach()
        active = z != 0
        if not state.metrics:
            return TrainingOutput(loss, x_hat.detach(), active.sum(0), None)
        return TrainingOutput(loss, x_hat.detach(), active.sum(0), active.sum() / len(x), {"l1": z.abs().sum() / len(x)})


@register_arch("relu", ReLUParams)
class ReLUSAE(SAE):
    saelens_architecture, saelens_imports = "standard", ("standard", "relu")

    def encode(self, x):
        return self.pre_activations(x).relu()

    def training_forward(self, x, state, target=None):
        y = x if target is None else target
        z = F.linear(self._centered(x), self.W_enc, self.b_enc).relu()
        x_hat = z @ self.W_dec + self._output_base(x)
        mse = (x_hat - y).pow(2).sum(-1).mean()
        l1 = (z * self.W_dec.norm(dim=1)).sum(-1).mean()
        loss = mse + self.config.l1_coefficient * state.sparsity_scale * l1
        active = z.detach() > 0
        return TrainingOutput(loss, x_hat.detach(), active.sum(0), active.sum() / len(x) if state.metrics else None,
                              {"l1": l1.detach()})


from saekit.sae import matryoshka  # noqa: E402,F401  registers matryoshka_batchtopk (it builds on BatchTopK)
