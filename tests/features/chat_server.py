"""A real HTTP server on loopback speaking OpenAI's chat-completions protocol, answering with a local model
(saekit's ``LocalChat``): ``GET /v1/models``, ``POST /v1/chat/completions`` (with ``logprobs`` and
``top_logprobs``). It records every answer it sent (the request body's hash), can refuse its first requests
with 503 (to exercise the client's retries) and can hold one request until released (to kill a client
while it waits)."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ChatServer:
    def __init__(self, chat, model: str = "tiny-chat", *, fail_first: int = 0, hold_at: int | None = None):
        self.chat, self.model = chat, model
        self.fail_first, self.hold_at = fail_first, hold_at
        self.requests = 0  # chat requests received
        self.refused = 0
        self.answered: list[str] = []  # hashes of the request bodies answered (fully sent)
        self.holding = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()  # one forward pass at a time
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, payload: dict) -> bool:
                body = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    self.wfile.flush()
                    return True
                except (BrokenPipeError, ConnectionResetError):
                    return False

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": server.model, "object": "model", "created": 0,
                                                                  "owned_by": "saekit-tests"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": "not found"}})
                    return
                with server._lock:
                    server.requests += 1
                    n = server.requests
                    refuse = n <= server.fail_first
                    if refuse:
                        server.refused += 1
                if refuse:
                    self._send(503, {"error": {"message": "busy, try again", "type": "server_error"}})
                    return
                if server.hold_at is not None and n == server.hold_at:
                    server.holding.set()
                    server.release.wait(60)
                payload = server.answer(json.loads(raw))
                if self._send(200, payload):
                    with server._lock:
                        server.answered.append(hashlib.sha256(raw).hexdigest())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def answer(self, request: dict) -> dict:
        import torch

        messages = request["messages"]
        with self._model_lock:
            ids = self.chat._ids(messages)
            lm = self.chat.lm
            if request.get("logprobs"):
                with torch.no_grad():
                    logp = lm.model(input_ids=torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)
                top = torch.topk(logp, min(int(request.get("top_logprobs") or 1), 20))
                alts = [{"token": lm.tokenizer.decode([int(t)]), "logprob": float(v), "bytes": None}
                        for v, t in zip(top.values, top.indices)]
                text = alts[0]["token"]
                logprobs = {"content": [{"token": text, "logprob": alts[0]["logprob"], "bytes": None,
                                         "top_logprobs": alts}], "refusal": None}
                out_tokens = 1
            else:
                out = lm.generate(ids, max_new_tokens=int(request.get("max_tokens") or 16))
                text, logprobs, out_tokens = out.text, None, len(out.ids)
        return {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
                             "logprobs": logprobs}],
                "usage": {"prompt_tokens": len(ids), "completion_tokens": out_tokens,
                          "total_tokens": len(ids) + out_tokens}}

    def __enter__(self) -> "ChatServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
