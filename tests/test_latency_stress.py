"""`gotrace latency` on hundreds of functions at once while the traced program churns goroutines: exact and harmless.

The service runs in HTTP mode with 64 client goroutines (each request also
starts goroutines of its own: stack growth in a fresh goroutine, a pipe
writer), under `gotrace latency -c` with every function of packages main, net
and sync probed (about 500 functions, 1500 probe sites, the hot paths of
net/http's connections and of every mutex in the program). For three
toolchains (old and new pclntab layouts and goid offsets) in every build mode
(static, stripped, PIE, external linking with cgo), the service must end
exactly as it does untraced (same summary and counts, exit 0), gotrace must
exit 0, and every function of main that the service counts must have the
service's count.
"""

from __future__ import annotations

import re

import pytest

from support import gobuild
from support.cli import run_gotrace_process
from test_latency_cli import HANDLE, WORK, parse_service, parse_text_reports, untraced_run

TOOLCHAINS = ["1.19", "1.23.9", "1.27.3"]
PATTERNS = ["main.*", "net.*", "sync.*"]
WORKLOAD = ["-mode", "http", "-n", "200", "-workers", "64", "-fib", "6", "-depth", "16"]
# Functions of main the service counts that must be traced in every build (the others have no ret:
# main.fail only panics; main.(*Wrapped).Describe tail-jumps to (*Base).Describe in some builds).
MUST_COMPARE = {HANDLE, WORK, "main.Request.Weight", "main.fib", "main.grow", "main.readFD",
                "main.(*Server).slowPath", "main.(*Base).Describe", "main.cgoAdd", "main.Map[int]",
                "main.Map[string]"}
UNTRACEABLE = {"main.fail"}


def service_name(go_name: str) -> str:
    """The service's name for a function as Go names it: main.Map[go.shape.int] (1.19: [go.shape.int_0]) is
    main.Map[int] in the service's summary."""
    return re.sub(r"\[go\.shape\.(\w+?)(?:_\d+)?\]", r"[\1]", go_name)


def anonymous_instances(report: dict, calls: dict) -> tuple[list[int], list[int]]:
    """Stripped Go 1.19 names both instances of Map `main.Map[...]` (gotrace reports them as
    `main.Map[...]@0x<entry>`): (their counts, the service's counts of Map[int] and Map[string]), sorted."""
    got = sorted(count for name, (count, _) in report.items() if name.startswith("main.Map[...]@0x"))
    return got, (sorted([calls["main.Map[int]"], calls["main.Map[string]"]]) if got else [])


@pytest.mark.bpf
@pytest.mark.parametrize("version", TOOLCHAINS)
@pytest.mark.parametrize("mode", gobuild.MODES)
def test_hundreds_of_functions_under_goroutine_churn(version, mode):
    binary = gobuild.build("service", version, mode, "amd64")
    untraced = untraced_run(str(binary), *WORKLOAD)
    proc = run_gotrace_process("latency", "-c", " ".join([str(binary), *WORKLOAD]), binary, *PATTERNS, "-v",
                               timeout=600)

    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    header = re.search(r"^Tracing (\d+) functions \((\d+) probe sites\)", proc.stderr, re.M)
    assert header and int(header.group(1)) >= 300, proc.stderr[-2000:]
    assert re.search(r"^gotrace: \S+ \(pid \d+\) exited with status 0$", proc.stderr, re.M), proc.stderr[-2000:]
    skipped = set(re.findall(r"^gotrace: skipping (\S+): ", proc.stderr, re.M))
    assert UNTRACEABLE <= skipped

    traced = parse_service(proc.stdout)
    assert traced.stable() == untraced.stable(), "the traced service's summary differs from its untraced run"
    assert traced.summary["handled"] == "200" and traced.calls[HANDLE] == 200

    reports = parse_text_reports(proc.stdout)
    assert len(reports) == 1
    report = reports[0]
    assert len(report) == int(header.group(1)), "every traced function appears in the report"
    seen = {service_name(name): count for name, (count, _) in report.items() if name.startswith("main.")}
    compared = {name: (seen[name], want) for name, want in traced.calls.items() if name in seen}
    print(f"\ngo{version} {mode}: {header.group(1)} functions, {header.group(2)} sites; "
          f"{HANDLE} {seen.get(HANDLE)}; compared {len(compared)} functions of main")
    anonymous, want_anonymous = anonymous_instances(report, traced.calls)
    assert anonymous == want_anonymous
    must = MUST_COMPARE - ({"main.Map[int]", "main.Map[string]"} if anonymous else set())
    assert must <= set(compared), sorted(set(traced.calls) - set(seen))
    assert {name: got for name, (got, _) in compared.items()} == {name: want for name, (_, want) in compared.items()}
    assert report[HANDLE] == (200, 0) and report[WORK] == (200, 0)
