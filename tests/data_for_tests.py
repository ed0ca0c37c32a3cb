"""Synthetic activations shared by the tests: tokens made of a few atoms of a known dictionary."""

import torch


def dictionary_data(n_tokens: int, d: int, n_atoms: int, active: int, seed: int = 0):
    """Tokens that are sparse non-negative combinations of ``active`` atoms of a random unit dictionary."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.nn.functional.normalize(torch.randn(n_atoms, d, generator=g), dim=1)
    chosen = torch.rand(n_tokens, n_atoms, generator=g).argsort(1)[:, :active]
    codes = torch.zeros(n_tokens, n_atoms).scatter_(1, chosen, torch.rand(n_tokens, active, generator=g) * 2 + 0.5)
    return codes @ atoms, atoms


def toy_store():
    """20k tokens of width 16 from a dictionary of 64 atoms, as an activation store named ``toy``."""
    import saekit as sk

    x, _ = dictionary_data(20_000, 16, 64, 3, seed=1)
    return sk.ActivationStore.from_array(x, "toy", chunk_bytes=2**16)


def quick(**changes):
    """A TrainConfig for short training runs in tests."""
    import saekit as sk

    base = {"total_tokens": 20_000, "batch_size": 500, "lr": 3e-3, "log_every": 5, "checkpoint_every": 10,
            "dead_after_tokens": 5_000, "eval_tokens": 2_000}
    return sk.TrainConfig(**{**base, **changes})


def commits(ws, job) -> int:
    """How many resume points the job's event log holds."""
    from saekit.jobs.events import read_all
    from saekit.jobs.lifecycle import events_path

    return len([r for r in read_all(events_path(ws, job.id)) if r["t"] == "commit"])


def wait_for(predicate, what: str, timeout: float = 120) -> None:
    """Poll ``predicate`` until it holds (a bound against a stuck worker, not a timing assumption)."""
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
