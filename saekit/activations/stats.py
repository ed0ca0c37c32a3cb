"""Running statistics of activations, merged exactly across batches (Chan et al.'s parallel update, float64)."""

from __future__ import annotations

import numpy as np
import torch


def batch_stats(x) -> dict:
    """Count, mean, sum of squared deviations, sum of row norms and max |x| of rows ``x`` [n, d], computed
    where ``x`` lives (on a GPU the rows never leave it for this) and read back in one copy (one host sync).
    Within a batch the sums are float32 (two passes: the mean, then the squared deviations from it; float64
    costs 3x on CPUs); batches merge in float64. Rows holding NaN or infinity are counted (``nonfinite``) and
    left out of the rest (masked, so that no output's size depends on the data)."""
    return batch_stats_later(x)()


def batch_stats_later(x):
    """``batch_stats(x)`` as a function to call later: on a GPU the numbers are copied to pinned memory without
    waiting, and the call waits for that copy (so the host can queue the next forward pass first)."""
    x = torch.as_tensor(x).detach().float()
    rows, d = x.shape
    if rows == 0:
        return lambda: {"count": 0, "nonfinite": 0}
    finite = torch.isfinite(x).all(dim=1, keepdim=True)
    n = finite.sum()
    kept = torch.where(finite, x, 0.0)
    mean = kept.sum(0) / n.clamp_min(1)
    m2 = torch.where(finite, x - mean, 0.0).pow(2).sum(0)
    scalars = torch.stack([n.double(), torch.linalg.vector_norm(kept, dim=1).double().sum(), kept.abs().max().double()])
    packed, ready = to_host(torch.cat([scalars, mean.double(), m2.double()]))

    def finish() -> dict:
        if ready is not None:  # pragma: gpu
            ready.synchronize()
        numbers = packed.numpy()
        count = int(numbers[0])
        if count == 0:
            return {"count": 0, "nonfinite": rows}
        return {"count": count, "mean": numbers[3:3 + d], "m2": numbers[3 + d:], "norm_sum": float(numbers[1]),
                "max_abs": float(numbers[2]), "nonfinite": rows - count}

    return finish


def to_host(t: torch.Tensor):
    """``(host tensor, event)``: a CUDA tensor's copy into pinned host memory, queued without waiting (wait for the
    event before reading it); a CPU tensor as it is, with no event."""
    if t.device.type != "cuda":
        return t, None
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)  # pragma: gpu
    host.copy_(t, non_blocking=True)  # pragma: gpu
    ready = torch.cuda.Event()  # pragma: gpu
    ready.record()  # pragma: gpu
    return host, ready  # pragma: gpu


class RunningStats:
    """Count, per-dimension mean and variance, mean row norm and max |x| of every row seen so far."""

    def __init__(self, d: int):
        self.count = 0
        self.mean = np.zeros(d, np.float64)
        self.m2 = np.zeros(d, np.float64)  # sum of squared deviations from the mean
        self.norm_sum = 0.0
        self.max_abs = 0.0
        self.nonfinite = 0  # rows with NaN or infinity, left out of the rest

    def update(self, x) -> None:
        """Add rows ``x`` [n, d] (numpy or torch, any float dtype)."""
        self.merge(batch_stats(x))

    def merge(self, batch: dict) -> None:
        """Add the statistics of a batch (from ``batch_stats``)."""
        self.nonfinite += int(batch.get("nonfinite", 0))
        n = batch["count"]
        if n == 0:
            return
        total = self.count + n
        delta = batch["mean"] - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + batch["m2"] + delta**2 * (self.count * n / total)
        self.count = total
        self.norm_sum += batch["norm_sum"]
        self.max_abs = max(self.max_abs, batch["max_abs"])

    @property
    def var(self) -> np.ndarray:
        return self.m2 / self.count if self.count else np.zeros_like(self.m2)

    def to_dict(self) -> dict:
        """JSON-able state (restored exactly by ``from_dict``)."""
        return {"count": self.count, "mean": self.mean.tolist(), "m2": self.m2.tolist(),
                "norm_sum": self.norm_sum, "max_abs": self.max_abs, "nonfinite": self.nonfinite}

    @classmethod
    def from_dict(cls, state: dict) -> "RunningStats":
        stats = cls(len(state["mean"]))
        stats.count = int(state["count"])
        stats.mean = np.asarray(state["mean"], np.float64)
        stats.m2 = np.asarray(state["m2"], np.float64)
        stats.norm_sum, stats.max_abs = float(state["norm_sum"]), float(state["max_abs"])
        stats.nonfinite = int(state.get("nonfinite", 0))
        return stats

    def summary(self) -> dict:
        """What a user reads: count, mean norm, max |x|, and the mean over dimensions of mean and variance."""
        return {"count": self.count, "mean_norm": self.norm_sum / self.count if self.count else 0.0,
                "max_abs": self.max_abs, "mean_of_means": float(self.mean.mean()),
                "mean_variance": float(self.var.mean()), "nonfinite": self.nonfinite}
