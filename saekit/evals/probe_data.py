"""Labelled texts for sparse probing that every machine has offline: Python's standard library.

- ``stdlib_topic``: a docstring's module family (networking, files and archives, text and parsing, e-mail,
  concurrency); one binary task per family, "this family or another".
- ``code_or_prose``: the source of a standard-library function (its docstring cut out) or a docstring.

Each dataset is a list of ``(text, class)``; the same on every run (sorted, no randomness).
"""

from __future__ import annotations

import ast
import inspect
import warnings

from saekit.errors import ConfigError
from saekit.models.tiny import public_objects

TOPICS = {
    "networking": "ftplib http.client imaplib poplib smtplib socket socketserver ssl urllib.parse urllib.request",
    "files": "filecmp glob gzip lzma os pathlib shutil tarfile tempfile zipfile zipimport",
    "text": "ast difflib re shlex string stringprep textwrap tokenize",
    "email": "email mailbox mimetypes quopri",
    "concurrency": "asyncio queue sched selectors signal subprocess threading",
}
DATASETS = ("stdlib_topic", "code_or_prose")


def _doc(obj) -> str | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        doc = inspect.getdoc(obj)
    return doc if doc and len(doc) >= 40 else None


def stdlib_topic() -> list[tuple[str, str]]:
    seen, rows = set(), []
    for topic, modules in TOPICS.items():
        for module in modules.split():
            for obj in public_objects(module):
                doc = _doc(obj)
                if doc and doc not in seen:
                    seen.add(doc)
                    rows.append((doc, topic))
    return rows


def _code(function) -> str | None:
    """A function's source without its docstring (None when it has none to read)."""
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        return None
    try:
        tree = ast.parse(inspect.cleandoc("\n" + source) if source.startswith((" ", "\t")) else source)
    except SyntaxError:
        return None
    node = tree.body[0] if tree.body else None
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
        first = node.body[0]
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            node.body = node.body[1:] or [ast.Pass()]
    code = ast.unparse(tree)
    return code if len(code) >= 40 else None


def code_or_prose() -> list[tuple[str, str]]:
    rows, seen = [], set()
    for modules in TOPICS.values():
        for module in modules.split():
            for obj in public_objects(module):
                doc = _doc(obj)
                if doc and doc not in seen:
                    seen.add(doc)
                    rows.append((doc, "prose"))
                if inspect.isfunction(obj):
                    code = _code(obj)
                    if code and code not in seen:
                        seen.add(code)
                        rows.append((code, "code"))
    return rows


def dataset(name: str) -> list[tuple[str, str]]:
    """The labelled texts of ``name`` (one of ``DATASETS``)."""
    if name == "stdlib_topic":
        return stdlib_topic()
    if name == "code_or_prose":
        return code_or_prose()
    raise ConfigError(f"no probing dataset named {name!r}; saekit has {list(DATASETS)}")
