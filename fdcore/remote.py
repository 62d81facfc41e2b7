"""Fetching untrusted image bytes named by a URL (http, https, s3, gs, az...) through fsspec, with limits and retries.

A URL in a manifest is as untrusted as a file in a folder. :func:`fetch_bytes` therefore:

* reads only the schemes in :data:`REMOTE_SCHEMES` (chained fsspec URLs such as ``simplecache::s3://`` and local-ish
  protocols such as ``memory://`` are never opened); ``file://`` is not fetched here but read as a local path;
* refuses an object whose declared size is above ``max_bytes`` before downloading anything, and stops reading at
  ``max_bytes + 1`` when the size is unknown or the server lies (``too_large``);
* for http(s), enforces a whole-request timeout and, unless ``allow_private_addresses``, connects only to public
  addresses: every resolved address, redirects included, is checked in the connection itself, so a name that
  resolves to 127.0.0.1 or 169.254.169.254 (or rebinds to it) is ``address_not_allowed``;
* retries transient failures (``unreachable``, ``timeout``, ``server_error``: 408, 425, 429, 5xx) with exponential
  backoff, ``retries`` times; every other failure is final at once.

Every refusal is an :class:`fdcore.images.ImageRejected` with a reason code documented in docs/predict.md, so a bad
URL costs one row of errors.csv, never the run.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import time
from urllib.parse import urlsplit

from fdcore.errors import FdcoreError
from fdcore.images import ImageRejected

# The URL schemes fdcore fetches, with the package that provides each fsspec backend.
REMOTE_SCHEMES = {"http": "aiohttp", "https": "aiohttp", "s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs",
                  "az": "adlfs", "abfs": "adlfs", "abfss": "adlfs"}
HTTP_SCHEMES = frozenset({"http", "https"})
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF_S = 0.5
# Codes worth trying again later (a later run retries them too: fdcore.predict.runner.RETRIED_CODES).
TRANSIENT_CODES = frozenset({"unreachable", "timeout", "server_error"})
_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_READ_CHUNK = 1 << 20


class RemoteSetupError(FdcoreError):
    """URLs that cannot be read at all on this installation (a missing fsspec backend)."""


@dataclasses.dataclass(frozen=True)
class FetchPolicy:
    """How remote objects are fetched. Hashable and picklable: it travels to DataLoader workers and Ray actors."""

    max_bytes: int = DEFAULT_MAX_BYTES
    timeout_s: float = DEFAULT_TIMEOUT_S
    retries: int = DEFAULT_RETRIES
    backoff_s: float = DEFAULT_BACKOFF_S
    allow_private_addresses: bool = False

    def __post_init__(self):
        if int(self.max_bytes) < 1:
            raise ValueError(f"max_bytes must be at least 1, got {self.max_bytes}")
        if not float(self.timeout_s) > 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")
        if int(self.retries) < 0:
            raise ValueError(f"retries must be 0 or more, got {self.retries}")


@dataclasses.dataclass(frozen=True)
class RemoteImage:
    """An image named by a URL; :func:`fdcore.scoring.decode` fetches it with ``policy`` and decodes the bytes."""

    uri: str
    policy: FetchPolicy = FetchPolicy()


def url_scheme(location: str) -> str | None:
    """The lower-case scheme of ``location`` when it is written as a URL (``scheme://...``), else None.

    A Windows drive (``C:\\x``) and a plain path are not URLs; ``file://`` is reported as ``file``."""
    if "://" not in location:
        return None
    scheme = location.split("://", 1)[0].lower()
    # ':' admits fsspec's chained form (simplecache::s3), reported as such so that it is refused, not read locally
    if not scheme or not all(char.isalnum() or char in "+-.:" for char in scheme) or scheme.endswith(":"):
        return None
    return scheme


def is_remote(location: str) -> bool:
    """Whether ``location`` is a URL fdcore fetches (anything written ``scheme://`` except ``file://``)."""
    scheme = url_scheme(location)
    return scheme is not None and scheme != "file"


def unsupported_reason(uri: str) -> str | None:
    """Why ``uri`` can never be fetched (an unknown scheme, a chained URL), or None when it can be tried."""
    scheme = url_scheme(uri)
    if scheme is None or "::" in scheme or "::" in uri:
        return "chained fsspec URLs (a::b://) are not read; write the object's own URL"
    if scheme not in REMOTE_SCHEMES:
        return (f"the scheme {scheme!r} is not read; fdcore reads {', '.join(sorted(REMOTE_SCHEMES))} and local "
                "paths (file://)")
    if scheme in HTTP_SCHEMES and not urlsplit(uri).hostname:
        return "the URL names no host"
    return None


def check_backends(schemes) -> None:
    """Refuse, before any work, schemes whose fsspec backend is not installed, naming the package to install."""
    import importlib.util

    missing = sorted({REMOTE_SCHEMES[scheme] for scheme in schemes if scheme in REMOTE_SCHEMES
                      and importlib.util.find_spec(REMOTE_SCHEMES[scheme]) is None})
    if missing:
        users = sorted(scheme for scheme in schemes if REMOTE_SCHEMES.get(scheme) in missing)
        raise RemoteSetupError(f"the input names {', '.join(s + '://' for s in users)} URLs but the fsspec backend "
                               f"is not installed; run `pip install {' '.join(missing)}` (credentials come from the "
                               "backend's usual environment variables and config files)")


def fetch_bytes(uri: str, policy: FetchPolicy = FetchPolicy(), sleep=time.sleep) -> bytes:
    """The bytes of the object at ``uri``, or :class:`ImageRejected` with a reason code (see the module docstring)."""
    reason = unsupported_reason(uri)
    if reason:
        raise ImageRejected("unsupported_url", reason)
    attempts = int(policy.retries) + 1
    for attempt in range(attempts):
        try:
            return _read_limited(uri, policy)
        except ImageRejected:
            raise
        except Exception as exc:  # any backend error is classified; none may escape as a traceback
            code, detail = classify_error(exc)
            if code not in TRANSIENT_CODES or attempt == attempts - 1:
                tries = f" (after {attempts} attempts)" if code in TRANSIENT_CODES and attempts > 1 else ""
                raise ImageRejected(code, detail + tries) from None
            sleep(float(policy.backoff_s) * (2 ** attempt))
    raise AssertionError("unreachable")


def _read_limited(uri: str, policy: FetchPolicy) -> bytes:
    filesystem, path = _filesystem(uri, policy)
    size = None
    try:
        size = filesystem.size(path)
    except (NotImplementedError, TypeError):
        size = None
    if size is not None and int(size) > policy.max_bytes:
        raise ImageRejected("too_large", f"the object is {int(size)} bytes, above the limit of {policy.max_bytes} "
                                         "(--max-bytes); nothing was downloaded")
    if size == 0:
        raise ImageRejected("empty_file", "the object has zero bytes")
    # http: stream with one GET (block_size 0), and pass the size already asked for so fsspec does not ask again
    open_options = {"block_size": 0, "size": size or 1} if url_scheme(uri) in HTTP_SCHEMES else {}
    chunks, total = [], 0
    with filesystem.open(path, "rb", **open_options) as handle:
        while total <= policy.max_bytes:
            chunk = handle.read(min(_READ_CHUNK, policy.max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    if total == 0:
        raise ImageRejected("empty_file", "the object has zero bytes")
    if total > policy.max_bytes:
        raise ImageRejected("too_large", f"the object sent more than the limit of {policy.max_bytes} bytes "
                                         "(--max-bytes); the download was stopped there")
    return b"".join(chunks)


def _filesystem(uri: str, policy: FetchPolicy):
    import fsspec

    scheme = url_scheme(uri)
    if scheme in HTTP_SCHEMES:
        import aiohttp

        filesystem = fsspec.filesystem(
            "http", get_client=_guarded_client if not policy.allow_private_addresses else _plain_client,
            client_kwargs={"timeout": aiohttp.ClientTimeout(total=float(policy.timeout_s))},
            skip_instance_cache=False)
        return filesystem, uri
    filesystem, path = fsspec.core.url_to_fs(uri)
    return filesystem, path


async def _plain_client(**kwargs):
    import aiohttp

    return aiohttp.ClientSession(**kwargs)


async def _guarded_client(**kwargs):
    import aiohttp

    return aiohttp.ClientSession(connector=_public_connector_class()(), **kwargs)


class AddressNotAllowed(OSError):
    """A URL whose host resolves to a loopback, private, link-local or otherwise non-public address."""


def is_public_address(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


_CONNECTOR_CLASS = None


def _public_connector_class():
    """An aiohttp connector that refuses non-public addresses after resolution (IP literals and redirects included:
    every connection goes through ``_resolve_host``), so DNS rebinding cannot reach an internal service."""
    global _CONNECTOR_CLASS
    if _CONNECTOR_CLASS is None:
        import aiohttp

        if not hasattr(aiohttp.TCPConnector, "_resolve_host"):
            raise RemoteSetupError(f"aiohttp {aiohttp.__version__} has no resolver hook to check addresses; install "
                                   "aiohttp 3.8 or newer, or pass --allow-private-urls if every URL is trusted")

        class PublicOnlyConnector(aiohttp.TCPConnector):
            async def _resolve_host(self, host, port, *args, **kwargs):
                resolved = await super()._resolve_host(host, port, *args, **kwargs)
                refused = [entry["host"] for entry in resolved if not is_public_address(entry["host"])]
                if refused:
                    raise AddressNotAllowed(f"{host} resolves to the non-public address {refused[0]}")
                return resolved

        _CONNECTOR_CLASS = PublicOnlyConnector
    return _CONNECTOR_CLASS


def _causes(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = getattr(exc, "os_error", None) or exc.__cause__ or exc.__context__


def classify_error(exc: BaseException) -> tuple[str, str]:
    """A backend exception -> (reason code, detail). Transient codes are in :data:`TRANSIENT_CODES`."""
    import asyncio
    import socket

    chain = list(_causes(exc))
    for cause in chain:
        if isinstance(cause, AddressNotAllowed):
            return "address_not_allowed", (f"{cause}; only public addresses are fetched unless "
                                           "--allow-private-urls is passed or FDCORE_ALLOW_PRIVATE_URLS=1 set")
    for cause in chain:
        status = getattr(cause, "status", None) or getattr(cause, "code", None)
        if isinstance(status, int) and 400 <= status < 600 and type(cause).__name__ != "ClientConnectorError":
            if status in (401, 403):
                return "access_denied", f"HTTP {status}: the server refuses access"
            if status in (404, 410):
                return "not_found", f"HTTP {status}: no such object"
            if status in _TRANSIENT_STATUS:
                return "server_error", f"HTTP {status} from the server"
            return "remote_error", f"HTTP {status} from the server"
    for cause in chain:
        if isinstance(cause, (asyncio.TimeoutError, TimeoutError, socket.timeout)) or \
                type(cause).__name__ in ("ServerTimeoutError", "ConnectionTimeoutError", "SocketTimeoutError"):
            return "timeout", "no complete answer within the time limit (--timeout)"
    for cause in chain:  # before FileNotFoundError: fsspec's http backend wraps connection failures in one
        if isinstance(cause, (ConnectionError, socket.gaierror)) or type(cause).__name__ in (
                "ClientConnectorError", "ClientConnectorDNSError", "ServerDisconnectedError", "ClientOSError",
                "ClientPayloadError", "ServerConnectionError"):
            return "unreachable", f"cannot reach the server: {_short(cause)}"
    if isinstance(exc, FileNotFoundError):
        return "not_found", "no such object"
    if isinstance(exc, PermissionError):
        return "access_denied", "the store refuses access"
    return "remote_error", f"{type(exc).__name__}: {_short(exc)}"


def _short(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."


def from_environment() -> FetchPolicy:
    """The default policy, with ``FDCORE_ALLOW_PRIVATE_URLS=1`` honoured (for evaluate and the Python API)."""
    allow = os.environ.get("FDCORE_ALLOW_PRIVATE_URLS", "").strip().lower() in ("1", "true", "yes")
    return FetchPolicy(allow_private_addresses=allow)
