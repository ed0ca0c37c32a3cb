"""``LanguageModel``: a HF causal LM with its tokenizer, named hook points and cached forward passes."""

from __future__ import annotations

import inspect

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, cast

import numpy as np
import torch
from torch import nn

from saekit._checks import check_non_negative, check_positive_int, is_number
from saekit.errors import ConfigError, DataError
from saekit.models.hookpoints import architecture_of, get_module, hook_point_names, parse

HookFn = Callable[[torch.Tensor], "torch.Tensor | None"]


@dataclass(frozen=True)
class Generation:
    """What ``LanguageModel.generate`` returns: the new text, the new token ids and the prompt's ids."""

    text: str
    ids: list[int]
    prompt_ids: list[int]

    def __str__(self) -> str:
        return self.text


def right_padded(ids: list[list[int]], tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists as one batch for ``run_with_cache``: ``input_ids`` right-padded with the tokenizer's pad token
    (0 without one) and the ``attention_mask`` (1 on real tokens), both ``[len(ids), longest]``. A causal model's
    activations at the real tokens are those of each list alone."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    width = max(len(i) for i in ids)
    return (torch.tensor([i + [pad] * (width - len(i)) for i in ids]),
            torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids]))


class _StopForward(Exception):
    """Raised by the hook of the deepest block that is needed: nothing after it is computed."""


class LanguageModel:
    """A causal language model and its tokenizer.

    ``hook_points()`` lists ``blocks.{i}.{resid_pre,resid_post,attn_out,mlp_in,mlp_out}``; ``hooks({name: fn})``
    reads (``fn`` returns None) or replaces (``fn`` returns a tensor) activations there;
    ``run_with_cache(input_ids, names)`` returns them and stops after the deepest block needed.
    ``ref`` is how a background job loads the same model again.
    """

    def __init__(self, model: nn.Module, tokenizer, *, name: str, ref: dict):
        self.model: Any = model.eval()  # a HF PreTrainedModel: its methods are untyped on nn.Module
        self.tokenizer = tokenizer
        self.name = name
        self.ref = ref
        self.arch = architecture_of(model)
        self.blocks = cast(nn.ModuleList, get_module(model, self.arch.layers))
        self.prompt_length: int | None = None  # set while generate() runs

    # -- facts ---------------------------------------------------------------------------------------
    @property
    def config(self):
        return self.model.config

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def d_model(self) -> int:
        config = self.config
        return int(getattr(config, "hidden_size", None) or config.n_embd)

    @property
    def max_context(self) -> int | None:
        """The longest sequence the model's position embeddings allow (None when unbounded/unknown)."""
        for field in ("max_position_embeddings", "n_positions", "n_ctx"):
            value = getattr(self.config, field, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def tokenizer_fingerprint(self) -> str:
        """What identifies the tokenizer (the fingerprint token stores record)."""
        if getattr(self, "_tokenizer_fingerprint", None) is None:
            from saekit.data.tokens import tokenizer_fingerprint

            self._tokenizer_fingerprint = tokenizer_fingerprint(self.tokenizer)
        return self._tokenizer_fingerprint

    def check_token_store(self, tokens) -> None:
        """Refuse, before anything runs, a token store this model cannot read as it was meant: one made by
        another tokenizer (another vocabulary), or with sequences longer than the model's positions."""
        if tokens.attrs["tokenizer"]["fingerprint"] != self.tokenizer_fingerprint \
                and tokens.tokenizer().get_vocab() != self.tokenizer.get_vocab():
            raise DataError(
                f"token store {tokens.id} was made by another tokenizer ({tokens.attrs['tokenizer'].get('source')!r}, "
                f"a different vocabulary) than {self.name}'s; its token ids would mean other tokens to this model",
                suggestion="tokenize the corpus with this model: sk.tokenize(corpus, lm)")
        if self.max_context is not None and tokens.context_length > self.max_context:
            raise DataError(
                f"token store {tokens.id} holds sequences of {tokens.context_length} tokens but {self.name} has "
                f"{self.max_context} positions", suggestion=f"tokenize again with context_length <= {self.max_context}")

    def unembedding(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The unembedding ``[vocab, d_model]`` and the final norm's per-dimension scale (None when the model
        has no known final norm or it has no weight): what a direction in the residual stream is multiplied
        by on its way to the logits, apart from the norm's division by the residual's scale."""
        weight = self.model.get_output_embeddings().weight.detach()
        scale = None
        if self.arch.final_norm is not None:
            norm = get_module(self.model, self.arch.final_norm)
            norm_weight = getattr(norm, "weight", None)
            if norm_weight is not None:
                scale = norm_weight.detach().float()
                if self.config.model_type.startswith("gemma"):  # Gemma's RMSNorm scales by (1 + weight)
                    scale = scale + 1
        return weight, scale

    def hook_points(self) -> list[str]:
        return hook_point_names(self.arch, self.n_layers)

    def parse_hook_point(self, name: str) -> tuple[int, str]:
        """``(block, site)`` of a hook point; ``HookPointError`` (naming the valid ones) when it is not one."""
        return parse(name, self.arch, self.n_layers, self.name)

    # -- hooks ---------------------------------------------------------------------------------------
    def _register(self, name: str, fn: HookFn):
        layer, site = self.parse_hook_point(name)
        block = self.blocks[layer]
        if site in ("resid_pre", "mlp_in"):  # the input of the block, or of its MLP
            first = "hidden_states"
            target = block
            if site == "mlp_in":
                path = self.arch.module_of(site)
                assert path is not None  # parse_hook_point refuses the sites this architecture lacks
                target = get_module(block, path)
                first = next(iter(inspect.signature(target.forward).parameters), first)

            def pre_hook(module, args, kwargs):
                x = args[0] if args else kwargs[first]
                out = fn(x)
                if out is None:
                    return None
                if args:
                    return (out, *args[1:]), kwargs
                return args, {**kwargs, first: out}

            return target.register_forward_pre_hook(pre_hook, with_kwargs=True)
        if site == "resid_post":
            module = block
        else:
            path = self.arch.module_of(site)
            assert path is not None  # parse_hook_point refuses the sites this architecture lacks
            module = get_module(block, path)

        def hook(module, args, output):
            x = output[0] if isinstance(output, tuple) else output
            out = fn(x)
            if out is None:
                return None
            return (out, *output[1:]) if isinstance(output, tuple) else out

        return module.register_forward_hook(hook)

    @contextmanager
    def hooks(self, fns: Mapping[str, HookFn]) -> Iterator["LanguageModel"]:
        """Within the block, call ``fn(activation)`` at each hook point; a tensor it returns replaces the activation."""
        for name in fns:
            self.parse_hook_point(name)  # every name is checked before any hook is added
        handles = [self._register(name, fn) for name, fn in fns.items()]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    # -- forward passes -------------------------------------------------------------------------------
    def _as_ids(self, input_ids) -> torch.Tensor:
        """Text or token ids (a list, array or tensor of ``[T]`` or ``[B, T]``) as a ``[B, T]`` long tensor,
        checked: not empty, whole numbers, every id in the vocabulary."""
        given = input_ids
        if isinstance(input_ids, str):
            input_ids = self.tokenizer(input_ids, return_tensors="pt")["input_ids"]
        elif isinstance(input_ids, np.ndarray):
            input_ids = torch.from_numpy(np.ascontiguousarray(input_ids))
        elif not isinstance(input_ids, torch.Tensor):
            try:
                input_ids = torch.tensor(input_ids)
            except (TypeError, ValueError, RuntimeError):
                raise ConfigError(f"prompt {str(given)[:60]!r} ({type(given).__name__}) is neither text nor token ids",
                                  suggestion="give a string, or a list of token ids such as lm.tokenizer('hi')['input_ids']") from None
        if input_ids.numel() == 0:
            raise ConfigError("the prompt is empty: give some text or at least one token id")
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool or input_ids.ndim not in (1, 2):
            raise ConfigError(f"prompt {str(given)[:60]!r} is not text or token ids ([T] or [batch, T] whole numbers)")
        if input_ids.ndim == 1:
            input_ids = input_ids[None]
        vocab = self.model.get_input_embeddings().weight.shape[0]
        if input_ids.device.type == "cpu" and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab):
            raise ConfigError(f"token id(s) {sorted({int(i) for i in input_ids.flatten() if not 0 <= int(i) < vocab})[:5]} "
                              f"are not in {self.name}'s vocabulary (0..{vocab - 1})")
        return input_ids.to(self.device, dtype=torch.long)

    def run_with_cache(self, input_ids, hook_points: str | Iterable[str], *, attention_mask=None,
                       stop_at: int | bool | None = None) -> dict[str, torch.Tensor]:
        """Run the model and return ``{hook_point: activation [batch, seq, d_model]}``.

        The forward pass stops after the deepest block it needs (``stop_at=False`` runs the whole
        model; an int stops after that block).
        """
        names = [hook_points] if isinstance(hook_points, str) else list(hook_points)
        if not names:
            raise ConfigError("hook_points is empty; name at least one, e.g. lm.hook_points()[0]")
        layers = [self.parse_hook_point(n)[0] for n in names]
        cache: dict[str, torch.Tensor] = {}
        fns = {n: (lambda x, n=n: cache.__setitem__(n, x.detach())) for n in names}
        stop = max(layers) if stop_at is None else (None if stop_at is False else int(stop_at))
        if stop is not None and not 0 <= stop < self.n_layers:
            raise ConfigError(f"stop_at={stop_at} is not a block of {self.name} (0..{self.n_layers - 1})")
        ids = self._as_ids(input_ids)
        mask = None if attention_mask is None else torch.as_tensor(np.asarray(attention_mask) if not isinstance(
            attention_mask, torch.Tensor) else attention_mask).to(self.device, dtype=torch.long)
        if mask is not None and mask.ndim == 1:
            mask = mask[None]
        with torch.no_grad(), self.hooks(fns):
            stopper = None
            if stop is not None and stop < self.n_layers:
                def halt(module, args, output):
                    raise _StopForward

                stopper = self.blocks[stop].register_forward_hook(halt)
            try:
                self.model(input_ids=ids, attention_mask=mask, use_cache=False)
            except _StopForward:
                pass
            finally:
                if stopper is not None:
                    stopper.remove()
        return cache

    def generate(self, prompt, max_new_tokens: int = 32, *, temperature: float | None = None,
                 top_p: float | None = None, seed: int | None = None, use_cache: bool = True,
                 stop_at_eos: bool = True) -> "Generation":
        """Continue ``prompt`` (text, or token ids ``[T]``/``[1, T]``) by ``max_new_tokens`` tokens.

        Greedy unless ``temperature`` > 0 (then sampled, with ``top_p`` nucleus sampling if given); ``seed``
        makes sampling repeatable without touching the global RNG. HF ``generate`` runs underneath with the KV
        cache on (``use_cache=False`` recomputes every position: slower, the same tokens). Returns a
        ``Generation`` (``.text``, ``.ids`` of the new tokens, ``.prompt_ids``). While it runs,
        ``prompt_length`` says where the prompt ends (steering reads it to tell prompt from generated positions).
        """
        check_positive_int("max_new_tokens", max_new_tokens, example="40")
        if temperature is not None:
            check_non_negative("temperature", temperature)
        if top_p is not None and not (is_number(top_p) and 0 < top_p <= 1):
            raise ConfigError(f"top_p={top_p!r} must be a number in (0, 1]")
        if seed is not None:
            check_positive_int("seed", seed, allow_zero=True)
        if prompt is None:
            raise ConfigError("prompt=None: give some text or token ids to continue")
        ids = self._as_ids(prompt)
        if ids.shape[0] != 1:
            raise ConfigError(f"generate takes one prompt; got a batch of {ids.shape[0]}",
                              suggestion="call it once per prompt")
        limit = self.max_context
        if limit is not None and ids.shape[1] + max_new_tokens > limit:
            raise ConfigError(f"{ids.shape[1]} prompt tokens + max_new_tokens={max_new_tokens:,} is more than the "
                              f"{limit:,} positions {self.name} has",
                              suggestion=f"use max_new_tokens <= {max(limit - ids.shape[1], 0):,}")
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        sample = bool(temperature)
        options = {"do_sample": sample, "use_cache": use_cache, "pad_token_id": pad}
        if temperature:  # sample
            options.update(temperature=float(temperature), top_p=float(top_p) if top_p else 1.0, top_k=0)
        else:
            options.update(temperature=None, top_p=None, top_k=None)
        if not stop_at_eos:
            options["eos_token_id"] = None
        devices = [self.device] if self.device.type == "cuda" else []
        self.prompt_length = ids.shape[1]
        try:
            with torch.inference_mode(), torch.random.fork_rng(devices=devices, enabled=seed is not None):
                if seed is not None:
                    torch.manual_seed(seed)
                out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                          **options)
        finally:
            self.prompt_length = None
        new = out[0, ids.shape[1]:].tolist()
        return Generation(self.tokenizer.decode(new, skip_special_tokens=True), new, ids[0].tolist())

    def __repr__(self) -> str:
        return (f"LanguageModel({self.name!r}, {self.n_layers} blocks, d_model={self.d_model}, "
                f"device={self.device}, dtype={str(self.dtype).replace('torch.', '')})")
