"""Inside saekit's own calls the Hugging Face libraries' progress bars are off: saekit shows one progress
view of its own (a job's widget or text bar), and their bars ("Loading weights", "Generating train split",
"Writing model shards") would clutter cells and worker logs. The user's own calls are left as they were."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator


def _switches():
    """(is_disabled, disable, enable) of each library already imported."""
    out = []
    if "transformers" in sys.modules:
        from transformers.utils import logging as tl

        out.append((lambda: not tl.is_progress_bar_enabled(), tl.disable_progress_bar, tl.enable_progress_bar))
    if "datasets" in sys.modules:
        import datasets.utils as du

        out.append((du.are_progress_bars_disabled, du.disable_progress_bars, du.enable_progress_bars))
    if "huggingface_hub" in sys.modules:
        import huggingface_hub.utils as hu

        out.append((hu.are_progress_bars_disabled, hu.disable_progress_bars, hu.enable_progress_bars))
    return out


@contextmanager
def quiet_progress() -> Iterator[None]:
    """Turn the libraries' progress bars off for the block, then back to how they were."""
    switched = []
    for disabled, disable, enable in _switches():
        if not disabled():
            disable()
            switched.append(enable)
    try:
        yield
    finally:
        for enable in switched:
            enable()


def quietly_importing(*modules: str):
    """Decorator: ``fn`` runs inside ``quiet_progress()`` with ``modules`` imported first (a library imported
    inside ``fn`` would otherwise show its bars the first time: datasets' "Generating train split")."""
    import functools
    import importlib

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            for module in modules:
                importlib.import_module(module)
            with quiet_progress():
                return fn(*args, **kwargs)
        return wrapper
    return decorate


quietly = quietly_importing()  # decorator: ``fn`` runs inside ``quiet_progress()``
