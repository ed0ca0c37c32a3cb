"""A real HTTP server on loopback that answers each path with fixed JSON (or what a function of the request's
headers makes): for the tests of endpoints that answer wrongly (a 401 echoing the key, ``content: null``,
garbage). ``with json_server({"/v1/models": models}) as url:`` gives the base URL."""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODELS = (200, {"object": "list", "data": [{"id": "m", "object": "model", "created": 0, "owned_by": "tests"}]})


@contextmanager
def json_server(routes: dict):
    """``routes``: path -> (status, payload) or a function (headers) -> (status, payload); a payload that is
    ``bytes`` is sent as it is. Unknown paths answer 404."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _answer(self):
            route = routes.get(self.path.split("?")[0], (404, {"error": {"message": "not found"}}))
            status, payload = route(self.headers) if callable(route) else route
            body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self._answer()

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self._answer()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
