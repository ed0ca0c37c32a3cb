"""Sparse codes and their autograd: the decoder and the encoder's backward cost O(nnz · d_in), not O(B · d_sae · d_in).

A batch's active latents are ``Codes``: ``rows``/``cols`` of the nonzero entries, sorted by row, with
``offsets`` where each row starts. ``gathered_linear`` gives the encoder's pre-activations at those
entries with gradients for ``W_enc``, ``b_enc`` and the input's shift (``b_dec``) computed from the entries
only; ``sparse_decode`` is ``codes @ W_dec``, whose backward is one sum grouped by latent and one row-dot per
entry. Only the encoder's dense forward matmul remains. The sums run as Triton kernels on a CUDA GPU
(``kernels.py``) and as ``embedding_bag`` elsewhere (setting ``sparse_kernels``).
"""

from __future__ import annotations

from functools import cached_property, lru_cache

import torch
import torch.nn.functional as F


class Codes:
    """Positions of a batch's nonzero latents: entry ``n`` is (``rows[n]``, ``cols[n]``), sorted by row."""

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, n_rows: int, n_latents: int):
        self.rows, self.cols, self.n_rows, self.n_latents = rows, cols, n_rows, n_latents

    @classmethod
    def from_topk(cls, indices: torch.Tensor, n_latents: int, *, keep_layout: bool = True) -> Codes:
        """Codes of ``indices [B, k]`` (k latents per row). ``keep_layout``: keep the rows and bounds of this
        ``(B, k)`` for the next call (a training step's shape); False for a ``k`` that changes from call to call."""
        b, k = indices.shape
        layout = _topk_layout if keep_layout else _topk_layout.__wrapped__
        rows, bounds = layout(b, k, indices.device, torch.is_inference_mode_enabled())
        codes = cls(rows, indices.reshape(-1), b, n_latents)
        codes.__dict__["row_bounds"] = bounds
        return codes

    @cached_property
    def row_bounds(self) -> torch.Tensor:
        """Where each row's entries start, and their count at the end (length ``n_rows + 1``)."""
        return _bounds(count(self.rows, self.n_rows))

    @cached_property
    def offsets(self) -> torch.Tensor:
        """Where each row's entries start (length ``n_rows``)."""
        return self.row_bounds[:-1]

    @cached_property
    def by_latent(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(order of the entries grouped by latent, where each latent's group starts and the count at the end)."""
        order = torch.argsort(self.cols, stable=True)
        # where each latent's group starts in the sorted latents: 3 kernels where counting and summing took 6
        starts = _arange(self.n_latents + 1, self.cols.device, torch.is_inference_mode_enabled())
        return order, torch.searchsorted(self.cols[order], starts)

    def fired(self) -> torch.Tensor:
        """How many entries each latent has ``[n_latents]``."""
        return count(self.cols, self.n_latents)

    def dense(self, values: torch.Tensor) -> torch.Tensor:
        """The ``[n_rows, n_latents]`` matrix of ``values`` summed at the entries."""
        out = values.new_zeros(self.n_rows, self.n_latents)
        return out.index_put_((self.rows, self.cols), values, accumulate=True)


def count(index: torch.Tensor, n: int, where: torch.Tensor | None = None) -> torch.Tensor:
    """How often each of ``0..n-1`` occurs in ``index`` (where ``where`` holds), int64 ``[n]``. ``bincount``'s
    result, without its host sync on a GPU (it reads the maximum back to size its output; the size is known)."""
    ones = torch.ones_like(index) if where is None else where.to(index.dtype)
    return torch.zeros(n, dtype=index.dtype, device=index.device).scatter_add_(0, index, ones)


@lru_cache(maxsize=8)
def _topk_layout(b: int, k: int, device: torch.device, inference: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The row of each entry and the row bounds of ``b`` rows of ``k`` entries: the same at every step of a
    training run, so made once (three kernels a step fewer on a GPU). Read only; ``inference`` keeps the tensors
    made under ``torch.inference_mode`` apart from those autograd may use."""
    rows = torch.arange(b, device=device).repeat_interleave(k)
    return rows, torch.arange(0, b * k + 1, k, device=device)


@lru_cache(maxsize=8)
def _arange(n: int, device: torch.device, inference: bool) -> torch.Tensor:
    """``0..n-1`` on ``device``, made once per ``n`` (read only)."""
    return torch.arange(n, device=device)


def _bounds(counts: torch.Tensor) -> torch.Tensor:
    return torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])


def _triton(tensor: torch.Tensor) -> bool:
    from saekit.config import config
    from saekit.sae import kernels

    choice = config.get("sparse_kernels")
    if choice not in ("auto", "triton", "torch"):
        from saekit.errors import ConfigError

        raise ConfigError(f"sparse_kernels={choice!r}; use 'auto', 'triton' or 'torch'")
    return choice != "torch" and kernels.usable(tensor)


def _bag_sum(indices: torch.Tensor, table: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return F.embedding_bag(indices, table, offsets, mode="sum", per_sample_weights=weights)


def row_dots(a: torch.Tensor, w: torch.Tensor, codes: Codes) -> torch.Tensor:
    """``out[n] = a[rows[n]] · w[cols[n]]`` for every entry, without materialising the gathered rows."""
    try:
        return torch.ops.aten._embedding_bag_per_sample_weights_backward(
            a.contiguous(), w, codes.cols, codes.offsets, codes.rows, 0, -1)
    except (RuntimeError, AttributeError):  # a torch without that kernel: the same through autograd
        with torch.enable_grad():
            weights = torch.ones(len(codes.cols), dtype=a.dtype, device=a.device, requires_grad=True)
            out = _bag_sum(codes.cols, w.detach(), codes.offsets, weights)
            return torch.autograd.grad(out, weights, a)[0]


def _by_row_sum(codes: Codes, table: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``out[r] = sum over entries n of row r of weights[n] * table[cols[n]]`` (``[n_rows, d]``)."""
    if _triton(table):
        from saekit.sae.kernels import segment_sum

        return segment_sum(table, codes.cols, weights, codes.row_bounds)
    return _bag_sum(codes.cols, table, codes.offsets, weights)


def _by_latent_sum(codes: Codes, table: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``out[l] = sum over entries n of latent l of weights[n] * table[rows[n]]`` (``[n_latents, d]``)."""
    order, bounds = codes.by_latent
    if _triton(table):
        from saekit.sae.kernels import segment_sum

        return segment_sum(table, codes.rows, weights, bounds, order)
    return _bag_sum(codes.rows[order], table, bounds[:-1], weights[order])


class _GatheredLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, x, weight, bias, shift, codes):
        ctx.save_for_backward(x, weight)
        ctx.codes = codes
        return values.clone()

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        codes: Codes = ctx.codes
        grad_x = grad_w = grad_b = grad_shift = None
        if ctx.needs_input_grad[1]:
            grad_x = _by_row_sum(codes, weight, grad)
        if ctx.needs_input_grad[2]:
            grad_w = _by_latent_sum(codes, x, grad)
        if ctx.needs_input_grad[3] or ctx.needs_input_grad[4]:
            per_latent = torch.zeros(codes.n_latents, dtype=grad.dtype, device=grad.device).index_add_(0, codes.cols, grad)
            grad_b = per_latent if ctx.needs_input_grad[3] else None
            # every entry's pre-activation holds -shift · weight[col]: one [d_sae] x [d_sae, d_in] product
            grad_shift = -(per_latent @ weight) if ctx.needs_input_grad[4] else None
        return None, grad_x, grad_w, grad_b, grad_shift, None


def gathered_linear(values: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                    codes: Codes, shift: torch.Tensor | None = None) -> torch.Tensor:
    """``(x[rows[n]] - shift) · weight[cols[n]] + bias[cols[n]]`` per entry, whose value the caller already has
    (``values``, from the dense forward; ``x`` is the input already shifted); the backward touches only the
    entries. Give ``x`` without gradient and ``shift`` (the decoder bias): the shift's gradient is then one
    product, not a ``[B, d_in]`` gradient of the input."""
    if shift is None:
        shift = torch.zeros(x.shape[-1], dtype=x.dtype, device=x.device)
    return _GatheredLinear.apply(values, x, weight, bias, shift, codes)


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, weight, codes):
        ctx.save_for_backward(values, weight)
        ctx.codes = codes
        return _by_row_sum(codes, weight, values)

    @staticmethod
    def backward(ctx, grad):
        values, weight = ctx.saved_tensors
        codes: Codes = ctx.codes
        grad_values = row_dots(grad, weight, codes) if ctx.needs_input_grad[0] else None
        grad_w = _by_latent_sum(codes, grad, values) if ctx.needs_input_grad[1] else None
        return grad_values, grad_w, None


def sparse_decode(values: torch.Tensor, weight: torch.Tensor, codes: Codes) -> torch.Tensor:
    """``sum over entries of values[n] * weight[cols[n]]`` per row: ``[n_rows, d]`` (no bias)."""
    return _SparseDecode.apply(values, weight, codes)
