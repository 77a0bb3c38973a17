"""The /metrics HTTP endpoint of `gotrace latency --prometheus HOST:PORT`: bind, serve snapshots, close.

The server knows nothing of tracing: it calls `snapshot()` (which reads the
tracer under the tracer's own lock) once per scrape, on the serving thread,
and renders the result with gotrace.output.prometheus in the format the
scraper asked for (protobuf with native histograms when the Accept header
prefers it, else text). It lives in commands/ because it runs for as long as
a command's trace and turns a bind failure into the command's usage error.
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer

from gotrace.errors import UsageError
from gotrace.output.prometheus import (
    PROTOBUF_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    MetricsSnapshot,
    render_protobuf,
    render_text,
    wants_protobuf,
)


REQUEST_TIMEOUT_S = 10


def parse_address(text: str) -> tuple[str, int]:
    """(host, port) of HOST:PORT or [IPV6]:PORT; UsageError saying what to write otherwise."""
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UsageError(f"--prometheus {text!r}: give HOST:PORT, e.g. --prometheus 127.0.0.1:9464")
    return host, int(port_text)


class _Server(HTTPServer):
    """One thread serves every request in turn: scrapes read the tracer under one lock anyway, and a thread
    per request made glibc grow an arena per thread (RSS +1.5-4 MB over the first ~2,000 scrapes)."""

    allow_reuse_address = True  # SO_REUSEADDR: a port in TIME_WAIT is free, one another socket listens on is not

    def __init__(self, address: tuple[str, int], family: int, exporter: MetricsExporter) -> None:
        self.address_family = family
        self.exporter = exporter
        super().__init__(address, _Handler, bind_and_activate=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: a kept-alive scraper would hold the thread
    timeout = REQUEST_TIMEOUT_S  # a client that stalls cannot hold the one serving thread longer

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            try:
                body, content_type = self.server.exporter.render(self.headers.get("Accept"))
            except Exception as exc:  # a scrape must never end the trace
                self._reply(500, f"gotrace: cannot read the tracer: {type(exc).__name__}: {exc}\n".encode(),
                            "text/plain; charset=utf-8")
                return
            self._reply(200, body, content_type)
        elif path == "/":
            self._reply(200, b'gotrace exporter: metrics at <a href="/metrics">/metrics</a>\n',
                        "text/html; charset=utf-8")
        else:
            self._reply(404, b"not found: the metrics are at /metrics\n", "text/plain; charset=utf-8")

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # scrapes are not news on the terminal


class MetricsExporter:
    """A bound /metrics server. start(snapshot) serves on a thread; close() stops it."""

    def __init__(self, address: str) -> None:
        host, port = parse_address(address)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise UsageError(f"--prometheus {address}: cannot resolve {host!r} ({exc.strerror}); "
                             "give an address of this host, e.g. 127.0.0.1:9464") from None
        family, _, _, _, sockaddr = infos[0]
        try:
            self._server = _Server(sockaddr[:2], family, self)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(f"--prometheus {address}: the port is taken by another program; "
                                 "choose a free port") from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise UsageError(f"--prometheus {address}: {host} is not an address of this host") from None
            if exc.errno == errno.EACCES:
                raise UsageError(f"--prometheus {address}: not allowed to bind that port; choose another") from None
            raise UsageError(f"--prometheus {address}: cannot listen there: {exc.strerror}") from None
        self._snapshot: Callable[[], MetricsSnapshot] | None = None
        self._thread: threading.Thread | None = None
        self._scrapes_lock = threading.Lock()
        self.scrapes = 0
        self.last_scrape_monotonic: float | None = None  # when the last scrape's snapshot was taken

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/metrics"

    def start(self, snapshot: Callable[[], MetricsSnapshot]) -> None:
        """Serve snapshot() at /metrics from now on, on a daemon thread."""
        self._snapshot = snapshot
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="gotrace-metrics", daemon=True)
        self._thread.start()

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """(body, content type) of one scrape."""
        if self._snapshot is None:
            raise RuntimeError("not tracing yet")
        taken = time.monotonic()
        snapshot = self._snapshot()
        with self._scrapes_lock:
            self.scrapes += 1
            self.last_scrape_monotonic = taken
        if wants_protobuf(accept):
            return render_protobuf(snapshot), PROTOBUF_CONTENT_TYPE
        return render_text(snapshot).encode(), TEXT_CONTENT_TYPE

    def scraped_since(self, when_monotonic: float) -> bool:
        """Whether a scrape took its snapshot at or after when_monotonic."""
        with self._scrapes_lock:
            return self.last_scrape_monotonic is not None and self.last_scrape_monotonic >= when_monotonic

    def close(self) -> None:
        """Stop serving and release the port. Safe to call twice."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> MetricsExporter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
