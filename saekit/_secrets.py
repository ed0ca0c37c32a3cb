"""Credentials never reach a stored text: ``mask(text)`` hides API keys, bearer tokens and the values of secret
environment variables in error messages, tracebacks and log lines before they are written anywhere (the
registry, an event log, a worker log, an export's manifest).

An endpoint may echo the key it was given (``401 Invalid API key provided: Bearer sk-...``); what is masked is
what looks like a credential by its form, plus the exact values of the environment variables that hold
credentials (``*_KEY``, ``*_TOKEN``, ``*_SECRET``, ``*_PASSWORD`` and the ones saekit was told to read).
"""

from __future__ import annotations

import os
import re
import threading

MASK = "***"
_FORMS = (
    re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_\-]{8,}"),  # OpenAI-style keys: sk-..., sk-proj-...
    re.compile(r"\bhf_[A-Za-z0-9]{16,}"),  # Hugging Face tokens
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key ids
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}"),  # GitHub tokens
)
_AFTER = (  # a credential after a word that announces one: the word stays, the value goes
    re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=\-]{6,}"),
    re.compile(r"(?i)(\b(?:api[_-]?key|apikey|access[_-]?key|secret[_-]?key|secret|password|passwd|authorization)"
               r"[\"']?\s*[:=]\s*[\"']?)[^\s\"',;}]{6,}"),
)
_SECRET_NAME = re.compile(r"(?i)(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)$")
_named: set[str] = set()  # variables saekit was told hold a credential (OpenAIChat's api_key_env)
_lock = threading.Lock()


def note_secret_variable(name: str) -> None:
    """The environment variable ``name`` holds a credential: its value is masked wherever it appears."""
    with _lock:
        _named.add(name)


def _secret_values() -> list[str]:
    names = set(_named) | {n for n in os.environ if _SECRET_NAME.search(n)}
    values = {os.environ.get(n, "") for n in names}
    return sorted((v for v in values if len(v) >= 8), key=len, reverse=True)


def mask(text):
    """``text`` with every credential replaced by ``***`` (anything that is not a string is returned as it is)."""
    if not isinstance(text, str) or not text:
        return text
    for value in _secret_values():
        text = text.replace(value, MASK)
    for form in _FORMS:
        text = form.sub(MASK, text)
    for form in _AFTER:
        text = form.sub(lambda m: m.group(1) + MASK, text)
    return text


def mask_data(value):
    """``mask`` applied to every string inside a JSON-like value (dicts, lists)."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {k: mask_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_data(v) for v in value]
    return value
