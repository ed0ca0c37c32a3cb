"""Activations made from a known dictionary, so an SAE can be scored by how well it recovers it (SynthSAEBench's
idea, arXiv 2602.14687; SAELens's ``sae_lens.synthetic`` does it at scale on a GPU).

A row is ``sum of magnitude_i * feature_i`` over the features that fire on it, plus optional Gaussian noise.
Features are random unit directions. Which fire:

- **Zipf frequencies.** The independent features and the parents fire with probability proportional to
  ``rank ** -zipf_exponent``, scaled so that ``mean_active`` features fire per row on average.
- **Hierarchy.** ``parents`` features each have ``children`` children. A child fires only on a row where its parent
  fires: then, with ``child_probability``, exactly one of them does, chosen uniformly. This is the setting where an
  SAE *absorbs* a general feature into its specific ones.
- **Correlation.** The independent features and the parents share ``factors`` Gaussian factors (a Gaussian
  copula): with ``correlation`` > 0, features on the same factor fire together more often than alone.

Magnitudes are ``|N(magnitude_mean, magnitude_std)|``. Everything follows from ``seed``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from saekit._checks import check_non_negative, check_positive_int
from saekit.errors import ConfigError
from saekit.workspace import Workspace


@dataclass(frozen=True)
class SyntheticConfig:
    """What the synthetic activations are made of (see the module docstring)."""

    d_in: int = 64
    n_features: int = 1024
    mean_active: float = 8.0
    zipf_exponent: float = 0.5
    parents: int = 0
    children: int = 4
    child_probability: float = 0.5
    correlation: float = 0.0
    factors: int = 16
    magnitude_mean: float = 1.0
    magnitude_std: float = 0.25
    noise: float = 0.0
    seed: int = 0

    def __post_init__(self):
        for name in ("d_in", "n_features", "children", "factors"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("parents", self.parents, allow_zero=True)
        check_positive_int("seed", self.seed, allow_zero=True)
        for name in ("zipf_exponent", "magnitude_std", "noise"):
            check_non_negative(name, getattr(self, name))
        if not (isinstance(self.mean_active, (int, float)) and 0 < self.mean_active < self.n_features):
            raise ConfigError(f"mean_active={self.mean_active!r} must be a number of features between 0 and "
                              f"n_features={self.n_features}")
        if self.parents * (1 + self.children) > self.n_features:
            raise ConfigError(f"parents={self.parents} with children={self.children} each need "
                              f"{self.parents * (1 + self.children)} features; n_features={self.n_features}",
                              suggestion="lower parents or children, or raise n_features")
        if not 0 < self.child_probability <= 1:
            raise ConfigError(f"child_probability={self.child_probability!r} must be in (0, 1]")
        if not 0 <= self.correlation < 1:
            raise ConfigError(f"correlation={self.correlation!r} must be in [0, 1)")
        if not self.magnitude_mean > 0:
            raise ConfigError(f"magnitude_mean={self.magnitude_mean!r} must be positive")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class SyntheticFeatures:
    """A known dictionary and the law of its features' firing; ``sample(n)`` gives rows and their true codes,
    ``store(n)`` an ``ActivationStore`` to train on. ``dictionary`` is ``[n_features, d_in]`` (unit rows);
    ``probability`` each feature's firing probability; ``parent_of`` each child's parent (-1 for the others)."""

    def __init__(self, config: SyntheticConfig | None = None, **settings):
        if config is None:
            config = SyntheticConfig(**settings)
        elif settings:
            raise ConfigError(f"give a SyntheticConfig or settings, not both ({sorted(settings)})")
        self.config = c = config
        g = torch.Generator().manual_seed(c.seed)
        self.dictionary = torch.nn.functional.normalize(torch.randn(c.n_features, c.d_in, generator=g), dim=1)
        n_children = c.parents * c.children
        self.roots = c.n_features - n_children  # parents first, then the independent features
        self.children = torch.arange(c.parents, c.parents + n_children).view(c.parents, c.children)
        weight = (torch.arange(self.roots, dtype=torch.float64) + 1) ** -c.zipf_exponent
        expected = float(weight.sum() + c.child_probability * weight[:c.parents].sum())
        root_p = (weight * c.mean_active / expected).clamp(max=1.0)
        self.probability = torch.zeros(c.n_features, dtype=torch.float64)
        self.probability[:c.parents] = root_p[:c.parents]
        self.probability[c.parents + n_children:] = root_p[c.parents:]
        per_child = root_p[:c.parents] * c.child_probability / c.children
        self.probability[c.parents:c.parents + n_children] = per_child.repeat_interleave(c.children)
        self.parent_of = torch.full((c.n_features,), -1, dtype=torch.long)
        self.parent_of[self.children.flatten()] = torch.arange(c.parents).repeat_interleave(c.children)
        self._root_ids = torch.cat([torch.arange(c.parents), torch.arange(c.parents + n_children, c.n_features)])
        self._threshold = torch.special.ndtri(root_p).float()  # a root fires where its normal draw is below
        self._factor = torch.randperm(self.roots, generator=g) % c.factors

    def __repr__(self) -> str:
        return f"SyntheticFeatures({', '.join(f'{k}={v!r}' for k, v in self.config.to_dict().items())})"

    def sample(self, n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` rows ``[n, d_in]`` and their true codes ``[n, n_features]`` (each firing feature's magnitude).
        ``seed`` chooses the draw (the dictionary is the config's): held-out rows use another seed than training."""
        check_positive_int("n", n)
        c = self.config
        g = torch.Generator().manual_seed(c.seed * 1_000_003 + seed)
        codes = torch.zeros(n, c.n_features)
        normal = torch.randn(n, self.roots, generator=g)
        if c.correlation > 0:
            shared = torch.randn(n, c.factors, generator=g)
            normal = math.sqrt(1 - c.correlation) * normal + math.sqrt(c.correlation) * shared[:, self._factor]
        fires = normal < self._threshold
        if c.parents:
            parent_fires = fires[:, :c.parents]
            pick = torch.randint(c.children, (n, c.parents), generator=g)
            take = parent_fires & (torch.rand(n, c.parents, generator=g) < c.child_probability)
            child = self.children[torch.arange(c.parents), pick]  # [n, parents]: the child each parent would take
            rows = torch.arange(n)[:, None].expand_as(child)
            codes[rows[take], child[take]] = 1.0
        codes[:, self._root_ids] = fires.float()
        magnitude = (c.magnitude_mean + c.magnitude_std * torch.randn(n, c.n_features, generator=g)).abs()
        codes = codes * magnitude.clamp_min(1e-3)
        x = codes @ self.dictionary
        if c.noise:
            x = x + c.noise * torch.randn(n, c.d_in, generator=g)
        return x, codes

    def store(self, n_tokens: int, hook_point: str = "synthetic", *, seed: int = 0, block: int = 65536,
              workspace: Workspace | str | None = None):
        """``n_tokens`` rows as an ``ActivationStore`` (named by the config, ``n_tokens``, ``seed`` and ``block``,
        which fix the rows: the same ones are the same store). Made and written ``block`` rows at a time, so the
        store may be larger than memory; rows are float32, and the store's attrs keep the config."""
        import hashlib
        import json

        from saekit.activations.store import ActivationStore

        check_positive_int("n_tokens", n_tokens)
        check_positive_int("block", block)
        what = json.dumps([self.config.to_dict(), n_tokens, seed, block, hook_point], sort_keys=True)
        name = f"synthetic-{hashlib.sha256(what.encode()).hexdigest()[:12]}"
        blocks = (self.sample(min(block, n_tokens - start), seed=seed * 7_919 + 2 + start // block)[0]
                  for start in range(0, n_tokens, block))
        return ActivationStore.from_blocks(blocks, name, hook_point, n_tokens, self.config.d_in, workspace=workspace,
                                           attrs={"synthetic": self.config.to_dict(), "synthetic_seed": seed})
