"""The cost guard on a busy service: caddy's requests/s untraced and traced (default settings), interleaved in one run.

For each PATTERN: caddy's throughput untraced, then while `gotrace CMD -p
CADDY PATTERN --json` runs with its defaults, measured from its "Tracing"
line on (after the start-up) in two parts: the first TRANSIENT_S seconds,
while the guard may still be detaching, then --seconds more; then untraced
again; with what the guard detached, when, and what the last report says the
probes cost. The load:
wrk with 2 threads and 2 keep-alive connections (Debian's wrk), or, without
wrk or with --client python, a Python client with 2 threads (far slower: the
issue's load was such a client, about 4,900 requests/s). caddy is a private copy,
so that nothing else on the machine traces it by path.

With --from-launch, the load runs all along instead (wrk in 1-s rounds), and
the traced figure covers gotrace's whole stay: from its launch (reading the
binary, attaching) through --seconds of tracing to the end of its probes'
removal (its "gotrace-detach" helper gone), each part on its own too. This
is what a service under steady load pays for one gotrace run.

    sudo scripts/guard-bench [--seconds 10] [--command latency] [--from-launch] [PATTERN...]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GOTRACE = [sys.executable, "-m", "gotrace"]
PATTERNS = ["net/http.(*conn).serve", "*ServeHTTP", "net/http.*", "runtime.*", "*"]
TRANSIENT_S = 5
CLIENT = {"wrk": bool(shutil.which("wrk"))}  # main() may choose the Python client (--client python)


def find_caddy() -> Path | None:
    """The caddy that scripts/thirdparty installs (it prints its path; installing it the first time)."""
    proc = subprocess.run(["bash", str(REPO / "scripts" / "thirdparty")], capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    path = Path(lines[-1]) if proc.returncode == 0 and lines else None
    return path if path is not None and path.is_file() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_caddy(binary: Path, workdir: Path, port: int) -> subprocess.Popen:
    env = dict(os.environ, HOME=str(workdir), XDG_DATA_HOME=str(workdir / "data"),
               XDG_CONFIG_HOME=str(workdir / "config"))
    proc = subprocess.Popen([str(binary), "respond", "--listen", f"127.0.0.1:{port}", "--body", "hello"],
                            env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("caddy did not start")


def load(port: int, seconds: float) -> float:
    """Requests per second over `seconds`, 2 threads, 2 keep-alive connections."""
    if CLIENT["wrk"]:
        out = subprocess.run(["wrk", "-t2", "-c2", f"-d{int(seconds)}s", f"http://127.0.0.1:{port}/"],
                             capture_output=True, text=True).stdout
        return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    counts = [0, 0]
    stop = time.monotonic() + seconds

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while time.monotonic() < stop:
            conn.request("GET", "/")
            conn.getresponse().read()
            counts[i] += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - began)


class Rounds:
    """Load in rounds of ROUND_S (wrk, or the Python client) until stopped: (start, end, req/s) of each, on
    time.monotonic()."""

    ROUND_S = 1

    def __init__(self, port: int) -> None:
        self.port, self.rounds = port, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            rps = load(self.port, self.ROUND_S)
            self.rounds.append((began, time.monotonic(), rps))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def rate(self, start: float, end: float) -> float | None:
        """Mean req/s of the rounds whose middle lies in [start, end)."""
        inside = [rps for began, ended, rps in self.rounds if start <= (began + ended) / 2 < end]
        return statistics.mean(inside) if inside else None


def helper_running() -> bool:
    """Whether a gotrace-detach helper (removing probes after gotrace exited) is still running."""
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == "gotrace-detach":
                return True
        except OSError:
            pass
    return False


def from_launch(command: str, pid: int, pattern: str, port: int, seconds: float) -> dict:
    """Traced under load all along (Rounds): the rates from launch to the last probe removed, and by part."""
    rounds = Rounds(port)
    time.sleep(3 * Rounds.ROUND_S)  # the load runs before gotrace comes
    launched = time.monotonic()
    proc = subprocess.Popen([*GOTRACE, command, "-p", str(pid), pattern, "--json"], cwd=REPO, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    tracing = None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("Tracing "):
            tracing = time.monotonic()
            break
    if tracing is None:
        proc.wait()
        rounds.stop()
        return {"error": "".join(lines)[-500:]}
    drain = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    drain.start()
    time.sleep(seconds)
    stopping = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.wait(300)
    exited = time.monotonic()
    while helper_running() and time.monotonic() - exited < 300:
        time.sleep(0.1)
    done = time.monotonic()
    time.sleep(2 * Rounds.ROUND_S)
    rounds.stop()
    drain.join(30)
    return {"whole": rounds.rate(launched, done), "start": rounds.rate(launched, tracing),
            "tracing": rounds.rate(tracing, stopping), "stop": rounds.rate(stopping, done),
            "start_s": tracing - launched, "stop_s": done - stopping, "whole_s": done - launched,
            "detached": sum(int(m.group(1).replace(",", "")) for line in lines
                            if (m := re.match(r"gotrace: detached ([\d,]+) function", line))),
            "left_out": sum(int(m.group(1).replace(",", "")) for line in lines
                            if (m := re.search(r"([\d,]+) left out \(detached by the cost guard", line)))}


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user and system, all threads) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def traced(command: str, pid: int, pattern: str, port: int, seconds: float) -> dict:
    started = time.monotonic()
    proc = subprocess.Popen([*GOTRACE, command, "-p", str(pid), pattern, "--json"], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stderr: list[tuple[float, str]] = []
    out: list[str] = []
    header = threading.Event()

    def pump_err() -> None:
        for line in proc.stderr:
            stderr.append((time.monotonic() - started, line))
            if line.startswith("Tracing "):
                header.set()
        header.set()

    def pump_out() -> None:
        out.extend(proc.stdout)

    threads = [threading.Thread(target=pump_err, daemon=True), threading.Thread(target=pump_out, daemon=True)]
    for t in threads:
        t.start()
    header.wait()
    attach_s = time.monotonic() - started
    if proc.poll() is not None:
        return {"error": "".join(line for _, line in stderr)[-500:]}
    cpu_at_start = process_cpu_s(proc.pid)
    first = load(port, TRANSIENT_S)
    cpu_after_first = process_cpu_s(proc.pid)
    rps = load(port, seconds)
    cpu_at_end = process_cpu_s(proc.pid)
    proc.send_signal(signal.SIGINT)
    proc.wait(300)
    for t in threads:
        t.join(30)
    docs = [json.loads(line) for line in out if line.startswith("{")]
    reports = [d for d in docs if d.get("event") == "report"]
    detached = [d for d in docs if d.get("event") == "detached"]
    rounds = [(at, line) for at, line in stderr if line.startswith("gotrace: detached")]
    return {"attach_s": attach_s, "first": first, "rps": rps, "report": reports[-1] if reports else None,
            "own_cpu": ((cpu_after_first - cpu_at_start) / TRANSIENT_S, (cpu_at_end - cpu_after_first) / seconds),
            "detached": detached,
            "rounds": rounds, "stderr": [line for _, line in stderr]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("patterns", nargs="*", default=PATTERNS)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--command", default="latency", choices=["latency", "count"])
    parser.add_argument("--from-launch", action="store_true",
                        help="load all along; measure from gotrace's launch to its probes' removal")
    parser.add_argument("--client", choices=["wrk", "python"], default="wrk",
                        help="the load: wrk (when installed) or a Python client with 2 threads, like the issue's")
    args = parser.parse_args()
    CLIENT["wrk"] = args.client == "wrk" and CLIENT["wrk"]
    binary = find_caddy()
    if binary is None:
        raise SystemExit("no caddy: scripts/thirdparty could not install it")
    with tempfile.TemporaryDirectory(prefix="gotrace-guard-bench-") as tmp:
        work = Path(tmp)
        private = work / "caddy"
        shutil.copy2(binary, private)
        port = free_port()
        caddy = start_caddy(private, work, port)
        try:
            print(f"caddy {binary} (private copy), pid {caddy.pid}; load: "
                  f"{'wrk -t2 -c2' if CLIENT['wrk'] else 'python, 2 threads'}, keep-alive; "
                  f"{args.seconds:g} s per measurement; load average {os.getloadavg()[0]:.2f}")
            before = load(port, args.seconds)
            print(f"untraced: {before:,.0f} req/s")
            for pattern in args.patterns:
                if args.from_launch:
                    r = from_launch(args.command, caddy.pid, pattern, port, args.seconds)
                    after = load(port, args.seconds)
                    print(f"untraced: {after:,.0f} req/s")
                    if "error" in r:
                        print(f"{args.command} {pattern!r}: gotrace failed: {r['error']}")
                    else:
                        base = statistics.mean([before, after])

                        def part(rate: float | None) -> str:
                            return f"{rate:,.0f} = {100 * rate / base:.0f}%" if rate else "no round"

                        print(f"{args.command} {pattern!r}, from launch to the last probe removed "
                              f"({r['whole_s']:.1f} s): {part(r['whole'])} of untraced {base:,.0f} req/s; "
                              f"start-up {r['start_s']:.1f} s: {part(r['start'])}; tracing {args.seconds:g} s: "
                              f"{part(r['tracing'])}; stopping {r['stop_s']:.1f} s: {part(r['stop'])}; "
                              f"{r['detached']:,} functions detached, {r['left_out']:,} left out from the start "
                              "(the guard's memory)")
                    before = after
                    continue
                r = traced(args.command, caddy.pid, pattern, port, args.seconds)
                after = load(port, args.seconds)
                print(f"untraced: {after:,.0f} req/s")
                if "error" in r:
                    print(f"{args.command} {pattern!r}: gotrace failed: {r['error']}")
                    before = after
                    continue
                base = statistics.mean([before, after])
                rep = r["report"] or {}
                functions = rep.get("functions", [])
                n_detached = len(r["detached"])
                last = r["rounds"][-1][0] if r["rounds"] else None
                print(f"{args.command} {pattern!r}: {r['rps']:,.0f} req/s traced = {100 * r['rps'] / base:.0f}% of "
                      f"untraced {base:,.0f} (first {TRANSIENT_S} s: {r['first']:,.0f} = "
                      f"{100 * r['first'] / base:.0f}%); start-up {r['attach_s']:.1f} s; {len(functions):,} functions, "
                      f"{n_detached:,} detached in {len(r['rounds'])} rounds"
                      + (f" (last at {last:.1f} s after launch)" if last is not None else ""))
                first_cpu, next_cpu = r["own_cpu"]
                print(f"    gotrace's own CPU: {100 * first_cpu:.0f}% of one CPU in the first {TRANSIENT_S} s, "
                      f"{100 * next_cpu:.0f}% in the next {args.seconds:g} s")
                for at, line in r["rounds"][:3]:
                    print(f"    {at:5.1f}s {line.strip()[:220]}")
                if len(r["rounds"]) > 3:
                    print("    then: " + ", ".join(f"{at:.1f}s {m.group(1)}" for at, line in r["rounds"][3:]
                                                   if (m := re.search(r"detached (\d+) function", line))))
                if rep.get("overhead"):
                    o = rep["overhead"]
                    print(f"    final report over {rep['interval_s']:.1f} s: {o['hits_per_s']:,.0f} hits/s, "
                          f"{100 * o['cpu_share_of_one_cpu']:.1f}% of one CPU, "
                          f"{100 * (o['cpu_share_of_target'] or 0):.1f}% of caddy's CPU")
                for line in r["stderr"]:
                    if line.startswith(("cost guard", "while attaching", "gotrace: skipping")):
                        print(f"    {line.strip()[:220]}")
                before = after
        finally:
            caddy.terminate()
            caddy.wait()


if __name__ == "__main__":
    main()
