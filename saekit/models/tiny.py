"""Tiny random models with a tokenizer trained offline, for tests, notebooks and docs.

``make_tiny_model(path, arch="llama")`` writes a folder that ``sk.load_model(path)`` loads: a config with a
few small blocks, random weights (seeded) and a byte-level BPE tokenizer trained on Python's own
docstrings, which every machine has. Nothing touches the network.
"""

from __future__ import annotations

import importlib
import inspect
import warnings
from pathlib import Path

from saekit._quiet import quietly_importing

# standard-library modules whose docstrings make a small English corpus present on every machine
_DOC_MODULES = (
    "abc argparse array ast asyncio base64 bisect calendar cmd codecs collections colorsys configparser "
    "contextlib copy csv dataclasses datetime decimal difflib doctest email enum filecmp fnmatch fractions "
    "ftplib functools getopt gettext glob gzip hashlib heapq hmac html http.client imaplib inspect io "
    "ipaddress itertools json locale logging lzma mailbox math mimetypes numbers operator optparse os "
    "pathlib pickle pkgutil platform plistlib poplib pprint queue quopri random re reprlib sched secrets "
    "selectors shelve shlex shutil signal smtplib socket socketserver sqlite3 ssl statistics string "
    "stringprep struct subprocess symtable tarfile tempfile textwrap threading timeit tokenize trace "
    "traceback types typing unittest urllib.parse urllib.request uuid warnings wave weakref xml.dom.minidom "
    "zipfile zipimport zoneinfo"
).split()

_SPECIAL = {"bos": "<|bos|>", "eos": "<|eos|>", "pad": "<|pad|>", "unk": "<|unk|>"}


def public_objects(module_name: str) -> list:
    """A standard-library module, its public classes and functions, and their public methods, in a fixed order
    (nothing when the module does not import here)."""
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return []
    objects: list[object] = [module]
    for name, value in sorted(vars(module).items()):
        if name.startswith("_") or getattr(value, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(value) or inspect.isfunction(value):
            objects.append(value)
            if inspect.isclass(value):
                objects += [m for n, m in sorted(vars(value).items()) if not n.startswith("_") and inspect.isfunction(m)]
    return objects


def stdlib_docstrings(limit: int | None = None, min_chars: int = 40) -> list[str]:
    """Docstrings of the standard library (modules, their public classes, functions and methods), in a
    fixed order; each is one document."""
    seen, docs = set(), []
    for module_name in _DOC_MODULES:
        for obj in public_objects(module_name):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. typing.io's deprecation
                doc = inspect.getdoc(obj)
            if doc and len(doc) >= min_chars and doc not in seen:
                seen.add(doc)
                docs.append(doc)
                if limit is not None and len(docs) >= limit:
                    return docs
    return docs


def train_tokenizer(texts: list[str], vocab_size: int = 512, *, pad_token: bool = True, add_bos: bool = True):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts`` (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [_SPECIAL[k] for k in ("bos", "eos", "unk")] + ([_SPECIAL["pad"]] if pad_token else [])
    tok = Tokenizer(models.BPE(unk_token=_SPECIAL["unk"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    if add_bos:
        bos = _SPECIAL["bos"]
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    kwargs = {"bos_token": _SPECIAL["bos"], "eos_token": _SPECIAL["eos"], "unk_token": _SPECIAL["unk"]}
    if pad_token:
        kwargs["pad_token"] = _SPECIAL["pad"]
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def tiny_config(arch: str = "llama", *, vocab_size: int = 512, d_model: int = 64, n_layers: int = 4,
                n_heads: int = 4, max_positions: int = 256, **overrides):
    """A small config of a supported architecture (random weights come from ``from_config``)."""
    from transformers import AutoConfig

    common = {"vocab_size": vocab_size, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": None}
    kw: dict[str, int | float]
    if arch == "gpt2":
        kw = dict(n_embd=d_model, n_layer=n_layers, n_head=n_heads, n_positions=max_positions)
    elif arch == "gpt_neox":
        kw = dict(hidden_size=d_model, num_hidden_layers=n_layers, num_attention_heads=n_heads,
                  intermediate_size=4 * d_model, max_position_embeddings=max_positions, rotary_pct=0.25)
    elif arch == "phi":
        kw = dict(hidden_size=d_model, num_hidden_layers=n_layers, num_attention_heads=n_heads,
                  intermediate_size=4 * d_model, max_position_embeddings=max_positions, partial_rotary_factor=0.5)
    elif arch in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3"):
        kw = dict(hidden_size=d_model, num_hidden_layers=n_layers, num_attention_heads=n_heads,
                  num_key_value_heads=max(1, n_heads // 2), intermediate_size=2 * d_model,
                  max_position_embeddings=max_positions)
        if arch in ("gemma", "gemma2", "qwen3"):
            kw["head_dim"] = d_model // n_heads
    else:
        raise ValueError(f"no tiny config for {arch!r}")
    return AutoConfig.for_model(arch, **{**common, **kw, **overrides})  # overrides win


CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@quietly_importing("transformers")  # its "Writing model shards" bar would show the first time
def make_tiny_model(path: str | Path, arch: str = "llama", *, seed: int = 0, texts: list[str] | None = None,
                    vocab_size: int = 512, pad_token: bool = True, chat: bool = False, **config_overrides) -> Path:
    """Write a tiny random ``arch`` model and its offline-trained tokenizer to ``path``; returns the path.
    ``chat=True`` gives the tokenizer a (plain) chat template, so the model can stand in for a chat model."""
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(path)
    tokenizer = train_tokenizer(texts or stdlib_docstrings(), vocab_size=vocab_size, pad_token=pad_token)
    config = tiny_config(arch, vocab_size=len(tokenizer), **config_overrides)
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    return path
