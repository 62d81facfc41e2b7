"""The scoring service: FastAPI routes over fdcore's one scoring path (:mod:`fdcore.scoring`).

Flow of one request: auth -> body size checked (413 from Content-Length before reading, or while streaming) ->
byte budget and image admission (429 with Retry-After when the service is full) -> each image decoded in the
thread pool with predict's pixel policy and limits -> decoded images queued to the :class:`MicroBatcher` (the only
place the experts run) -> fused with the :class:`fdcore.scoring.Fusion` resolved at start-up -> JSON.
"""



import asyncio
import base64
import binascii
import concurrent.futures
import dataclasses
import hmac
import ipaddress
import json
import math
import os
import re
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from fdcore.errors import FdcoreError
from fdcore.images import DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_PIXELS

MIB = 1024 * 1024
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MIN_KEY_LENGTH = 16
# Testing aid: seconds the batching thread sleeps before each batch, so tests can hold images in the queue.
BATCH_DELAY_ENV = "FDCORE_SERVE_TEST_BATCH_DELAY"


class ServeError(FdcoreError):
    """A bad option or an ensemble the service cannot use (exit status 2)."""


class Refusal(Exception):
    """An HTTP error with a stable code, answered as ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


@dataclasses.dataclass
class ServeOptions:
    ensemble: str
    host: str = "127.0.0.1"
    port: int = 8080
    max_batch_size: int = 16
    max_wait_ms: float = 10.0
    max_queue: int = 256
    max_body_mb: float = 20.0
    max_images_per_request: int = 64
    max_inflight_mb: float = 256.0
    request_timeout_s: float = 30.0
    decode_workers: int = 2
    api_key_file: str | None = None
    insecure_no_auth: bool = False
    aggregator: str | None = None
    precision: str | None = None
    device: str = "auto"
    model_name: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO
    access_log: str | None = "-"

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * MIB)

    @property
    def name(self) -> str:
        return self.model_name or re.sub(r"[^A-Za-z0-9._-]", "-", Path(self.ensemble).resolve().name)[:64] or "fdcore"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_api_keys(path: str) -> list[bytes]:
    """One key per line (blank lines and ``#`` comments ignored); each at least 16 characters."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ServeError(f"--api-key-file {path}: cannot read it ({exc}); pass a UTF-8 text file with one key per "
                         "line") from None
    keys = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    if not keys:
        raise ServeError(f"--api-key-file {path} holds no key; put one key per line (e.g. from "
                         "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
    for number, key in enumerate(keys, start=1):
        if len(key) < MIN_KEY_LENGTH or any(c.isspace() for c in key):
            raise ServeError(f"--api-key-file {path}: key {number} is shorter than {MIN_KEY_LENGTH} characters or "
                             "holds spaces; use long random keys")
    return [key.encode("utf-8") for key in keys]


def check_options(options: ServeOptions) -> list[bytes]:
    """Validate what can be checked before binding; returns the API keys (empty when auth is off)."""
    if not Path(options.ensemble).is_dir():
        raise ServeError(f"--ensemble {options.ensemble} is not a directory; pass a folder holding ensemble.json, "
                         "an fdcore expert or a FeatDistill release")
    if options.model_name is not None and not _MODEL_NAME.match(options.model_name):
        raise ServeError(f"--model-name {options.model_name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    keys = read_api_keys(options.api_key_file) if options.api_key_file else []
    if not keys and not options.insecure_no_auth and not is_loopback(options.host):
        raise ServeError(f"--host {options.host} is not a loopback address and no --api-key-file is given: anyone "
                         "who can reach it could use the service. Pass --api-key-file FILE, or "
                         "--insecure-no-auth if a proxy in front of it authenticates")
    if options.aggregator is not None:
        from fdcore import registry

        registry.get_aggregator(options.aggregator)  # an unknown name is refused before minutes of loading
    return keys


class Metrics:
    """Prometheus metrics in the service's own registry (nothing global)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("fdcore_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=self.registry)
        self.latency = Histogram("fdcore_request_seconds", "Request latency by route", ["route"],
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                                 registry=self.registry)
        self.images = Counter("fdcore_images", "Images by outcome (scored, or the reason code)", ["outcome"],
                              registry=self.registry)
        self.batch_size = Histogram("fdcore_batch_size", "Images per model batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry)
        self.batch_seconds = Histogram("fdcore_batch_seconds", "Model time per batch",
                                       buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
                                       registry=self.registry)
        self.in_service = Gauge("fdcore_images_in_service", "Images admitted and not yet answered",
                                registry=self.registry)
        self.queued = Gauge("fdcore_images_queued", "Decoded images waiting for the model", registry=self.registry)
        self.ready = Gauge("fdcore_ready", "1 when the service accepts scoring requests", registry=self.registry)
        self.rejected = Counter("fdcore_rejected_requests", "Requests refused before scoring, by code", ["code"],
                                registry=self.registry)

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class Service:
    """The service's state: the loaded ensemble, the batcher, the decoding pool, admission counters."""

    def __init__(self, options: ServeOptions, keys: list[bytes], ensemble=None):
        self.options = options
        self.keys = keys
        self.metrics = Metrics()
        self.ensemble = ensemble
        self.fusion = None
        self.batcher = None
        self.pool = None  # decoding processes, started once the geometries are known
        self.ready = False
        self.draining = False
        self.failure: str | None = None
        self.images_in_service = 0
        self.images_decoding = 0  # admitted, not yet handed to the batcher: the batcher waits only for these
        self.bytes_in_service = 0
        self.log_stream = None
        if options.access_log == "-":
            self.log_stream = sys.stderr
        elif options.access_log:
            try:
                self.log_stream = open(options.access_log, "a", encoding="utf-8", buffering=1)
            except OSError as exc:
                raise ServeError(f"--access-log {options.access_log}: cannot append to it ({exc.strerror or exc}); "
                                 "pass a writable file, '-' for stderr or '' for none") from None
        self._log_lock = threading.Lock()

    # -- start-up ---------------------------------------------------------------------------------------------
    def load(self) -> None:
        """Load (verified, like predict), resolve the fusion rule, start the batcher, warm up, then report ready."""
        from fdcore.ensemble import resolve_device, resolve_precision
        from fdcore.ensemble_io import load_ensemble
        from fdcore.scoring import Fusion
        from fdcore.serve.batcher import MicroBatcher

        if self.ensemble is None:
            device = resolve_device(self.options.device)
            precision = resolve_precision(self.options.precision, device)
            self.say(f"loading ensemble {self.options.ensemble} ({device}, {precision})")
            self.ensemble = load_ensemble(self.options.ensemble, device=device, precision=precision)
        self.fusion = Fusion.resolve(self.ensemble, self.options.aggregator)
        self.pool = decoding_pool(self.options, self.ensemble.geometries)
        if self.fusion.set_level:
            raise ServeError(f"aggregator {self.fusion.name!r} ranks a whole set of images; a service scores them "
                             "as they come, so its scores would depend on the traffic. Use --aggregator mean (or "
                             "another per-image rule)")
        self.batcher = MicroBatcher(self._score_batch, self.options.max_batch_size,
                                    self.options.max_wait_ms / 1000.0, on_batch=self._batch_done,
                                    expecting=lambda: self.images_decoding,
                                    multiple_of=self.ensemble.scoring_chunk)
        self._warm_up()
        self.ready = True
        self.metrics.ready.set(1)
        self.say(f"ready: model {self.options.name}, {len(self.ensemble.members)} experts "
                 f"({', '.join(self.ensemble.names)}), aggregator {self.fusion.name}"
                 + (" (calibrated)" if self.fusion.calibrated else "")
                 + f", identity {self.ensemble.identity[:16]}")

    def _warm_up(self) -> None:
        """One full-size batch through the real path: kernel selection and first allocations happen now."""
        from PIL import Image

        from fdcore import scoring

        import io

        pixels = np.random.default_rng(0).integers(0, 256, size=(96, 128, 3), dtype=np.uint8)
        encoded = io.BytesIO()
        Image.fromarray(pixels).save(encoded, format="PNG")
        # every decoding process started and importing now, not on the first request
        warm = [self.pool.submit(decode_upload, encoded.getvalue(), None)
                for _ in range(2 * max(1, self.options.decode_workers))]
        decoded = [future.result() for future in warm][0]
        if not isinstance(decoded, scoring.Decoded):
            raise ServeError(f"the decoding processes cannot decode a test image: {decoded}")
        futures = self.batcher.submit([decoded] * self.options.max_batch_size)
        for future in futures:
            future.result()

    def _score_batch(self, items: list) -> list[np.ndarray]:
        from fdcore import scoring

        if self.ready and os.environ.get(BATCH_DELAY_ENV):
            time.sleep(float(os.environ[BATCH_DELAY_ENV]))
        probabilities = scoring.expert_probabilities(self.ensemble, items, batch_size=len(items))
        return list(probabilities.T)

    def _batch_done(self, size: int, seconds: float) -> None:
        self.metrics.batch_size.observe(size)
        self.metrics.batch_seconds.observe(seconds)

    def close(self) -> None:
        self.ready = False
        self.metrics.ready.set(0)
        if self.batcher is not None:
            self.batcher.close(timeout=self.options.request_timeout_s)
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        if self.log_stream not in (None, sys.stderr):
            self.log_stream.close()

    def say(self, message: str) -> None:
        print(f"fdcore serve: {message}", file=sys.stderr, flush=True)

    def log_access(self, record: dict) -> None:
        if self.log_stream is None:
            return
        line = json.dumps(record, sort_keys=True, ensure_ascii=True)
        with self._log_lock:
            self.log_stream.write(line + "\n")
            self.log_stream.flush()

    # -- per request ------------------------------------------------------------------------------------------
    def require_ready(self) -> None:
        if self.draining:
            raise Refusal(503, "draining", "the service is shutting down; retry on another replica",
                          {"Retry-After": "1", "Connection": "close"})
        if not self.ready:
            raise Refusal(503, "loading", "the model is still loading; retry shortly", {"Retry-After": "2"})

    def authenticate(self, authorization: str | None) -> None:
        if not self.keys:
            return
        scheme, _, token = (authorization or "").partition(" ")
        given = token.strip().encode("utf-8", "replace")
        matched = False
        for key in self.keys:  # every key is compared: the time taken does not say which one nearly matched
            matched |= hmac.compare_digest(given, key)
        if scheme.lower() != "bearer" or not matched:
            raise Refusal(401, "unauthorized", "missing or wrong API key: send 'Authorization: Bearer KEY'",
                          {"WWW-Authenticate": "Bearer"})

    def retry_after(self) -> str:
        return str(max(1, math.ceil(self.options.max_wait_ms / 1000 + 0.5)))

    def reserve_bytes(self, declared: int | None) -> int:
        needed = declared if declared is not None else self.options.max_body_bytes
        if self.bytes_in_service + needed > self.options.max_inflight_mb * MIB:
            raise Refusal(429, "overloaded", "too many request bytes in the service; retry after the delay",
                          {"Retry-After": self.retry_after()})
        self.bytes_in_service += needed
        return needed

    def admit_images(self, count: int) -> None:
        if count > self.options.max_images_per_request:
            raise Refusal(413, "too_many_images", f"{count} images in one request; the limit is "
                                                  f"{self.options.max_images_per_request} (--max-images-per-request)")
        if self.images_in_service + count > self.options.max_queue:
            raise Refusal(429, "overloaded", f"the queue is full ({self.images_in_service} images in the service, "
                                             f"limit {self.options.max_queue}); retry after the delay",
                          {"Retry-After": self.retry_after()})
        self.images_in_service += count
        self.metrics.in_service.set(self.images_in_service)

    def release_images(self, count: int) -> None:
        self.images_in_service -= count
        self.metrics.in_service.set(self.images_in_service)

    async def score_uploads(self, uploads: list[tuple[str, bytes | None, str | None]], deadline: float) -> list[dict]:
        """``uploads``: (name, bytes, or None with a reason code for an item refused before decoding)."""
        from fdcore import scoring

        loop = asyncio.get_running_loop()
        self.images_decoding += len(uploads)
        try:
            decoded = await asyncio.gather(*[self._decode(loop, data, code) for _, data, code in uploads])
        finally:
            self.images_decoding -= len(uploads)
        accepted = [index for index, item in enumerate(decoded) if isinstance(item, scoring.Decoded)]
        results = [self._result(name, item) for (name, _, _), item in zip(uploads, decoded)]
        if not accepted:
            self.batcher.wake()
        else:
            futures = self.batcher.submit([decoded[index] for index in accepted])
            self.metrics.queued.set(len(self.batcher))
            waiting = asyncio.gather(*[asyncio.wrap_future(future) for future in futures])
            try:
                columns = await asyncio.wait_for(waiting, timeout=max(0.001, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                for future in futures:
                    future.cancel()
                raise Refusal(504, "timeout", f"not scored within {self.options.request_timeout_s:g} s (--request-timeout-s); "
                                              "the service is saturated, retry later") from None
            probabilities = np.stack(columns, axis=1)
            scores = self.fusion.scores(self.ensemble, probabilities)
            split = scoring.disagreement(self.ensemble, self.fusion, probabilities)
            decides = bool(self.fusion.calibrated and self.ensemble.threshold)
            for column, index in enumerate(accepted):
                result = results[index]
                result["probabilities"] = dict(zip(self.ensemble.names, probabilities[:, column].tolist()))
                if math.isfinite(scores[column]):
                    result["score"] = float(scores[column])
                    result["decision"] = scoring.decision(result["score"],
                                                          self.ensemble.threshold if self.fusion.calibrated else None)
                    result["disagreement"] = bool(split[column]) if decides else None
                else:
                    result["error"], result["detail"] = "non_finite_score", "an expert returned NaN or infinity"
        for result in results:
            self.metrics.images.labels(result["error"] or "scored").inc()
        return results

    async def _decode(self, loop, data: bytes | None, code: str | None):
        """Decode in the process pool; a decoder that crashes its process costs that image, never the service."""
        from concurrent.futures.process import BrokenProcessPool

        from fdcore import scoring

        pool = self.pool
        try:
            return await loop.run_in_executor(pool, decode_upload, data, code)
        except BrokenProcessPool:
            if self.pool is pool:
                self.say("a decoding process died (a hostile image?); starting new ones")
                self.pool = decoding_pool(self.options, self.ensemble.geometries)
                pool.shutdown(wait=False, cancel_futures=True)
            return scoring.Rejected("worker_failed", "the decoding process stopped while reading this image; "
                                                     "other images are unaffected")

    @staticmethod
    def _result(name: str, item) -> dict:
        from fdcore import scoring

        result = {"name": name, "score": None, "decision": None, "disagreement": None, "probabilities": {},
                  "error": None, "detail": "", "notes": []}
        if isinstance(item, scoring.Rejected):
            result["error"], result["detail"] = item.code, item.detail
        else:
            result["notes"] = list(item.info.get("notes", []))
            result["width"], result["height"] = item.info.get("width"), item.info.get("height")
            result["format"] = item.info.get("format")
        return result


_DECODER: dict = {}


def _start_decoder(geometries, max_pixels: int, max_aspect_ratio: float) -> None:
    """In each decoding process: remember the ensemble's geometries and limits; one thread per process, as
    predict's DataLoader workers."""
    _DECODER.update(geometries=geometries, max_pixels=max_pixels, max_aspect_ratio=max_aspect_ratio)
    if "torch" in sys.modules:  # decoding needs no torch; limit it only where something imported it
        sys.modules["torch"].set_num_threads(1)


def decode_upload(data: bytes | None, code: str | None):
    """One upload -> :class:`fdcore.scoring.Decoded` or ``Rejected`` (runs in a decoding process)."""
    from fdcore import scoring

    if code is not None:
        return scoring.Rejected(code, "the item could not be read from the request")
    return scoring.decode(data, _DECODER["geometries"], _DECODER["max_pixels"], _DECODER["max_aspect_ratio"])


def decoding_pool(options: ServeOptions, geometries):
    """Decoding runs in ``--decode-workers`` processes (spawned: no copy of the loaded model, no GIL shared with the
    event loop or the experts), like predict's DataLoader workers."""
    import multiprocessing

    return concurrent.futures.ProcessPoolExecutor(
        max_workers=max(1, options.decode_workers), mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_decoder, initargs=(geometries, options.max_pixels, options.max_aspect_ratio))


async def read_body(request, service: Service, deadline: float) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed --max-body-mb."""
    limit = service.options.max_body_bytes
    chunks, total = [], 0

    async def collect():
        nonlocal total
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise Refusal(413, "body_too_large", f"the body exceeds {service.options.max_body_mb:g} MB "
                                                     "(--max-body-mb)", {"Connection": "close"})
            chunks.append(chunk)

    try:
        await asyncio.wait_for(collect(), timeout=max(0.001, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        raise Refusal(408, "request_timeout", "the body was not received in time", {"Connection": "close"}) from None
    return b"".join(chunks)


def declared_length(request, service: Service) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    if not value.isdigit():
        raise Refusal(400, "bad_request", f"Content-Length {value!r} is not a number")
    length = int(value)
    if length > service.options.max_body_bytes:
        raise Refusal(413, "body_too_large", f"the body ({length} bytes) exceeds {service.options.max_body_mb:g} MB "
                                             "(--max-body-mb); nothing was read", {"Connection": "close"})
    return length


async def multipart_uploads(headers, body: bytes, service: Service) -> list[tuple[str, bytes | None, str | None]]:
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream():
        yield body
        yield b""

    limit = service.options.max_images_per_request
    parser = MultiPartParser(headers, stream(), max_files=limit + 1, max_fields=limit + 1,
                             max_part_size=64 * 1024)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        code = "too_many_images" if "many" in str(exc).lower() else "bad_request"
        status = 413 if code == "too_many_images" else 400
        raise Refusal(status, code, f"multipart body refused: {exc}") from None
    uploads = []
    try:
        for field, value in form.multi_items():
            if isinstance(value, UploadFile):
                uploads.append(((value.filename or field)[:255], await value.read(), None))
    finally:
        await form.close()
    return uploads


class AccessLog:
    """Plain ASGI middleware (no per-request task or body copy): request id, metrics and one JSON log line per
    request with its images and outcome codes, never image bytes."""

    QUIET_ROUTES = ("/v2/health/live", "/v2/health/ready", "/metrics")

    def __init__(self, app, service: Service):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = next((value.decode("latin-1") for name, value in scope.get("headers", ())
                      if name == b"x-request-id"), "")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state.update(request_id=request_id, images=0, outcomes={}, code=None)
        status = {"code": 500}

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode("ascii"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            seconds = time.perf_counter() - started
            metrics = self.service.metrics
            metrics.requests.labels(route, str(status["code"])).inc()
            metrics.latency.labels(route).observe(seconds)
            if state.get("code") and status["code"] >= 400:
                metrics.rejected.labels(state["code"]).inc()
            if route not in self.QUIET_ROUTES:
                client = scope.get("client")
                self.service.log_access({
                    "ts": round(time.time(), 3), "request_id": request_id, "method": scope.get("method"),
                    "route": route, "status": status["code"], "images": state.get("images", 0),
                    "outcomes": state.get("outcomes", {}), "code": state.get("code"),
                    "latency_ms": round(seconds * 1000, 2), "client": client[0] if client else None})


def create_app(options: ServeOptions, keys: list[bytes] | None = None, ensemble=None, server=None):
    """The FastAPI application. The ensemble loads in a background thread at start-up (``ensemble`` skips that)."""
    import contextlib

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response

    from fdcore import __version__

    service = Service(options, keys or [], ensemble)

    def load_in_background():
        try:
            service.load()
        except Exception as exc:  # noqa: BLE001 - any failure stops the server with a message, never a hang
            service.failure = str(exc) if isinstance(exc, FdcoreError) else f"{type(exc).__name__}: {exc}"
            service.say(f"cannot start: {service.failure}")
            if server is not None:
                server.should_exit = True

    @contextlib.asynccontextmanager
    async def lifespan(app):
        loader = threading.Thread(target=load_in_background, name="fdcore-load", daemon=True)
        loader.start()
        yield
        service.draining = True
        loader.join(timeout=1)
        service.close()

    app = FastAPI(title="fdcore", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.service = service

    @app.exception_handler(Refusal)
    async def refused(request: Request, refusal: Refusal) -> JSONResponse:
        """Every route raises :class:`Refusal`; it is answered here, and its code reaches the access log."""
        request.state.code = refusal.code
        return JSONResponse({"error": {"code": refusal.code, "message": refusal.message}},
                            status_code=refusal.status, headers=refusal.headers)

    app.add_middleware(AccessLog, service=service)

    async def scored_request(request: Request, parse) -> list[dict]:
        """Shared by /v1/score and the v2 infer route: admission, body, decoding, batching."""
        service.authenticate(request.headers.get("authorization"))
        service.require_ready()
        deadline = time.monotonic() + options.request_timeout_s
        reserved = service.reserve_bytes(declared_length(request, service))
        try:
            body = await read_body(request, service, deadline)
            uploads = await parse(request, body)
            request.state.images = len(uploads)
            if not uploads:
                raise Refusal(400, "no_image", "the request holds no image: send multipart files, a raw image body, "
                                               "or a v2 BYTES input")
            service.admit_images(len(uploads))
            try:
                results = await service.score_uploads(uploads, deadline)
            finally:
                service.release_images(len(uploads))
        finally:
            service.bytes_in_service -= reserved
        outcomes: dict[str, int] = {}
        for result in results:
            key = result["error"] or "scored"
            outcomes[key] = outcomes.get(key, 0) + 1
        request.state.outcomes = outcomes
        return results

    async def parse_score_body(request: Request, body: bytes):
        content_type = request.headers.get("content-type", "")
        media = content_type.split(";")[0].strip().lower()
        if media == "multipart/form-data":
            return await multipart_uploads(request.headers, body, service)
        if media == "application/octet-stream" or media.startswith("image/"):
            name = request.headers.get("x-image-name") or "image"
            return [(name[:255], body, None)]
        raise Refusal(415, "unsupported_media_type", f"Content-Type {content_type or '(none)'} is not accepted: send "
                                                     "multipart/form-data files, or one image as image/* or "
                                                     "application/octet-stream")

    def model_info() -> dict:
        ensemble = service.ensemble
        return {"model": options.name, "identity": ensemble.identity, "aggregator": service.fusion.name,
                "calibrated": service.fusion.calibrated,
                "threshold": ensemble.threshold if service.fusion.calibrated else None,
                "experts": ensemble.names}

    @app.post("/v1/score")
    async def score(request: Request):
        results = await scored_request(request, parse_score_body)
        return JSONResponse({**model_info(), "results": results})

    @app.get("/v1/model")
    async def model(request: Request):
        service.authenticate(request.headers.get("authorization"))
        service.require_ready()
        return JSONResponse({**model_info(), "ensemble": service.ensemble.describe(),
                             "limits": {"max_body_mb": options.max_body_mb, "max_pixels": options.max_pixels,
                                        "max_aspect_ratio": options.max_aspect_ratio,
                                        "max_images_per_request": options.max_images_per_request,
                                        "max_batch_size": options.max_batch_size,
                                        "max_wait_ms": options.max_wait_ms, "max_queue": options.max_queue}})

    # -- KServe Open Inference Protocol v2 (the subset Triton / KServe / Seldon clients use) -------------------
    @app.get("/v2/health/live")
    async def live():
        return JSONResponse({"live": True})

    @app.get("/v2/health/ready")
    async def ready():
        is_ready = service.ready and not service.draining
        return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)

    @app.get("/v2")
    async def server_metadata(request: Request):
        service.authenticate(request.headers.get("authorization"))
        return JSONResponse({"name": "fdcore", "version": __version__, "extensions": []})

    def known_model(request: Request, name: str) -> None:
        service.authenticate(request.headers.get("authorization"))
        if name != options.name:
            raise Refusal(404, "unknown_model", f"no model {name!r}; this server serves {options.name!r}")

    @app.get("/v2/models/{name}")
    async def model_metadata(request: Request, name: str):
        known_model(request, name)
        service.require_ready()
        experts = len(service.ensemble.members)
        return JSONResponse({
            "name": options.name, "versions": [service.ensemble.identity[:16]], "platform": "fdcore",
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "score", "datatype": "FP64", "shape": [-1]},
                        {"name": "probabilities", "datatype": "FP64", "shape": [-1, experts]},
                        {"name": "error", "datatype": "BYTES", "shape": [-1]},
                        {"name": "decision", "datatype": "BYTES", "shape": [-1]}],
            "parameters": {"experts": service.ensemble.names, "aggregator": service.fusion.name,
                           "calibrated": service.fusion.calibrated}})

    @app.get("/v2/models/{name}/ready")
    async def model_ready(request: Request, name: str):
        known_model(request, name)
        is_ready = service.ready and not service.draining
        return JSONResponse({"name": name, "ready": is_ready}, status_code=200 if is_ready else 503)

    async def parse_infer_body(request: Request, body: bytes):
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise Refusal(400, "bad_request", f"the body is not JSON: {exc}") from None
        except RecursionError:  # "[[[[..." nested past the parser's depth: hostile, not a server error
            raise Refusal(400, "bad_request", "the JSON body is nested too deeply") from None
        inputs = payload.get("inputs") if isinstance(payload, dict) else None
        if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
            raise Refusal(400, "bad_request", "expected {'inputs': [{'name': 'image', 'datatype': 'BYTES', "
                                              "'shape': [N], 'data': [base64 strings]}]}")
        tensor = inputs[0]
        data, shape = tensor.get("data"), tensor.get("shape")
        if tensor.get("datatype") != "BYTES" or not isinstance(data, list):
            raise Refusal(400, "bad_request", "the input must have datatype BYTES and a 'data' list of base64 "
                                              "strings (one encoded image each)")
        if not isinstance(shape, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in shape) \
                or math.prod(shape) != len(data):
            raise Refusal(400, "bad_request", f"shape {shape!r} does not match the {len(data)} data elements")
        request.state.infer_id = payload.get("id") if isinstance(payload.get("id"), str) else None
        uploads = []
        for index, element in enumerate(data):
            name = f"{tensor.get('name', 'image')}[{index}]"
            try:
                uploads.append((name, base64.b64decode(element, validate=True), None))
            except (binascii.Error, TypeError, ValueError):
                uploads.append((name, None, "bad_encoding"))
        return uploads

    @app.post("/v2/models/{name}/infer")
    async def infer(request: Request, name: str):
        known_model(request, name)
        results = await scored_request(request, parse_infer_body)
        count, experts = len(results), service.ensemble.names
        response = {
            "model_name": options.name, "model_version": service.ensemble.identity[:16],
            "outputs": [
                {"name": "score", "datatype": "FP64", "shape": [count],
                 "data": [-1.0 if r["score"] is None else r["score"] for r in results]},
                {"name": "probabilities", "datatype": "FP64", "shape": [count, len(experts)],
                 "data": [r["probabilities"].get(e, -1.0) for r in results for e in experts]},
                {"name": "error", "datatype": "BYTES", "shape": [count], "data": [r["error"] or "" for r in results]},
                {"name": "decision", "datatype": "BYTES", "shape": [count],
                 "data": [r["decision"] or "" for r in results]},
            ]}
        if getattr(request.state, "infer_id", None) is not None:
            response["id"] = request.state.infer_id
        return JSONResponse(response)

    @app.get("/metrics")
    async def metrics(request: Request):
        service.authenticate(request.headers.get("authorization"))
        if service.batcher is not None:
            service.metrics.queued.set(len(service.batcher))
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(service.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return app


def run_server(options: ServeOptions) -> int:
    """Serve until SIGTERM/SIGINT: stop accepting, drain what is in flight, exit 0 (2 when loading failed)."""
    import uvicorn

    keys = check_options(options)

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame):
            if not service_holder["service"].draining:
                service_holder["service"].say("stopping: draining in-flight requests")
            service_holder["service"].draining = True
            # uvicorn re-raises captured signals after shutting down (the process would die by SIGTERM); a drained
            # service has stopped cleanly and exits 0, so the signal is handled here instead of recorded.
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True

    service_holder: dict[str, Any] = {}
    config = uvicorn.Config(None, host=options.host, port=options.port, log_level="warning", access_log=False,
                            lifespan="on", timeout_graceful_shutdown=int(options.request_timeout_s) + 5,
                            server_header=False, proxy_headers=False)
    server = DrainingServer(config)
    app = create_app(options, keys, server=server)
    service_holder["service"] = app.state.service
    config.app = app
    auth = "bearer keys" if keys else "no auth"
    app.state.service.say(f"listening on http://{options.host}:{options.port} (model {options.name}, {auth}); "
                          "ready at /v2/health/ready once loaded")
    server.run()
    service = app.state.service
    if service.failure:
        raise ServeError(service.failure)
    service.say("stopped")
    return 0
