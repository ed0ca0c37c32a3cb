"""``sk.steer``: exact interventions with SAE features at the SAE's hook point, in any forward pass of a
``LanguageModel`` and during cached generation.

With ``d_i = W_dec[i]`` (the SAE's decoder row, in the model's units) and ``a_i(x)`` the SAE's activation of
feature ``i`` on the residual ``x``:

- ``add``: ``x + c * d_i / |d_i|`` (``c`` is the length of the added vector);
- ``clamp``: ``x + (c - a_i(x)) * d_i``: the feature's activation is set to ``c`` while the SAE's
  reconstruction error stays in the residual (editing the SAE's output instead drops that error);
- ``ablate``: clamp to 0 (its coefficient is ignored);
- ``cap``: ``x - max(x . u_i - c, 0) * u_i`` with ``u_i = d_i / |d_i|``: the projection onto the direction is
  limited to ``c``.

Several features at once add their changes (computed from the same ``x``). ``positions``: ``"all"``,
``"prompt"`` (positions of the prompt only) or ``"generated"`` (positions of generated tokens: the prompt's
last token is a prompt position, so the first new token is predicted unsteered). The hook knows a token's
absolute position from the attention mask's length, so generation with the KV cache (one new position per
forward pass) and without it (every position each time) are steered identically.

A transcoder's features are steered where it writes (its target hook, e.g. ``blocks.6.mlp_out``: its decoder rows
live there); ``clamp`` and ``ablate`` compute the feature's activation from what it reads (``blocks.6.mlp_in``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path

import torch

from saekit._checks import as_int, as_number, check_choice
from saekit.activations.source import sae_hook
from saekit.errors import ConfigError
from saekit.models.hookpoints import comes_before

MODES = ("add", "clamp", "ablate", "cap")
POSITIONS = ("all", "prompt", "generated")


def sae_hook_point(sae, hook_point: str | None) -> str:
    """The hook point the SAE reads: ``hook_point``, checked against the one the SAE was trained on."""
    trained = sae_hook(sae)
    if hook_point is None:
        if trained is None:
            raise ConfigError("which hook point does the SAE read? its files do not say; pass hook_point=",
                              suggestion="e.g. hook_point='blocks.6.resid_post'")
        return trained
    if trained is not None and hook_point != trained:
        raise ConfigError(f"the SAE was trained on {trained}, not {hook_point}",
                          suggestion=f"steer at hook_point={trained!r} (or leave hook_point out)")
    return hook_point


def transcoder_target(sae) -> str:
    """The hook point a transcoder writes (its prediction's), from its files."""
    target = sae_hook(sae, "target_hook")
    if target is None:
        raise ConfigError("this transcoder's files do not say which hook point it predicts (metadata 'target_hook')",
                          suggestion="set it: sae.metadata['target_hook'] = 'blocks.6.mlp_out'")
    return target


class Steering:
    """The intervention ``sk.steer`` returns: a context manager that installs it on ``lm`` (see the module)."""

    def __init__(self, lm, sae, features: Mapping[int, float], *, mode: str = "add", positions: str = "all",
                 hook_point: str | None = None, relative_to=None):
        check_choice("mode", mode, MODES)
        check_choice("positions", positions, POSITIONS)
        if not isinstance(features, Mapping):
            raise ConfigError(f"features must be a dict {{feature: coefficient}}; got {type(features).__name__}",
                              suggestion="e.g. {123: 8.0}")
        checked = {}
        for i, c in features.items():
            feature, coeff = as_int(i), as_number(c)
            if feature is None:
                raise ConfigError(f"feature {i!r} ({type(i).__name__}) is not a feature of this SAE: give an int id "
                                  f"in 0..{sae.d_sae - 1}")
            if not 0 <= feature < sae.d_sae:
                raise ConfigError(f"feature {feature} is not a feature of this SAE (0..{sae.d_sae - 1})")
            if coeff is None:
                raise ConfigError(f"the coefficient of feature {feature} is {c!r} ({type(c).__name__}); it must be "
                                  "one finite number")
            checked[feature] = coeff
        features = checked
        # a transcoder reads one hook point and writes another: its features are steered where it writes (the
        # decoder rows live there), with clamp's activations computed from what it reads
        self.input_hook = sae_hook_point(sae, hook_point)
        self.hook_point = transcoder_target(sae) if sae.is_transcoder else self.input_hook
        lm.parse_hook_point(self.input_hook)
        lm.parse_hook_point(self.hook_point)
        if sae.is_transcoder and comes_before(self.input_hook, self.hook_point) is False:
            raise ConfigError(f"this transcoder reads {self.input_hook}, which the forward pass computes after "
                              f"{self.hook_point}, the activation it writes: it cannot be steered there")
        self._read: torch.Tensor | None = None  # a transcoder's input at this forward pass (clamp, ablate)
        if sae.d_in != lm.d_model or sae.d_out != lm.d_model:
            widths = (f"reads {sae.d_in}-wide activations" if sae.d_in != lm.d_model
                      else f"writes {sae.d_out}-wide activations")
            raise ConfigError(f"the SAE {widths} but {lm.name} is {lm.d_model}-wide",
                              suggestion="steer with an SAE trained on this model")
        self.lm, self.sae, self.mode, self.positions = lm, sae, mode, positions
        self.features = {int(i): float(c) for i, c in features.items()}
        self.relative_to = relative_to
        self.scale = _scales(relative_to, sae, list(self.features)) if relative_to is not None else None
        self._stack: ExitStack | None = None
        self._offset = 0
        self._prompt_length = 0
        self._prepare()

    def _prepare(self) -> None:
        """The directions and coefficients as tensors on the model's device (float32)."""
        ids = [i for i, c in self.features.items() if c != 0 or self.mode in ("clamp", "ablate", "cap")]
        self._ids = ids
        if not ids:
            return
        device = self.lm.device
        with torch.no_grad():
            dirs = self.sae.W_dec.detach()[ids].float().to(device)  # [n, d_model]
        norms = dirs.norm(dim=1)
        coeffs = torch.tensor([0.0 if self.mode == "ablate" else self.features[i] for i in ids], device=device)
        if self.scale is not None:
            scale = torch.tensor([self.scale[i] for i in ids], device=device)
            # relative to the feature's max activation: an activation of c*max (clamp), the vector c*max*d_i
            # (add), a projection of c*max*|d_i| (cap)
            coeffs = coeffs * scale * (norms if self.mode in ("add", "cap") else 1)
        self._dirs, self._units, self._coeffs = dirs, dirs / norms.clamp_min(1e-12)[:, None], coeffs
        self._added = coeffs @ self._units  # add: the same vector at every position
        self._index = torch.tensor(ids, device=self.sae.device)

    def at(self, positions: str) -> "Steering":
        """The same intervention at other positions."""
        return Steering(self.lm, self.sae, self.features, mode=self.mode, positions=positions,
                        hook_point=self.input_hook, relative_to=self.relative_to)

    # -- the hooks ------------------------------------------------------------------------------------
    def _track(self, module, args, kwargs) -> None:
        """Before each forward pass of the model: the absolute position of its first token."""
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        length = ids.shape[1] if ids is not None else 0
        mask = kwargs.get("attention_mask")
        cache = kwargs.get("past_key_values", kwargs.get("cache"))
        if isinstance(mask, torch.Tensor) and mask.ndim >= 2:
            self._offset = mask.shape[-1] - length
        elif cache is not None and hasattr(cache, "get_seq_length"):
            self._offset = int(cache.get_seq_length())
        else:
            self._offset = 0
        if self._offset == 0:
            self._prompt_length = length
        generating = self.lm.prompt_length
        if generating is not None:
            self._prompt_length = generating

    def _mask(self, x: torch.Tensor) -> torch.Tensor | None:
        """``[seq, 1]`` of which positions of ``x`` are steered (None: all)."""
        if self.positions == "all":
            return None
        pos = self._offset + torch.arange(x.shape[1], device=x.device)
        keep = pos < self._prompt_length if self.positions == "prompt" else pos >= self._prompt_length
        return keep[:, None]

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """The change this intervention makes to activations ``x [..., d_model]`` (float32, every position)."""
        xf = x.float()
        if self.mode == "add":
            return self._added
        if self.mode == "cap":
            over = (xf @ self._units.T - self._coeffs).clamp_min(0)  # [..., n]
            return -(over @ self._units)
        read = xf if self._read is None else self._read.float()
        acts = self.sae.encode(read.reshape(-1, read.shape[-1]).to(self.sae.device))
        a = acts.index_select(-1, self._index).to(x.device).reshape(*xf.shape[:-1], -1)
        return (self._coeffs - a) @ self._dirs

    def _remember(self, x: torch.Tensor) -> None:
        self._read = x

    def _steer(self, x: torch.Tensor):
        if not self._ids:
            return None
        mask = self._mask(x) if x.ndim == 3 else None
        if mask is not None and not bool(mask.any()):
            return None
        with torch.no_grad():
            change = self.delta(x)
            if mask is not None:
                change = change * mask
            if x.dtype == torch.float32:
                return x + change
            return (x.float() + change).to(x.dtype)

    # -- the context manager --------------------------------------------------------------------------
    def __enter__(self) -> "Steering":
        if self._stack is not None:
            raise ConfigError("this steering is already active; use one `with` block at a time")
        stack = ExitStack()
        try:
            stack.callback(self.lm.model.register_forward_pre_hook(self._track, with_kwargs=True).remove)
            hooks = {self.hook_point: self._steer}
            if self.input_hook != self.hook_point and self.mode in ("clamp", "ablate"):
                hooks = {self.input_hook: self._remember, **hooks}
            stack.enter_context(self.lm.hooks(hooks))
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(self, *exc) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def __repr__(self) -> str:
        feats = ", ".join(f"{i}: {c:g}" for i, c in self.features.items())
        return (f"Steering({{{feats}}}, mode={self.mode!r}, positions={self.positions!r}, at {self.hook_point}"
                f"{', relative to max activation' if self.scale is not None else ''})")


def _scales(featureset, sae, ids: list[int]) -> dict[int, float]:
    """Each feature's max activation in the analysis ``featureset`` (of this SAE)."""
    if not (hasattr(featureset, "select") and hasattr(featureset, "meta")):
        raise ConfigError(f"relative_to must be a FeatureSet (an analysis of this SAE); got {type(featureset).__name__}")
    if featureset.n_latents != sae.d_sae:
        raise ConfigError(f"relative_to is an analysis of an SAE with {featureset.n_latents} features; this one has {sae.d_sae}")
    analysed, mine = featureset.meta["sae"].get("path"), sae.saved_folder()
    if analysed and mine and Path(analysed).resolve() != Path(mine).resolve():
        raise ConfigError(f"relative_to is an analysis of the SAE in {analysed}, not of this one ({mine})",
                          suggestion="give the analysis of this SAE")
    maxima = featureset.select(ids).column("max")
    scales = {i: float(m) for i, m in zip(ids, maxima)}
    silent = [i for i, m in scales.items() if not (math.isfinite(m) and m > 0)]
    if silent:
        raise ConfigError(f"feature(s) {silent} never fired in the analysis: a coefficient relative to their max "
                          "activation means nothing", suggestion="give absolute coefficients (relative_to=None)")
    return scales


def steer(lm, sae, features: Mapping[int, float], *, mode: str = "add", positions: str = "all",
          hook_point: str | None = None, relative_to=None) -> Steering:
    """Steer ``lm`` with features of ``sae`` inside a ``with`` block (hooks removed on exit, also on an error).

    ``features`` maps feature index -> coefficient. Coefficients are absolute by default: the length of the
    added vector for ``add``, the activation for ``clamp``, the projection for ``cap``; with
    ``relative_to=feats`` (an analysis of this SAE) they are multiples of each feature's max activation there.
    ``hook_point`` defaults to the one the SAE was trained on. See ``saekit.steering.intervention`` for the
    exact formulas; every argument is checked before any hook is installed::

        with sk.steer(lm, sae, {123: 8.0}, mode="add"):
            lm.generate("The weather today", max_new_tokens=40, seed=0)
    """
    return Steering(lm, sae, features, mode=mode, positions=positions, hook_point=hook_point, relative_to=relative_to)
