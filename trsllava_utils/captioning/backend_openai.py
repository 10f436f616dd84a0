"""The openai backend: any OpenAI-compatible chat endpoint that takes images (vLLM, Ollama, LM Studio, hosted APIs).

Each image goes out as a base64 data URL in one chat request. Requests run
on a bounded thread pool. A timeout, a dropped connection, HTTP 429 or a 5xx
reply is retried with exponential backoff, and ``Retry-After`` is honoured.
Any other 4xx reply would come back the same on a retry, so it fails at once.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from PIL import Image

from .base import Captioner, CaptionerError

logger = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 425, 429})
"""4xx statuses that a later retry can clear; every 5xx is retried as well."""


class RequestFailed(CaptionerError):
    """A chat request that failed for good. ``retryable`` is True when every retry of a retryable error failed."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable


def image_data_url(image: Image.Image, image_format: str = "JPEG") -> str:
    """Encode an RGB image as a ``data:`` URL (JPEG at quality 95, or PNG)."""
    buffer = io.BytesIO()
    if image_format.upper() == "JPEG":
        image.convert("RGB").save(buffer, format="JPEG", quality=95)
        mime = "image/jpeg"
    else:
        image.save(buffer, format="PNG")
        mime = "image/png"
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def _message_text(body: Any) -> str:
    """Return the text of the first choice of a chat-completions response body."""
    try:
        content = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise RequestFailed(f"response has no choices[0].message.content: {str(body)[:200]}") from exc
    if isinstance(content, list):
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if not isinstance(content, str):
        raise RequestFailed(f"response content is a {type(content).__name__}, expected text")
    return content


class OpenAICaptioner(Captioner):
    """A model behind an OpenAI-compatible ``/chat/completions`` endpoint.

    Args:
        base_url: The API root, for example ``http://127.0.0.1:8000/v1``; requests
            go to ``<base_url>/chat/completions``.
        model: Model name as the server lists it.
        api_key_env: Environment variable that contains the key; when it is unset, no
            ``Authorization`` header is sent (local vLLM and Ollama need none).
        max_concurrency: Requests in flight at once; also the run loop's batch size.
        timeout_s: Per-request timeout in seconds (connect and read).
        max_retries: Retries after the first try, on timeouts, 429 and 5xx.
        backoff_s: First wait before a retry; doubled each time, plus up to 10% jitter.
        max_backoff_s: Maximum wait between two tries, in seconds.
        seed: Sent as ``seed`` (servers that do not know it ignore it), plus the
            request index, so that sampled variants differ.
    """

    name = "openai"

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY", n_variants: int = 5,
                 generation_mode: str = "single", max_concurrency: int = 4, timeout_s: float = 120.0,
                 max_retries: int = 3, max_new_tokens: int = 768, temperature: float = 0.7, seed: int = 0,
                 backoff_s: float = 1.0, max_backoff_s: float = 60.0, image_format: str = "JPEG") -> None:
        if not base_url or not model:
            raise ValueError("the openai backend needs a base URL (openai_base_url) and a model name "
                             "(captioner_model)")
        super().__init__(model, n_variants=n_variants, generation_mode=generation_mode,
                         batch_size=max_concurrency, temperature=temperature)
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.api_key_env = api_key_env
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.max_new_tokens = max_new_tokens
        self.check_token_budget(max_new_tokens)
        self.seed = seed
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.image_format = image_format
        self.retries = 0
        """Retries made so far, over all requests."""
        self._request_index = 0
        self._lock = threading.Lock()
        self._local = threading.local()
        if not os.environ.get(api_key_env):
            logger.info("environment variable %s is unset; requests to %s go without an API key",
                        api_key_env, self.url)

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _payload(self, image: Image.Image, prompt: str) -> dict[str, Any]:
        with self._lock:
            index = self._request_index
            self._request_index += 1
        content = [{"type": "text", "text": prompt},
                   {"type": "image_url", "image_url": {"url": image_data_url(image, self.image_format)}}]
        return {"model": self.model, "messages": [{"role": "user", "content": content}],
                "max_tokens": self.max_new_tokens, "temperature": self.temperature, "seed": self.seed + index}

    def _wait_s(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(max(float(retry_after), 0.0), self.max_backoff_s)
            except ValueError:
                pass
        wait = min(self.backoff_s * (2 ** attempt), self.max_backoff_s)
        return wait + random.uniform(0, 0.1 * wait)

    def request(self, image: Image.Image, prompt: str) -> str:
        """Send one chat request and return the reply text, retrying what a retry can fix.

        Raises:
            RequestFailed: A 4xx error other than 408, 409, 425 and 429, a response
                without text, or the last retry failed.
        """
        payload = self._payload(image, prompt)
        last_error = ""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                response = self._session().post(self.url, json=payload, headers=self._headers(),
                                                timeout=self.timeout_s)
            except requests.Timeout:
                last_error = f"timed out after {self.timeout_s:g} s"
            except requests.ConnectionError as exc:
                last_error = f"connection failed: {exc}"
            else:
                status = response.status_code
                if status == 200:
                    try:
                        body = response.json()
                    except ValueError as exc:
                        raise RequestFailed(f"{self.url}: response is not JSON: {response.text[:200]!r}; check "
                                            "that openai_base_url is an OpenAI-compatible API root") from exc
                    return _message_text(body)
                excerpt = response.text[:300].replace("\n", " ")
                if status < 500 and status not in RETRY_STATUS:
                    raise RequestFailed(f"{self.url}: HTTP {status}, not retried because the same request "
                                        f"would fail again: {excerpt}", status=status)
                last_error = f"HTTP {status}: {excerpt}"
                retry_after = response.headers.get("Retry-After")
            if attempt == self.max_retries:
                break
            wait = self._wait_s(attempt, retry_after)
            logger.warning("%s: %s; retry %d of %d in %.1f s", self.url, last_error, attempt + 1,
                           self.max_retries, wait)
            with self._lock:
                self.retries += 1
            time.sleep(wait)
        raise RequestFailed(f"{self.url}: {last_error} (gave up after {self.max_retries + 1} tries)",
                            retryable=True)

    def _request_or_error(self, image: Image.Image, prompt: str) -> str | Exception:
        try:
            return self.request(image, prompt)
        except RequestFailed as exc:
            return exc

    def generate(self, images: list[Image.Image], prompt: str) -> list[str | Exception]:
        """Send one request per image, ``max_concurrency`` at a time; a failed request gives its exception."""
        if len(images) == 1:
            return [self._request_or_error(images[0], prompt)]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(images))) as pool:
            return list(pool.map(lambda image: self._request_or_error(image, prompt), images))
