"""The LLMs that explain and score features, behind one small interface, with every call cached.

A backend has ``name`` (what identifies its answers in the cache), ``spec()`` (how a background job builds
it again: never an API key, only the name of the variable that holds one), ``check()`` (refuses what can be
refused before a job starts), ``complete(messages, max_tokens, temperature)`` -> ``Reply`` and
``choice_logprobs(messages, choices)`` -> ``Reply`` with ``logprobs`` {choice: log-probability of answering
it}, which lets even a small model score: its preference between "Yes" and "No" is a number, not a coin.
A local backend also has ``continuation_logprob(prefix, continuation)``: the log-probability of a text after a
plain-text prefix, which the chat-completions protocol does not give for HTTP endpoints.

- ``LocalChat(lm)``: a chat model loaded with ``sk.load_model`` (its tokenizer must have a chat template).
- ``OpenAIChat(model, base_url=None, api_key_env="OPENAI_API_KEY")``: any OpenAI-compatible endpoint (vLLM,
  llama.cpp's server, hosted APIs) through the ``openai`` client (``pip install saekit[llm]``), which retries
  429 and 5xx answers with backoff (``max_retries``); ``concurrency`` bounds the calls in flight.
- ``CachedChat(backend, folder)``: answers by a hash of (backend name, call kind, messages, settings) from
  ``<workspace>/cache/llm/``, so a rerun, or a resume after kill -9, makes no call twice.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from saekit._secrets import mask, note_secret_variable
from saekit.errors import ConfigError, CredentialsError, DataError, ModelLoadError

Messages = list[dict]


@dataclass
class Reply:
    text: str
    tokens_in: int = 0
    tokens_out: int = 0
    logprobs: dict[str, float] = field(default_factory=dict)
    cached: bool = False


class LocalChat:
    """A local HF chat model (a ``LanguageModel``) as explainer or scorer."""

    concurrency = 1

    def __init__(self, lm):
        if not getattr(lm.tokenizer, "chat_template", None):
            raise ConfigError(f"{lm.name} is not a chat model: its tokenizer has no chat template",
                              suggestion="use an instruction-tuned model (e.g. SmolLM2-135M-Instruct) or OpenAIChat")
        self.lm = lm
        self.name = f"local:{lm.ref.get('fingerprint') or lm.name}"  # the cache's key
        self.model_name = lm.name  # what provenance shows beside the key

    def spec(self) -> dict:
        return {"kind": "local", "model": self.lm.ref}

    def check(self) -> None:
        return None

    def _ids(self, messages: Messages) -> list[int]:
        text = self.lm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.lm.tokenizer(text, add_special_tokens=False)["input_ids"]

    def complete(self, messages: Messages, *, max_tokens: int = 48, temperature: float = 0.0) -> Reply:
        ids = self._ids(messages)
        out = self.lm.generate(ids, max_new_tokens=max_tokens, temperature=temperature or None, seed=0)
        return Reply(out.text.strip(), len(ids), len(out.ids))

    def choice_logprobs(self, messages: Messages, choices: tuple[str, ...]) -> Reply:
        import torch

        ids = self._ids(messages)
        with torch.no_grad():
            logits = self.lm.model(input_ids=torch.tensor([ids], device=self.lm.device)).logits[0, -1].float()
        logp = logits.log_softmax(-1)
        first = {c: self.lm.tokenizer(c, add_special_tokens=False)["input_ids"][0] for c in choices}
        values = {c: float(logp[t]) for c, t in first.items()}
        return Reply(max(values, key=values.__getitem__), len(ids), 1, values)

    def continuation_logprob(self, prefix: str, continuation: str) -> Reply:
        """``log P(continuation | prefix)`` under the model, summed over the continuation's tokens."""
        import torch

        tok = self.lm.tokenizer
        head = tok(prefix, add_special_tokens=False)["input_ids"]
        tail = tok(continuation, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = self.lm.model(input_ids=torch.tensor([head + tail], device=self.lm.device)).logits[0].float().log_softmax(-1)
        value = float(logp[torch.arange(len(head) - 1, len(head) + len(tail) - 1), torch.tensor(tail)].sum())
        return Reply("", len(head) + len(tail), 0, {"continuation": value})


class OpenAIChat:
    """An OpenAI-compatible chat-completions endpoint as explainer or scorer."""

    def __init__(self, model: str, base_url: str | None = None, *, api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 4, max_retries: int = 5, timeout: float = 60.0):
        if not isinstance(model, str) or not model:
            raise ConfigError(f"model={model!r}: name the endpoint's model, e.g. 'gpt-4o-mini'")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigError(f"concurrency={concurrency!r} must be a positive integer")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigError(f"max_retries={max_retries!r} must be a whole number >= 0 (retries of 429 and 5xx answers)")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
            raise ConfigError(f"timeout={timeout!r} must be a number of seconds > 0, e.g. 60")
        if not isinstance(api_key_env, str) or not api_key_env:
            raise ConfigError(f"api_key_env={api_key_env!r} must name an environment variable, e.g. 'OPENAI_API_KEY'")
        note_secret_variable(api_key_env)
        self.model, self.base_url, self.api_key_env = model, base_url, api_key_env
        self.model_name = model
        self.concurrency, self.max_retries, self.timeout = concurrency, max_retries, timeout
        self.name = f"openai:{model}@{base_url or 'https://api.openai.com/v1'}"  # the cache's key: model and endpoint
        self._client = None
        self._lock = threading.Lock()

    def spec(self) -> dict:
        return {"kind": "openai", "model": self.model, "base_url": self.base_url, "api_key_env": self.api_key_env,
                "concurrency": self.concurrency, "max_retries": self.max_retries, "timeout": self.timeout}

    def _key(self) -> str:
        key = os.environ.get(self.api_key_env)
        if key:
            return key
        if self.base_url is None:
            raise ConfigError(f"no API key: ${self.api_key_env} is not set", suggestion=f"export {self.api_key_env}=...")
        return "not-needed"  # a local server (vLLM, llama.cpp) usually takes any key

    def client(self):
        with self._lock:
            if self._client is None:
                try:
                    import openai
                except ImportError as exc:
                    raise ConfigError("OpenAIChat needs the openai package", suggestion="pip install 'saekit[llm]'") from exc
                self._client = openai.OpenAI(base_url=self.base_url, api_key=self._key(), max_retries=self.max_retries,
                                             timeout=self.timeout)
            return self._client

    def check(self) -> None:
        """The key is there and the endpoint answers (its model list), before any job starts."""
        import openai

        client = self.client()  # no key: a ConfigError of its own
        try:
            client.with_options(max_retries=1, timeout=10).models.list()
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise CredentialsError(f"{self.name} refused the API key in ${self.api_key_env}: {mask(str(exc))}",
                                   suggestion=f"set ${self.api_key_env} to a valid key") from None
        except openai.APIConnectionError as exc:
            raise ModelLoadError(f"cannot reach the endpoint {self.base_url or 'api.openai.com'}: {exc}",
                                 suggestion="start the server, or check base_url") from exc
        except openai.APIError as exc:  # an answer that is not a model list: the endpoint speaks another protocol
            raise ModelLoadError(f"{self.name} did not answer its model list as an OpenAI-compatible endpoint does: "
                                 f"{mask(str(exc))}", suggestion="check base_url (it usually ends in /v1)") from None
        except (AttributeError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{self.name} answered its model list with something unreadable "
                                 f"({type(exc).__name__}: {mask(str(exc))})",
                                 suggestion="check base_url (it usually ends in /v1)") from None

    def _create(self, **kwargs):
        """One chat completion; its first choice. Refused credentials and unreadable answers are saekit errors."""
        import openai

        try:
            out = self.client().chat.completions.create(model=self.model, **kwargs)
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise CredentialsError(f"{self.name} refused the API key in ${self.api_key_env}: {mask(str(exc))}",
                                   suggestion=f"set ${self.api_key_env} to a valid key, then job.resume()") from None
        choices = getattr(out, "choices", None)
        if not isinstance(choices, list) or not choices or getattr(choices[0], "message", None) is None:
            raise DataError(f"{self.name} answered without a message (choices={mask(repr(choices))[:200]}): "
                            "not an OpenAI-compatible chat completion",
                            suggestion="check base_url and model; the endpoint must serve /chat/completions")
        return out, choices[0]

    def complete(self, messages: Messages, *, max_tokens: int = 48, temperature: float = 0.0) -> Reply:
        out, choice = self._create(messages=messages, max_tokens=max_tokens, temperature=temperature)
        content = choice.message.content  # None or "" is an answer with no text: the caller decides
        usage = getattr(out, "usage", None)
        return Reply(str(content or "").strip(), getattr(usage, "prompt_tokens", 0) or 0,
                     getattr(usage, "completion_tokens", 0) or 0)

    def choice_logprobs(self, messages: Messages, choices: tuple[str, ...]) -> Reply:
        out, choice = self._create(messages=messages, max_tokens=1, temperature=0, logprobs=True, top_logprobs=10)
        text = (choice.message.content or "").strip()
        values = {c: -math.inf for c in choices}
        content = getattr(choice.logprobs, "content", None) or []
        for alt in (content[0].top_logprobs if content else []):
            for c in choices:
                if alt.token.strip().lower() == c.lower():
                    values[c] = max(values[c], alt.logprob)
        if all(math.isinf(v) for v in values.values()):  # no log-probabilities: the answer alone
            values = {c: (0.0 if text.lower().startswith(c.lower()) else -math.inf) for c in choices}
        usage = getattr(out, "usage", None)
        return Reply(text, getattr(usage, "prompt_tokens", 0) or 0, getattr(usage, "completion_tokens", 0) or 0, values)


def backend_from_spec(spec: dict, device: str = "auto"):
    """Build a backend again in a job from ``backend.spec()``."""
    if spec["kind"] == "local":
        from saekit.models.loading import load_model_from_ref

        return LocalChat(load_model_from_ref(spec["model"], device=device))
    if spec["kind"] == "openai":
        return OpenAIChat(spec["model"], spec["base_url"], api_key_env=spec["api_key_env"],
                          concurrency=spec["concurrency"], max_retries=spec["max_retries"], timeout=spec["timeout"])
    raise ConfigError(f"unknown LLM backend kind {spec['kind']!r}")


def as_backend(value):
    """A backend from what a user passes: a backend, or a ``LanguageModel`` (a local chat model)."""
    if hasattr(value, "complete") and hasattr(value, "choice_logprobs") and hasattr(value, "spec"):
        return value
    if hasattr(value, "tokenizer") and hasattr(value, "ref"):
        return LocalChat(value)
    raise ConfigError(f"explainer/scorer must be a LanguageModel (a chat model), LocalChat or OpenAIChat; "
                      f"got {type(value).__name__}")


class CachedChat:
    """``backend`` with every answer kept in ``folder`` (one JSON file per call, written atomically)."""

    def __init__(self, backend, folder: Path):
        self.backend, self.folder = backend, Path(folder)
        self.name, self.concurrency = backend.name, getattr(backend, "concurrency", 1)
        self.model_name = getattr(backend, "model_name", None)
        self.calls = self.hits = 0
        self._lock = threading.Lock()

    def _path(self, kind: str, messages: Messages, settings: dict) -> Path:
        key = hashlib.sha256(json.dumps([self.name, kind, messages, settings], sort_keys=True).encode()).hexdigest()
        return self.folder / key[:2] / f"{key}.json"

    def _cached(self, path: Path, call) -> Reply:
        if path.exists():
            try:
                data = json.loads(path.read_text())
                with self._lock:
                    self.hits += 1
                return Reply(**{**data, "cached": True})
            except (ValueError, TypeError):  # a damaged entry: ask again
                pass
        reply = call()
        with self._lock:
            self.calls += 1
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"text": reply.text, "tokens_in": reply.tokens_in, "tokens_out": reply.tokens_out,
                                   "logprobs": {k: (v if math.isfinite(v) else -1e30) for k, v in reply.logprobs.items()}}))
        os.replace(tmp, path)
        return reply

    def complete(self, messages: Messages, *, max_tokens: int = 48, temperature: float = 0.0) -> Reply:
        path = self._path("complete", messages, {"max_tokens": max_tokens, "temperature": temperature})
        return self._cached(path, lambda: self.backend.complete(messages, max_tokens=max_tokens, temperature=temperature))

    def choice_logprobs(self, messages: Messages, choices: tuple[str, ...]) -> Reply:
        path = self._path("choices", messages, {"choices": list(choices)})
        return self._cached(path, lambda: self.backend.choice_logprobs(messages, choices))

    def continuation_logprob(self, prefix: str, continuation: str) -> Reply:
        path = self._path("continuation", [{"role": "prefix", "content": prefix}], {"continuation": continuation})
        return self._cached(path, lambda: self.backend.continuation_logprob(prefix, continuation))
