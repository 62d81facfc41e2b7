"""A small client for ``fdcore serve`` (standard library only: usable from any upload pipeline).

    from fdcore.client import Client

    client = Client("http://127.0.0.1:8080", api_key="...")
    client.wait_until_ready(timeout=120)
    for result in client.score(["a.jpg", "b.png"]):         # paths, bytes, or (name, bytes) pairs
        print(result["name"], result["score"], result["error"])

``score`` returns the service's per-image dicts (``name``, ``score``, ``decision``, ``probabilities``, ``error``,
``detail``, ``notes``). A 429 (service full) is retried after its Retry-After delay, up to ``retries`` times; any
other refusal raises :class:`ServiceError` with the service's code and message.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
import uuid
from typing import Iterable


class ServiceError(Exception):
    """The service refused a request: ``status`` (HTTP), ``code`` (stable reason) and the service's message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class Client:
    def __init__(self, url: str = "http://127.0.0.1:8080", api_key: str | None = None, timeout: float = 60.0,
                 retries: int = 5):
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.retries = retries

    def _request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        headers = dict(headers or {})
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return response.status, response.read(), dict(response.headers)
            except urllib.error.HTTPError as exc:
                payload = exc.read()
                if exc.code == 429 and attempt < self.retries:
                    time.sleep(float(exc.headers.get("Retry-After", "1") or 1))
                    continue
                try:
                    error = json.loads(payload)["error"]
                    raise ServiceError(exc.code, error["code"], error["message"]) from None
                except (ValueError, KeyError, TypeError):
                    raise ServiceError(exc.code, "http_error", payload[:200].decode("utf-8", "replace")) from None
        raise AssertionError("unreachable")

    def ready(self) -> bool:
        try:
            status, _, _ = self._request("GET", "/v2/health/ready")
        except (ServiceError, OSError):
            return False
        return status == 200

    def wait_until_ready(self, timeout: float = 120.0, interval: float = 0.25) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.url} was not ready within {timeout:g} s")
            time.sleep(interval)

    def model(self) -> dict:
        return json.loads(self._request("GET", "/v1/model")[1])

    def score(self, images: Iterable[str | os.PathLike | bytes | tuple[str, bytes]]) -> list[dict]:
        """Score images in one request (multipart); one dict per image, in order."""
        boundary = uuid.uuid4().hex
        parts = []
        for index, image in enumerate(images):
            if isinstance(image, tuple):
                name, data = image
            elif isinstance(image, (bytes, bytearray)):
                name, data = f"image{index}", bytes(image)
            else:
                name = os.path.basename(os.fspath(image))
                with open(image, "rb") as handle:
                    data = handle.read()
            safe = name.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{safe}"\r\n'
                         "Content-Type: application/octet-stream\r\n\r\n".encode("utf-8") + data + b"\r\n")
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        _, payload, _ = self._request("POST", "/v1/score", body,
                                      {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        return json.loads(payload)["results"]
