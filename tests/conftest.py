import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

import kinds_for_tests  # noqa: E402,F401  (registers the test job kinds)

import saekit as sk  # noqa: E402


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture
def ws(tmp_path, monkeypatch):
    """A fresh workspace, made the default for this test (and for subprocesses through SAEKIT_HOME)."""
    path = tmp_path / "ws"
    monkeypatch.setenv("SAEKIT_HOME", str(path))
    workspace = sk.set_workspace(path)
    yield workspace
    sk.set_workspace(None)
