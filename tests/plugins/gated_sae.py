"""A gated SAE (Rajamanoharan et al., 2024) as an architecture plug-in, written against saekit's public
plug-in interface only: it lives outside the package and saekit/sae/ knows nothing of it.

The gate decides which latents fire (``W_enc x + b_gate > 0``), the magnitude path how much
(``exp(r_mag) * W_enc x + b_mag``, sharing the encoder); the loss is the reconstruction, an L1 penalty on
the gate's pre-activations (weighted by decoder norms), and an auxiliary reconstruction from the gate
alone through the frozen decoder. SAELens calls this architecture "gated" (``b_gate``, ``b_mag``, ``r_mag``).
"""

from dataclasses import dataclass

import torch
from torch import nn

from saekit.sae import SAE, ArchParams, TrainingOutput, check_non_negative, register_arch


@dataclass(frozen=True)
class GatedParams(ArchParams):
    l1_coefficient: float = 1.0

    def __post_init__(self):
        check_non_negative("l1_coefficient", self.l1_coefficient)


@register_arch("gated", GatedParams)
class GatedSAE(SAE):
    saelens_architecture, saelens_imports = "gated", ("gated",)

    def __init__(self, config, *, device=None):
        super().__init__(config, device=device)  # b_enc is the gate's bias
        self.r_mag = nn.Parameter(torch.zeros(self.d_sae, device=device))
        self.b_mag = nn.Parameter(torch.zeros(self.d_sae, device=device))

    def _paths(self, x):
        pre = (self._input(x) - self.b_dec) @ self.W_enc.t()
        return pre + self.b_enc, pre * self.r_mag.exp() + self.b_mag

    def encode(self, x):
        gate, magnitude = self._paths(x)
        return (gate > 0) * magnitude.relu()

    def training_forward(self, x, state):
        gate, magnitude = self._paths(x)
        z = (gate > 0) * magnitude.relu()
        x_hat = z @ self.W_dec + self.b_dec
        mse = (x_hat - x).pow(2).sum(-1).mean()
        opened = gate.relu()
        l1 = (opened * self.W_dec.norm(dim=1)).sum(-1).mean()
        aux = (opened @ self.W_dec.detach() + self.b_dec.detach() - x).pow(2).sum(-1).mean()
        loss = mse + self.config.l1_coefficient * state.sparsity_scale * l1 + aux
        active = z.detach() > 0
        return TrainingOutput(loss, x_hat.detach(), active.sum(0), active.sum() / len(x), {"l1": l1.detach()})

    def saelens_tensors(self):
        return {"W_enc": self.W_enc.detach().t().contiguous(), "W_dec": self.W_dec.detach(),
                "b_gate": self.b_enc.detach(), "b_mag": self.b_mag.detach(), "r_mag": self.r_mag.detach(),
                "b_dec": self.b_dec.detach()}

    @classmethod
    def state_from_saelens(cls, tensors, cfg):
        return {"W_enc": tensors["W_enc"].float().t().contiguous(), "W_dec": tensors["W_dec"].float(),
                "b_enc": tensors["b_gate"].float(), "b_mag": tensors["b_mag"].float(),
                "r_mag": tensors["r_mag"].float(), "b_dec": tensors["b_dec"].float()}
