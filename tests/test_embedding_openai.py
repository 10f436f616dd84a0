"""The OpenAI-compatible embedder against a stub /embeddings server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from trsllava_utils.embedders import EmbedderError
from trsllava_utils.embedding import embed_texts, load_embedder
from trsllava_utils.openai_embeddings import OpenAIEmbedder


class StubServer:
    """Returns ``[len(text), 1, 0]`` for each input, in reversed order of ``index``.

    ``failures`` lists HTTP error statuses to return, one per request, before
    normal replies resume.
    """

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.failures: list[int] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server hook name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append({"path": self.path, **body})
                stub.headers.append(dict(self.headers))
                if stub.failures:
                    status = stub.failures.pop(0)
                    self._reply(status, {"error": {"message": f"stub status {status}"}}, {"Retry-After": "0"})
                    return
                data = [{"object": "embedding", "index": i, "embedding": [float(len(text)), 1.0, 0.0]}
                        for i, text in enumerate(body["input"])]
                self._reply(200, {"object": "list", "data": data[::-1], "model": body["model"]})

            def _reply(self, status: int, payload: dict, headers: dict | None = None) -> None:
                encoded = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(encoded)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(encoded)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub() -> Iterator[StubServer]:
    server = StubServer()
    yield server
    server.close()


def _expected(texts: list[str]) -> np.ndarray:
    rows = np.array([[len(text), 1.0, 0.0] for text in texts], dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_openai_batches_and_order(stub: StubServer, monkeypatch) -> None:
    monkeypatch.setenv("TEST_EMBED_KEY", "sk-test")
    embedder = load_embedder("openai:text-embedding-3-small", base_url=stub.base_url, api_key_env="TEST_EMBED_KEY")
    texts = ["a", "bb", "ccc", "dddd", "eeeee"]
    vectors = embedder.encode(texts, batch_size=2)
    assert [request["input"] for request in stub.requests] == [["a", "bb"], ["ccc", "dddd"], ["eeeee"]]
    assert stub.requests[0]["path"] == "/v1/embeddings"
    assert stub.requests[0]["model"] == "text-embedding-3-small"
    assert stub.headers[0]["Authorization"] == "Bearer sk-test"
    assert np.allclose(vectors, _expected(texts))
    assert embedder.dimension == 3


def test_openai_identity(stub: StubServer) -> None:
    embedder = load_embedder("openai:m1", base_url=stub.base_url)
    assert embedder.name == "openai:m1"
    assert embedder.identity.startswith("openai:m1@")
    assert embedder.identity != load_embedder("openai:m1", base_url=stub.base_url + "/other").identity
    assert embedder.identity != load_embedder("m2", base_url=stub.base_url).identity


def test_openai_without_key(stub: StubServer, monkeypatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    embedder = load_embedder("local-model", base_url=stub.base_url, api_key_env="NO_SUCH_KEY_VAR")
    embedder.encode(["a"])
    assert "Authorization" not in stub.headers[0]


def test_openai_retries_then_succeeds(stub: StubServer) -> None:
    stub.failures = [503, 429]
    embedder = OpenAIEmbedder("m", stub.base_url, max_retries=2, backoff_s=0.0)
    vectors = embedder.encode(["a", "bb"])
    assert len(stub.requests) == 3
    assert np.allclose(vectors, _expected(["a", "bb"]))


def test_openai_retries_exhausted(stub: StubServer) -> None:
    stub.failures = [500, 500, 500]
    embedder = OpenAIEmbedder("m", stub.base_url, max_retries=2, backoff_s=0.0)
    with pytest.raises(EmbedderError, match="failed after 3 tries; last error: HTTP 500"):
        embedder.encode(["a"])
    assert len(stub.requests) == 3


def test_openai_auth_error_not_retried(stub: StubServer) -> None:
    stub.failures = [401]
    embedder = OpenAIEmbedder("m", stub.base_url, api_key_env="MY_KEY", max_retries=3, backoff_s=0.0)
    with pytest.raises(EmbedderError, match="HTTP 401 for model m; check MY_KEY"):
        embedder.encode(["a"])
    assert len(stub.requests) == 1


def test_openai_connection_refused() -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    embedder = OpenAIEmbedder("m", f"http://127.0.0.1:{port}/v1", max_retries=1, backoff_s=0.0, timeout_s=2)
    with pytest.raises(EmbedderError, match="failed after 2 tries; last error: ConnectionError"):
        embedder.encode(["a"])


def test_openai_short_reply_rejected(stub: StubServer, monkeypatch) -> None:
    embedder = OpenAIEmbedder("m", stub.base_url)
    monkeypatch.setattr(embedder, "_post", lambda texts: {"data": [{"index": 0, "embedding": [1.0, 0.0]}]})
    with pytest.raises(EmbedderError, match="expected 2 embeddings in 'data', got 1"):
        embedder.encode(["a", "b"])


def test_openai_through_store(stub: StubServer, tmp_path) -> None:
    from trsllava_utils.vector_store import VectorStore

    embedder = OpenAIEmbedder("m", stub.base_url)
    with VectorStore(tmp_path / "vectors.sqlite") as store:
        embed_texts(embedder, ["a", "bb"], store=store, show_progress=False)
        vectors, stats = embed_texts(embedder, ["bb", "a"], store=store, show_progress=False)
    assert len(stub.requests) == 1
    assert stats.n_cached == 2
    assert np.allclose(vectors, _expected(["bb", "a"]))
