"""Sparse codes and their autograd: the decoder and the encoder's backward cost O(nnz · d_in), not O(B · d_sae · d_in).

A batch's active latents are ``Codes``: ``rows``/``cols`` of the nonzero entries, sorted by row, with
``offsets`` where each row starts. ``gathered_linear`` gives the encoder's pre-activations at those
entries with gradients for ``x``, ``W_enc`` and ``b_enc`` computed from the entries only;
``sparse_decode`` is ``codes @ W_dec`` as an ``embedding_bag``, whose backward is one ``embedding_bag``
(grouped by latent) and one row-dot per entry. Only the encoder's dense forward matmul remains.
"""

from __future__ import annotations

from functools import cached_property

import torch
import torch.nn.functional as F


class Codes:
    """Positions of a batch's nonzero latents: entry ``n`` is (``rows[n]``, ``cols[n]``), sorted by row."""

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, n_rows: int, n_latents: int):
        self.rows, self.cols, self.n_rows, self.n_latents = rows, cols, n_rows, n_latents

    @classmethod
    def from_topk(cls, indices: torch.Tensor, n_latents: int) -> Codes:
        """Codes of ``indices [B, k]`` (k latents per row)."""
        b, k = indices.shape
        rows = torch.arange(b, device=indices.device).repeat_interleave(k)
        codes = cls(rows, indices.reshape(-1), b, n_latents)
        codes.__dict__["offsets"] = torch.arange(0, b * k, k, device=indices.device)  # k entries a row
        return codes

    @cached_property
    def offsets(self) -> torch.Tensor:
        """Where each row's entries start (length ``n_rows``)."""
        counts = count(self.rows, self.n_rows)
        return torch.cumsum(counts, 0) - counts

    @cached_property
    def by_latent(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(order of the entries grouped by latent, where each latent's group starts)."""
        order = torch.argsort(self.cols, stable=True)
        counts = count(self.cols, self.n_latents)
        return order, torch.cumsum(counts, 0) - counts

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


def _by_latent_sum(codes: Codes, table: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``out[l] = sum over entries n of latent l of weights[n] * table[rows[n]]`` (``[n_latents, d]``)."""
    order, starts = codes.by_latent
    return _bag_sum(codes.rows[order], table, starts, weights[order])


class _GatheredLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, x, weight, bias, codes):
        ctx.save_for_backward(x, weight)
        ctx.codes = codes
        return values.clone()

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        codes: Codes = ctx.codes
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            grad_x = _bag_sum(codes.cols, weight, codes.offsets, grad)
        if ctx.needs_input_grad[2]:
            grad_w = _by_latent_sum(codes, x, grad)
        if ctx.needs_input_grad[3]:
            grad_b = torch.zeros(codes.n_latents, dtype=grad.dtype, device=grad.device).index_add_(0, codes.cols, grad)
        return None, grad_x, grad_w, grad_b, None


def gathered_linear(values: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                    codes: Codes) -> torch.Tensor:
    """``x[rows[n]] · weight[cols[n]] + bias[cols[n]]`` per entry, whose value the caller already has
    (``values``, from the dense forward); the backward touches only the entries."""
    return _GatheredLinear.apply(values, x, weight, bias, codes)


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, weight, codes):
        ctx.save_for_backward(values, weight)
        ctx.codes = codes
        return _bag_sum(codes.cols, weight, codes.offsets, values)

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
