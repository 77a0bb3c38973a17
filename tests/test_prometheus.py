"""`gotrace latency --prometheus` scraped by a real Prometheus server (Debian 12's 2.42, scripts/prometheus).

gotrace traces testdata/latencytruth in every-process mode (the program starts
after the probes, as a new process), serves /metrics on an ephemeral port of
127.0.0.1, and a private Prometheus (its own ephemeral port and temporary
storage) scrapes it every second. Prometheus's HTTP API must then give the
program's own call count exactly, and histogram_quantile() within 5% of the
program's own p50 and p99 and of gotrace's own percentiles: once with classic
buckets (text format), once with native histograms (protobuf, Prometheus
started with --enable-feature=native-histograms).

Also: gotrace's RSS after 10 and after 10,000 scrapes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from support import gobuild
from conftest import bpf_required
from support import cli as support_cli


def gotrace_argv(*args: object) -> list[str]:
    """The argv of `gotrace latency ARGS...`."""
    return support_cli.gotrace_argv("latency", *args)
from test_tracer_bpf import finish_truth, start_truth

pytestmark = pytest.mark.bpf

TRUTH_BUILD = ("1.23.9", "default")
SCRAPE_INTERVAL_S = 1
WAIT_S = 90  # longest wait for Prometheus to start, scrape, or show a value
PROTOBUF_ACCEPT = ("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;"
                   "q=0.7,text/plain;version=0.0.4;q=0.3")


def private_truth(tmp_path: Path) -> Path:
    """latencytruth copied to a private path: every-process mode traces one inode, and other runs of the
    suite on this machine run the cached build, not this copy."""
    copy = tmp_path / "latencytruth"
    shutil.copy2(gobuild.build("latencytruth", *TRUTH_BUILD), copy)
    return copy


def prometheus_path() -> str:
    path = shutil.which("prometheus")
    if path is None:
        message = "Debian's prometheus is not installed: run scripts/prometheus (scripts/test does)"
        if bpf_required():
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, accept: str | None = None, timeout: float = 30) -> bytes:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()


class Prometheus:
    """A private Prometheus server on 127.0.0.1 scraping one target every SCRAPE_INTERVAL_S."""

    def __init__(self, workdir: Path, target: str, native: bool) -> None:
        self.workdir = workdir
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n"
            f"  scrape_interval: {SCRAPE_INTERVAL_S}s\n"
            f"  scrape_timeout: {SCRAPE_INTERVAL_S}s\n"
            "scrape_configs:\n"
            "  - job_name: gotrace\n"
            "    static_configs:\n"
            f"      - targets: ['{target}']\n"
        )
        for _attempt in range(5):  # the port may be taken between free_port() and prometheus's bind
            self.port = free_port()
            argv = [prometheus_path(), f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"]
            if native:
                argv.append("--enable-feature=native-histograms")
            self.log = open(workdir / "prometheus.log", "w")
            self.proc = subprocess.Popen(argv, cwd=workdir, stdout=self.log, stderr=subprocess.STDOUT)
            if self._wait_ready():
                return
            self.close()
        pytest.fail(f"prometheus did not start: {(workdir / 'prometheus.log').read_text()[-2000:]}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                get(f"http://127.0.0.1:{self.port}/-/ready", timeout=5)
                return True
            except OSError:
                time.sleep(0.2)
        return False

    def query(self, expr: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        reply = json.loads(get(url))
        assert reply["status"] == "success", reply
        return reply["data"]["result"]

    def value(self, expr: str) -> float | None:
        """The single instant value of expr, None when there is none (yet)."""
        result = self.query(expr)
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])

    def wait_value(self, expr: str, want: float) -> float | None:
        """expr's value once it equals want, or the last value seen after WAIT_S."""
        deadline = time.monotonic() + WAIT_S
        seen = None
        while time.monotonic() < deadline:
            seen = self.value(expr)
            if seen == want:
                return seen
            time.sleep(0.5)
        return seen

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def start_exporting_gotrace(spawn, binary: Path, *functions: str, extra: tuple[str, ...] = ()):
    """gotrace latency BINARY FUNCTIONS --prometheus 127.0.0.1:0 --json, attached; (it, host:port it serves)."""
    gotrace = spawn(gotrace_argv(binary, *functions, "--prometheus", "127.0.0.1:0", "--json", *extra))
    gotrace.wait_line("stderr", r"^Tracing \d+ functions? ")
    _, match = gotrace.wait_line("stderr", r"serving Prometheus metrics at http://(\S+)/metrics")
    return gotrace, match.group(1)


def within(got: float, want: float, tolerance: float = 0.05) -> bool:
    return abs(got - want) <= tolerance * want


@pytest.mark.parametrize("native", [False, True], ids=["classic-buckets", "native-histograms"])
def test_prometheus_sees_the_programs_own_counts_and_quantiles(spawn, tmp_path, native):
    binary = private_truth(tmp_path)
    gotrace, address = start_exporting_gotrace(spawn, binary, "main.work", "main.mayPanic")
    prometheus = Prometheus(tmp_path, address, native)  # after gotrace: it bound its port first
    try:
        assert prometheus.wait_value('up{job="gotrace"}', 1) == 1, "prometheus never scraped gotrace"
        proc = start_truth(binary)  # a new process of the traced binary: every-process mode picks it up
        truth = finish_truth(proc)
        want = truth["main.work"]
        selector = f'function="main.work",pid="{proc.pid}"'
        latency = f"gotrace_function_latency_seconds{{{selector}}}"
        if native:
            count_expr = f"histogram_count({latency})"
            quantile = lambda q: f"histogram_quantile({q}, {latency})"  # noqa: E731
        else:
            count_expr = f"gotrace_function_latency_seconds_count{{{selector}}}"
            quantile = lambda q: f"histogram_quantile({q}, gotrace_function_latency_seconds_bucket{{{selector}}})"  # noqa: E731
        count = prometheus.wait_value(count_expr, want["count"])
        p50_s = prometheus.value(quantile(0.5))
        p99_s = prometheus.value(quantile(0.99))
        unwound = prometheus.wait_value(
            f'gotrace_function_unmatched_total{{function="main.mayPanic",pid="{proc.pid}"}}',
            truth["main.mayPanic"]["panicked"])
        sum_s = prometheus.value(f"histogram_sum({latency})" if native
                                 else f"gotrace_function_latency_seconds_sum{{{selector}}}")
    finally:
        prometheus.close()
    gotrace.proc.send_signal(signal.SIGINT)
    assert gotrace.finish() == 0, gotrace.stderr
    final = json.loads(gotrace.stdout.strip().splitlines()[-1])
    own = {f["name"]: f for f in final["functions"]}["main.work"]

    kind = "native" if native else "classic"
    figures = (f"{kind}: count {count} (program {want['count']}); "
               f"p50 {p50_s * 1e9:.0f} ns (program {want['p50_ns']}, gotrace {own['p50_ns']}: "
               f"{(p50_s * 1e9 - want['p50_ns']) / want['p50_ns']:+.2%} / {(p50_s * 1e9 - own['p50_ns']) / own['p50_ns']:+.2%}); "
               f"p99 {p99_s * 1e9:.0f} ns (program {want['p99_ns']}, gotrace {own['p99_ns']}: "
               f"{(p99_s * 1e9 - want['p99_ns']) / want['p99_ns']:+.2%} / {(p99_s * 1e9 - own['p99_ns']) / own['p99_ns']:+.2%})")
    print(figures)
    assert count == want["count"] == own["count"], figures
    assert unwound == truth["main.mayPanic"]["panicked"] == 200
    assert within(p50_s * 1e9, want["p50_ns"]), figures
    assert within(p99_s * 1e9, want["p99_ns"]), figures
    assert within(p50_s * 1e9, own["p50_ns"]), figures
    assert within(p99_s * 1e9, own["p99_ns"]), figures
    # the exact sum: its mean agrees with gotrace's own mean (bucket midpoints, within 0.5%)
    assert math.isclose(sum_s * 1e9 / count, own["mean_ns"], rel_tol=0.01), (sum_s, count, own["mean_ns"])


def test_exited_process_series_are_dropped_and_new_ones_appear(spawn, tmp_path):
    binary = private_truth(tmp_path)
    gotrace, address = start_exporting_gotrace(spawn, binary, "main.work", extra=("--keep-exited", "2", "--quiet"))
    url = f"http://{address}/metrics"
    pids = []
    for _ in range(2):
        proc = start_truth(binary)
        finish_truth(proc)
        pids.append(proc.pid)
        text = get(url).decode()  # gone, but kept for --keep-exited: the final count is there
        assert f'gotrace_function_latency_seconds_count{{function="main.work",binary="{binary}",pid="{proc.pid}"}} 600' in text
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and any(f'pid="{pid}"' in get(url).decode() for pid in pids):
        time.sleep(0.5)
    text = get(url).decode()
    assert not any(f'pid="{pid}"' in text for pid in pids), text[-2000:]
    assert "gotrace_build_info" in text
    gotrace.proc.send_signal(signal.SIGINT)
    assert gotrace.finish() == 0
    assert gotrace.stdout == ""  # --quiet


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_rss_stays_flat_over_ten_thousand_scrapes(spawn, tmp_path):
    binary = private_truth(tmp_path)
    gotrace, address = start_exporting_gotrace(
        spawn, binary, "main.work", "main.recurse", "main.growStack", "main.blockingCall", "main.mayPanic",
        "main.safeCall", extra=("--quiet",))
    finish_truth(start_truth(binary))  # the series hold real histograms (the process's keys are kept 300 s)
    url = f"http://{address}/metrics"
    rss = {}
    done = 0
    for mark in (10, 1_000, 10_000):
        while done < mark:
            get(url, PROTOBUF_ACCEPT if done % 2 else None)  # text and protobuf in turn
            done += 1
        rss[mark] = rss_kb(gotrace.pid)
    print(f"gotrace RSS after 10 / 1,000 / 10,000 scrapes: {rss[10]} / {rss[1_000]} / {rss[10_000]} kB")
    gotrace.proc.send_signal(signal.SIGINT)
    assert gotrace.finish() == 0
    assert rss[10_000] - rss[10] < 1024, rss


def test_a_taken_port_is_one_line_and_exit_2(spawn):
    binary = gobuild.build("latencytruth", *TRUTH_BUILD)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(gotrace_argv(binary, "main.work", "--prometheus", f"127.0.0.1:{port}"),
                              cwd=gobuild.REPO_ROOT, capture_output=True, text=True, timeout=300,
                              env=dict(os.environ))
    assert proc.returncode == 2
    assert proc.stderr == f"gotrace: --prometheus 127.0.0.1:{port}: the port is taken by another program; " \
                          "choose a free port\n"
    assert proc.stdout == ""
