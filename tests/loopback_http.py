"""A real HTTP server on 127.0.0.1 for URL inputs, with routes that misbehave the ways real servers do.

Routes (``NAME`` is a file of the served folder):

* ``/img/NAME`` the file; ``/redirect/NAME`` a 302 to it;
* ``/flaky/N/NAME`` 503 for the first N GET requests of that path (HEAD answers as for the file), then the file;
* ``/slow/NAME`` answers after ``slow_s`` seconds; ``/status/CODE`` that HTTP status;
* ``/big`` declares 10 MB (HEAD) and would send them; ``/endless`` sends 2 MB with no Content-Length;
* ``/text`` a small text body.

``requests`` counts every request per (method, path), so tests can check what was (not) downloaded.
"""

from __future__ import annotations

import collections
import contextlib
import http.server
import os
import threading
import time


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_HEAD(self):
        self._answer(body=False)

    def do_GET(self):
        self._answer(body=True)

    def _send(self, code, data: bytes | None, body: bool, length: bool = True, content_type="application/octet-stream"):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        if length and data is not None:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body and data:
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass

    def _answer(self, body: bool):
        server = self.server
        path = self.path.split("?", 1)[0]
        with server.lock:
            server.requests[(self.command, path)] += 1
            gets = server.requests[("GET", path)]
        parts = path.strip("/").split("/")
        if parts[0] == "img" and len(parts) == 2:
            return self._file(parts[1], body)
        if parts[0] == "redirect" and len(parts) == 2:
            self.send_response(302)
            self.send_header("Location", f"/img/{parts[1]}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if parts[0] == "flaky" and len(parts) == 3:
            if self.command == "GET" and gets <= int(parts[1]):
                return self._send(503, b"try later", body)
            return self._file(parts[2], body)
        if parts[0] == "slow" and len(parts) == 2:
            time.sleep(server.slow_s)
            return self._file(parts[1], body)
        if parts[0] == "status" and len(parts) == 2:
            return self._send(int(parts[1]), b"status", body)
        if parts[0] == "big":
            return self._send(200, b"\0" * (10 * 1024 * 1024), body)
        if parts[0] == "endless":
            return self._send(200, b"\xff\xd8" + b"\0" * (2 * 1024 * 1024), body, length=False)
        if parts[0] == "text":
            return self._send(200, b"hello, not an image", body, content_type="text/plain")
        return self._send(404, b"no such route", body)

    def _file(self, name: str, body: bool):
        path = os.path.join(self.server.folder, name)
        if not os.path.isfile(path):
            return self._send(404, b"missing", body)
        with open(path, "rb") as handle:
            return self._send(200, handle.read(), body)


@contextlib.contextmanager
def serve_folder(folder, slow_s: float = 3.0):
    """Serve ``folder`` on 127.0.0.1 (a free port) for the block; yields the server (``.url``, ``.requests``)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.folder = str(folder)
    server.slow_s = slow_s
    server.lock = threading.Lock()
    server.requests = collections.Counter()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
