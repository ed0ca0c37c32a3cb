"""Triton kernels for sparse codes on a CUDA GPU: segment sums over gathered rows (``sparse.py`` uses them
when Triton imports and the tensors are on CUDA; elsewhere it uses ``embedding_bag``).

``segment_sum`` computes, for each segment ``s`` (entries ``bounds[s]..bounds[s+1]`` of ``order``):

    out[s] = sum over those entries n of weights[n] * table[index[n]]

One program per segment and block of columns walks the segment's entries in order, so the sums are
deterministic (no atomics): a resumed run repeats an uninterrupted one bit for bit. The decoder's forward is
the segment sum by row (``table`` = ``W_dec``); the gradients of ``W_dec`` and ``W_enc`` are segment sums by
latent (``table`` = the output's gradient, the input).
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU installs: sparse.py falls back to embedding_bag
    triton = None

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # the tests run the kernels on the CPU this way


def usable(tensor: torch.Tensor) -> bool:
    """Whether the kernels run on ``tensor``'s device (CUDA with Triton; the CPU under ``TRITON_INTERPRET=1``)."""
    return triton is not None and (tensor.is_cuda or INTERPRET)


if triton is not None:

    @triton.jit
    def _segment_sum_kernel(out_ptr, table_ptr, index_ptr, order_ptr, weight_ptr, bounds_ptr, dim,
                            BLOCK: tl.constexpr, ORDERED: tl.constexpr):
        segment = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        inside = cols < dim
        first = tl.load(bounds_ptr + segment)
        last = tl.load(bounds_ptr + segment + 1)
        total = tl.zeros([BLOCK], dtype=tl.float32)
        p = first
        while p < last:  # (a while loop: Triton's interpreter cannot range over loaded bounds)
            if ORDERED:
                n = p
            else:
                n = tl.load(order_ptr + p).to(tl.int64)
            row = tl.load(index_ptr + n).to(tl.int64)
            weight = tl.load(weight_ptr + n).to(tl.float32)
            total += weight * tl.load(table_ptr + row * dim + cols, mask=inside, other=0.0).to(tl.float32)
            p += 1
        tl.store(out_ptr + segment * dim + cols, total, mask=inside)


def segment_sum(table: torch.Tensor, index: torch.Tensor, weights: torch.Tensor, bounds: torch.Tensor,
                order: torch.Tensor | None = None) -> torch.Tensor:
    """``out [n_segments, dim]`` (float32) as the module docstring says. ``bounds`` has ``n_segments + 1``
    entries; ``order`` (None: the identity) lists the entries segment by segment."""
    n_segments, dim = len(bounds) - 1, table.shape[1]
    table = table.contiguous()
    out = torch.empty(n_segments, dim, dtype=torch.float32, device=table.device)
    if n_segments == 0 or dim == 0:
        return out
    block = min(512, triton.next_power_of_2(dim))
    grid = (n_segments, triton.cdiv(dim, block))
    _segment_sum_kernel[grid](out, table, index, order if order is not None else index, weights.contiguous(), bounds,
                              dim, BLOCK=block, ORDERED=order is None, num_warps=4 if block >= 256 else 1)
    return out
