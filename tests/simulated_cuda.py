"""A second device on a machine without one: tensors "on cuda:0" that are CPU tensors underneath, with CUDA's rules
about mixing devices enforced, so a test on this CPU finds the code that would fail on a GPU.

Inside ``with simulated_cuda():``

- ``x.to("cuda")``, ``x.cuda()`` and factories given ``device="cuda"`` (or ``device=t.device`` of such a tensor)
  make ``OnCuda`` tensors, whose ``.device`` says ``cuda:0``; ``.cpu()`` and ``.to("cpu")`` make plain ones again;
- an operation on tensors of both kinds fails as CUDA fails (``Expected all tensors to be on the same device``),
  except where CUDA allows it: a 0-dim CPU tensor as an operand, CPU indices into a CUDA tensor, and copies;
- indexing a CPU tensor with CUDA indices fails with CUDA's message (``indices should be either on cpu or on the
  same device as the indexed tensor``), and ``.numpy()`` of a CUDA tensor fails as it does there.

The arithmetic is the CPU's, so results can be compared with a plain CPU run bit for bit.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

CUDA = torch.device("cuda", 0)


class OnCuda(torch.Tensor):
    """A CPU tensor standing for one on cuda:0 (see the module)."""

    __torch_function__ = torch._C._disabled_torch_function_impl

    @property
    def device(self):  # what code reads to place new tensors beside this one
        return CUDA

    @property
    def is_cuda(self):
        return True


def _is_cuda(device) -> bool:
    return device is not None and torch.device(device).type == "cuda"


def _plain(value):
    return value.as_subclass(torch.Tensor) if isinstance(value, OnCuda) else value


def _wrap(value):
    return value.as_subclass(OnCuda) if isinstance(value, torch.Tensor) and not isinstance(value, OnCuda) else value


TO_CPU = {torch.Tensor.cpu, torch.Tensor.numpy}
INDEXING = {torch.Tensor.__getitem__, torch.Tensor.index_select, torch.index_select, torch.Tensor.gather,
            torch.gather, torch.Tensor.take, torch.take, torch.Tensor.__setitem__, torch.Tensor.index_put_,
            torch.Tensor.index_put, torch.Tensor.scatter_, torch.Tensor.scatter, torch.scatter,
            torch.Tensor.scatter_add_, torch.Tensor.scatter_reduce, torch.Tensor.scatter_reduce_,
            torch.Tensor.index_add_, torch.Tensor.index_copy_, torch.Tensor.masked_fill_, torch.Tensor.masked_fill}
COPIES = {torch.Tensor.copy_}
NO_DEVICE = {torch.Tensor.dim, torch.Tensor.size, torch.Tensor.numel, torch.Tensor.__len__, torch.Tensor.data_ptr,
             torch.Tensor.element_size, torch._has_compatible_shallow_copy_type}  # questions about tensors, no work


def _device_arg(args, kwargs):
    if "device" in kwargs:
        return kwargs["device"]
    for a in args:
        if isinstance(a, (str, torch.device)):
            try:
                return torch.device(a)
            except RuntimeError:
                continue
    return None


class _Mode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in NO_DEVICE:
            return func(*args, **kwargs)
        leaves, _ = tree_flatten((args, kwargs))
        tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
        on_cuda = [t for t in tensors if isinstance(t, OnCuda)]
        name = getattr(func, "__name__", str(func))
        if name == "__get__":  # an attribute (.T, .grad, .data ...): of the same tensor, on the same device
            out = func(*args, **kwargs)
            return tree_map(_wrap, out) if on_cuda else out
        if func in (torch.Tensor.to, torch.Tensor.cuda) or name in ("to", "cuda"):
            target = CUDA if func is torch.Tensor.cuda or name == "cuda" else _device_arg(args[1:], kwargs)
            if target is not None:
                if "device" in kwargs:
                    kwargs["device"] = "cpu"
                rest = ["cpu" if isinstance(a, (str, torch.device)) else _plain(a) for a in args[1:]]
                out = func(_plain(args[0]), *rest, **kwargs) if func is not torch.Tensor.cuda else _plain(args[0])
                return _wrap(out) if _is_cuda(target) else _plain(out)
            out = func(*tree_map(_plain, args), **tree_map(_plain, kwargs))
            return _wrap(out) if on_cuda else out
        if func in TO_CPU:
            if func is torch.Tensor.numpy and on_cuda:
                raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the "
                                "tensor to host memory first.")
            return func(*tree_map(_plain, args), **tree_map(_plain, kwargs))
        device = kwargs.get("device")
        if _is_cuda(device):  # a factory asked for the device
            kwargs["device"] = "cpu"
            return tree_map(_wrap, func(*tree_map(_plain, args), **tree_map(_plain, kwargs)))
        if on_cuda and len(on_cuda) < len(tensors) and func not in COPIES:
            plain = [t for t in tensors if not isinstance(t, OnCuda)]
            if func in INDEXING:
                indexed = args[0]
                if not isinstance(indexed, OnCuda):
                    raise RuntimeError("indices should be either on cpu or on the same device as the indexed "
                                       "tensor (cpu)")
                values = [t for t in plain if t is not indexed and t.ndim > 0 and t.dtype not in
                          (torch.int64, torch.int32, torch.bool, torch.uint8)]
                if func in (torch.Tensor.__setitem__, torch.Tensor.index_put_) and values:
                    raise RuntimeError("Expected all tensors to be on the same device, but found at least two "
                                       "devices, cuda:0 and cpu!")
            elif any(t.ndim > 0 for t in plain):
                raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                                   f"cuda:0 and cpu! ({name})")
        out = func(*tree_map(_plain, args), **tree_map(_plain, kwargs))
        if func is torch.Tensor.__setitem__:
            return out
        return tree_map(_wrap, out) if on_cuda else out


@contextmanager
def simulated_cuda():
    """See the module: while it is active, ``"cuda"`` is a second device made of CPU tensors."""
    with _Mode():
        yield CUDA


# -- host syncs ----------------------------------------------------------------------------------------------

SYNCS = {  # what makes the host wait for a CUDA device: a value read back, or an output whose size is data's
    torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__,
    torch.Tensor.__index__, torch.Tensor.cpu, torch.nonzero, torch.Tensor.nonzero,
    torch.argwhere, torch.Tensor.argwhere, torch.masked_select, torch.Tensor.masked_select, torch.bincount,
    torch.Tensor.bincount, torch.unique, torch.Tensor.unique, torch.unique_consecutive, torch.Tensor.unique_consecutive,
}


class Sync(str):
    """The name of an operation that would make the host wait; ``.site`` is ``file:line`` of the code that called
    it (the first frame outside torch)."""

    site = ""


def _site() -> str:
    frame = sys._getframe(2)
    while frame is not None and ("/torch/" in frame.f_code.co_filename or frame.f_code.co_filename == __file__):
        frame = frame.f_back
    return f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else "?"


class _Syncs(TorchFunctionMode):
    def __init__(self, seen: list):
        super().__init__()
        self.seen = seen

    def _note(self, name: str) -> None:
        sync = Sync(name)
        sync.site = _site()
        self.seen.append(sync)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if func in SYNCS:
            self._note(name)
        elif func is torch.Tensor.__getitem__ and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in tree_flatten(args[1:])[0]):
            self._note("boolean-mask indexing")
        elif func in (torch.repeat_interleave, torch.Tensor.repeat_interleave) and "output_size" not in kwargs and \
                len(args) > 1 and isinstance(args[1], torch.Tensor):
            self._note("repeat_interleave")
        return func(*args, **kwargs)


@contextmanager
def counting_syncs():
    """``with counting_syncs() as seen:`` the operations that would make the host wait for a GPU (reading a value
    back, or an output sized by the data), in the order they ran: names, each with the ``.site`` that called it."""
    seen: list[Sync] = []
    with _Syncs(seen):
        yield seen

