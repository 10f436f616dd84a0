"""An embedder backed by an OpenAI-compatible ``/embeddings`` endpoint.

It reproduces a method that used a hosted embedding model, or uses a local
embedding server (vLLM, Ollama, LM Studio, text-embeddings-inference). The
request is ``POST {base_url}/embeddings`` with ``{"model", "input": [texts],
"encoding_format": "float"}``; the reply's ``data[i].embedding`` rows are put
back in input order by their ``index``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence

import numpy as np
import requests
from tqdm.auto import tqdm

from .embedders import Embedder, EmbedderError, l2_normalise

logger = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
"""HTTP statuses that are retried; any other error status fails at once."""


class OpenAIEmbedder(Embedder):
    """An embedder that calls an OpenAI-compatible endpoint, in batches, with retries.

    The identity is ``openai:<model>@<hash of base URL, model and dimensions>``.
    NOTE: a hosted model can change behind the same name, and the identity
    cannot detect that. Clear its rows from the store
    (``VectorStore.delete_model``) when the provider announces a new version.

    Args:
        model: the endpoint's model name, e.g. ``"text-embedding-3-small"``.
        base_url: the API root, e.g. ``"https://api.openai.com/v1"`` or ``"http://127.0.0.1:8000/v1"``.
        api_key_env: the environment variable that contains the key; local servers may need none.
        dimensions: ask the endpoint for shorter vectors (``text-embedding-3-*`` models), or ``None``.
        timeout_s: seconds to wait for each request.
        max_retries: retries after a connection error, a timeout or a status in :data:`RETRY_STATUS`.
        backoff_s: first wait between tries, doubled on each retry (a ``Retry-After`` header wins).
    """

    def __init__(self, model: str, base_url: str, api_key_env: str = "OPENAI_API_KEY",
                 dimensions: int | None = None, timeout_s: float = 60.0, max_retries: int = 5,
                 backoff_s: float = 1.0) -> None:
        if not model:
            raise EmbedderError("an OpenAI-compatible embedder needs a model name, e.g. 'openai:text-embedding-3-small'")
        self.model = model
        self.name = f"openai:{model}"
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/embeddings"
        self.api_key_env = api_key_env
        self.dimensions = dimensions
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.dimension = dimensions
        key_material = f"{self.base_url}\n{model}\n{dimensions}".encode("utf-8")
        self.identity = f"{self.name}@{hashlib.sha256(key_material).hexdigest()[:12]}"
        self.source = f"OpenAI-compatible endpoint {self.url}, model {model}"
        self.session = requests.Session()
        api_key = os.environ.get(api_key_env)
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"
        else:
            logger.info("%s is not set; sending requests to %s without an API key", api_key_env, self.url)

    def _post(self, texts: list[str]) -> dict:
        payload: dict = {"model": self.model, "input": texts, "encoding_format": "float"}
        if self.dimensions is not None:
            payload["dimensions"] = self.dimensions
        for attempt in range(self.max_retries + 1):
            wait = self.backoff_s * (2 ** attempt)
            try:
                response = self.session.post(self.url, json=payload, timeout=self.timeout_s)
            except (requests.ConnectionError, requests.Timeout) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    try:
                        return response.json()
                    except ValueError as exc:
                        raise EmbedderError(f"{self.url}: response is not JSON ({exc}): {response.text[:200]!r}; "
                                            "check that base_url is an OpenAI-compatible API root") from None
                body = response.text[:300]
                if response.status_code not in RETRY_STATUS:
                    hint = f"; check {self.api_key_env}" if response.status_code in (401, 403) else ""
                    raise EmbedderError(f"{self.url}: HTTP {response.status_code} for model {self.model}{hint}: {body}")
                problem = f"HTTP {response.status_code}: {body}"
                retry_after = response.headers.get("Retry-After", "")
                if retry_after.replace(".", "", 1).isdigit():
                    wait = float(retry_after)
            if attempt == self.max_retries:
                raise EmbedderError(f"{self.url}: failed after {self.max_retries + 1} tries; last error: {problem}")
            logger.warning("%s: try %d of %d failed (%s); retrying in %.1f s", self.url, attempt + 1,
                           self.max_retries + 1, problem, wait)
            time.sleep(wait)
        raise AssertionError("unreachable")

    def _parse(self, reply: dict, n_texts: int) -> np.ndarray:
        data = reply.get("data") if isinstance(reply, dict) else None
        if not isinstance(data, list) or len(data) != n_texts:
            count = len(data) if isinstance(data, list) else "no"
            raise EmbedderError(f"{self.url}: expected {n_texts} embeddings in 'data', got {count}")
        try:
            ordered = sorted(data, key=lambda item: item["index"])
            vectors = np.array([item["embedding"] for item in ordered], dtype=np.float32)
        except (KeyError, TypeError, ValueError) as exc:
            raise EmbedderError(f"{self.url}: malformed embeddings in the response ({exc}); check that the "
                                "server implements the OpenAI embeddings API") from None
        if [item["index"] for item in ordered] != list(range(n_texts)) or vectors.ndim != 2:
            raise EmbedderError(f"{self.url}: response indices or vector lengths do not match the {n_texts} "
                                "inputs; check that the server implements the OpenAI embeddings API")
        return vectors

    def encode(self, texts: Sequence[str], batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        """Return L2-normalised float32 vectors, one request per ``batch_size`` texts."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dimension or 0), dtype=np.float32)
        parts = []
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc=f"embed {self.name}", unit="request", disable=not show_progress):
            batch = texts[start:start + batch_size]
            parts.append(self._parse(self._post(batch), len(batch)))
        dims = {part.shape[1] for part in parts}
        if len(dims) != 1:
            raise EmbedderError(f"{self.url}: vectors of different lengths {sorted(dims)} across requests")
        self.dimension = dims.pop()
        return l2_normalise(np.concatenate(parts, axis=0))
