"""A stub OpenAI-compatible chat server on 127.0.0.1 for the captioning tests.

Each request takes the next scripted action from a queue; with an empty
queue the server replies with ``default`` (a callable of the request number).
Actions:

- ``("reply", text)``: HTTP 200 with ``text`` as the message content;
- ``("status", code)`` or ``("status", code, headers)``: that status and an error body;
- ``("slow", seconds, text)``: wait, then reply with ``text``.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def variants_json(tag: str, n: int) -> str:
    """A valid RSRT reply with ``n`` distinct variants marked by ``tag``."""
    return json.dumps({"variants": [{"one_sentence": f"A scene {tag} number {v} with a pond.",
                                     "feature": f"A pond {tag}/{v} lies in the north.",
                                     "caption": f"Trees {tag}/{v} surround a calm pond."} for v in range(n)]})


class StubChatServer:
    """A threaded HTTP server that serves ``POST /v1/chat/completions`` from a script."""

    def __init__(self, default: Callable[[int], Any] | None = None) -> None:
        self.actions: deque[tuple] = deque()
        self.default = default or (lambda number: ("reply", variants_json(f"r{number}", 5)))
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - the http.server hook name
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                with stub._lock:
                    number = len(stub.requests)
                    stub.requests.append(body)
                    stub.headers.append(dict(self.headers))
                    stub.paths.append(self.path)
                    action = stub.actions.popleft() if stub.actions else stub.default(number)
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                try:
                    self._act(action)
                finally:
                    with stub._lock:
                        stub.in_flight -= 1

            def _act(self, action: tuple) -> None:
                kind = action[0]
                if kind == "slow":
                    time.sleep(action[1])
                    action = ("reply", action[2])
                    kind = "reply"
                if kind == "reply":
                    payload = {"id": "x", "object": "chat.completion",
                               "choices": [{"index": 0, "message": {"role": "assistant", "content": action[1]},
                                            "finish_reason": "stop"}]}
                    self._send(200, json.dumps(payload), {})
                elif kind == "status":
                    headers = action[2] if len(action) > 2 else {}
                    self._send(action[1], json.dumps({"error": {"message": f"stub status {action[1]}"}}), headers)
                else:
                    raise ValueError(f"unknown stub action {action!r}")

            def _send(self, status: int, text: str, headers: dict[str, str]) -> None:
                data = text.encode("utf-8")
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and closed the connection

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> "StubChatServer":
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()
