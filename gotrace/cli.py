"""The `gotrace` command line: option parsing, rendering what the commands yield, and the error boundary.

Each command (gotrace.commands) returns or yields data; gotrace.output turns
it into text or JSON; this module only wires the two and prints. Every
GotraceError becomes one line on stderr and the contract's exit code;
click's usage errors become one line and exit 2. No traceback reaches the
user.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time

import click

from gotrace import __version__
from gotrace.errors import GotraceError

EXIT_USAGE = 2


# -- the command group ----------------------------------------------------------------

@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gotrace")
def cli() -> None:
    """eBPF tracing for Go binaries: goroutine-correct latency, call counts, call arguments.

    \b
    Examples:
      gotrace funcs ./server 'main.*'
      gotrace count -p 4242 'net/http.*' -d 5
      gotrace latency ./server 'main.(*Server).handle'
      gotrace latency -p 4242 'net/http.(*conn).serve' -d 10
      gotrace args ./server main.work
      gotrace top -p 4242 'main.*'
      gotrace doctor
    """


# -- funcs -------------------------------------------------------------------------------

@cli.command("funcs")
@click.argument("args", nargs=-1, metavar="TARGET [PATTERN]...")
@click.option("-p", "--pid", type=int, help="Inspect the binary of process PID (/proc/PID/exe).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (see the CLI contract).")
@click.option("--all", "show_all", is_flag=True,
              help="Also list functions that cannot be traced (with a PATTERN they are always listed).")
def funcs_cmd(args: tuple[str, ...], pid: int | None, as_json: bool, show_all: bool) -> None:
    """List a Go binary's functions and where gotrace would probe them.

    Shows each function's entry address, size and number of return sites,
    and why a function cannot be traced for latency. Needs no root and works
    on stripped binaries. PATTERN is a Go name (main.work,
    'net/http.(*conn).serve', 'main.Map[...]') or a glob ('main.*').

    \b
    Examples:
      gotrace funcs ./server              # every function
      gotrace funcs ./server 'main.*'     # functions of package main
      gotrace funcs -p 4242 '*ServeHTTP' --json
    """
    from gotrace.commands.funcs import funcs
    from gotrace.output.funcs import funcs_json, render_funcs_text

    listing = funcs(args, pid)
    if as_json:
        click.echo(json.dumps(funcs_json(listing)))
    else:
        click.echo(render_funcs_text(listing, show_all=show_all), nl=False)


# -- latency -----------------------------------------------------------------------------

def target_options(f):
    """-p/-c, -d, --json: the options every tracing command shares."""
    f = click.option("--json", "as_json", is_flag=True, help="JSON Lines output (see the CLI contract).")(f)
    f = click.option("-d", "--duration", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
                     help="Stop after SECONDS and print the final report.")(f)
    f = click.option("-c", "--command", metavar="'COMMAND ARGS'",
                     help="Start COMMAND, trace only it, report when it exits.")(f)
    f = click.option("-p", "--pid", type=click.IntRange(min=1), help="Trace only process PID.")(f)
    return f


def guard_options(f):
    """--max-overhead, -v, -i: the options of the commands that report under the cost guard (latency, count)."""
    from gotrace.commands import DEFAULT_MAX_OVERHEAD_PCT

    f = click.option("-v", "--verbose", is_flag=True,
                     help="List every skipped, idle and detached function instead of a summary line.")(f)
    f = click.option("--max-overhead", type=click.FloatRange(min=0), default=DEFAULT_MAX_OVERHEAD_PCT,
                     show_default=True, metavar="PERCENT",
                     help="Cost guard: when the probes cost more than PERCENT of the traced process's CPU time, "
                          "detach the costliest functions (0: only estimate). See the README.")(f)
    f = click.option("-i", "--interval", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
                     help="Print a report every SECONDS (and reset).")(f)
    f = click.option("--retry-detached", is_flag=True,
                     help="Also probe the functions the cost guard detached in an earlier trace of this binary "
                          "(left out by default unless named exactly; see the README).")(f)
    return f


def _trace_options(pid, command, duration, interval, max_overhead, verbose, **more):
    from gotrace.commands.tracing import TraceOptions

    return TraceOptions(pid, command, duration, interval, max_overhead or None, verbose, **more)


class Duration(click.ParamType):
    """A duration as Go writes one: 250us, 5ms, 1.5s, 100ns, 2m (a unit is required); in nanoseconds."""

    name = "DURATION"

    def __init__(self, positive: bool = False) -> None:
        self.positive = positive  # 0 is refused

    _UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000,
              "h": 3_600_000_000_000}

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        import re

        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ns|us|µs|ms|s|m|h)\s*", str(value))
        if not match:
            self.fail(f"{value!r} is not a duration: write a number and a unit, e.g. 250us, 5ms, 1.5s", param, ctx)
        ns = round(float(match[1]) * self._UNITS[match[2]])
        if self.positive and ns <= 0:
            self.fail(f"{value!r}: the duration must be more than 0", param, ctx)
        return ns


@cli.command("latency")
@click.argument("args", nargs=-1, metavar="[./bin] PATTERN...")
@target_options
@guard_options
@click.option("--unit", type=click.Choice(["auto", "ns", "us", "ms", "s"]), default="auto", show_default=True,
              help="Unit of the text report.")
@click.option("--sort", type=click.Choice(["total", "count", "mean", "p99", "max", "name", "address"]),
              default="total", show_default=True, help="Order of the functions in the text report.")
@click.option("--prometheus", metavar="HOST:PORT",
              help="Serve Prometheus metrics at http://HOST:PORT/metrics while tracing (cumulative histograms; "
                   "see the README for the metrics).")
@click.option("-q", "--quiet", is_flag=True, help="Print no reports (with --prometheus: the metrics are the output).")
@click.option("--keep-exited", type=click.FloatRange(min=0), default=300, show_default=True, metavar="SECONDS",
              help="Every-process mode: an exited process's series stay in the metrics this long, then go.")
@click.option("--slow", "slow_ns", type=Duration(positive=True), metavar="DURATION",
              help="Also print each call that takes at least DURATION (250us, 5ms, 1.5s) when it returns, "
                   "with its goroutine's stack.")
@click.option("--stack-depth", type=click.IntRange(1, 64), default=16, show_default=True, metavar="N",
              help="Frames of each --slow call's stack shown (inlined calls count as frames).")
@click.option("--slow-rate", type=click.IntRange(min=0), default=100, show_default=True, metavar="N",
              help="At most N slow calls a second are printed; the rest are counted in the report (0: no limit).")
@click.option("--by", type=click.Choice(["caller", "pid"]),
              help="One histogram per (function, immediate caller) or (function, process).")
@click.option("--print-bpf", is_flag=True, hidden=True, help="Print the BPF C source and exit.")
def latency_cmd(args, pid, command, duration, as_json, interval, max_overhead, verbose, retry_detached, unit, sort,
                prometheus, quiet, keep_exited, slow_ns, stack_depth, slow_rate, by, print_bpf) -> None:
    """Latency histograms of Go functions, per goroutine, from entry to return.

    Probes go after each function's stack-check prologue and on every return
    instruction (never uretprobes, which crash Go). Calls are paired by
    goroutine and stack depth, so thread migration, recursion and stack growth
    are handled. Calls still running at a report are shown as in flight;
    unmatched calls are the ones unwound by a panic or runtime.Goexit.
    Ctrl-C, SIGTERM, -d expiry or the traced process's exit print the final
    report; the traced process keeps running untouched.

    The cost guard estimates what the probes cost the traced process (each
    hit is a trap into the kernel) and detaches the costliest functions when
    that exceeds --max-overhead; `gotrace count` costs far less per call.

    --slow prints every call at least that long with the stack of its
    goroutine (the caller first; file:line from the binary's pclntab, so
    stripped binaries work; inlined calls marked). --by caller splits each
    histogram by the Go function that made the call (counted in the kernel,
    every call); --by pid by process. Each report states the measurement
    floor: what an empty Go function measures on this host.

    \b
    Examples:
      gotrace latency ./server 'main.(*Server).handle'
      gotrace latency -p 4242 'net/http.(*conn).serve' -d 10
      gotrace latency -c './server -n 1000' ./server 'main.*' --unit us
      gotrace latency ./server 'main.*' -i 5 --json
      gotrace latency -p 4242 'net/http.*' --max-overhead 20 --sort p99
      gotrace latency -p 4242 'runtime.*' --retry-detached
      gotrace latency ./server 'main.(*Server).handle' --prometheus 127.0.0.1:9464 --quiet
      gotrace latency -p 4242 'main.(*DB).Query' --slow 5ms --stack-depth 8
      gotrace latency ./server 'main.lookup' --by caller
    """
    started = time.perf_counter()
    from gotrace.commands.latency import LatencyRequest, latency

    timings = {"imports": time.perf_counter() - started} if os.environ.get("GOTRACE_TIMINGS") == "1" else None
    options = _trace_options(pid, command, duration, interval, max_overhead, verbose, quiet=quiet,
                             keep_exited_s=keep_exited, retry_detached=retry_detached)
    request = LatencyRequest(args, options, sort=sort, print_bpf=print_bpf, timings=timings, prometheus=prometheus,
                             slow_ns=slow_ns, stack_depth=stack_depth, slow_rate=slow_rate, by=by)
    _show(latency(request), as_json=as_json, unit=unit)


# -- count -------------------------------------------------------------------------------

@cli.command("count")
@click.argument("args", nargs=-1, metavar="[./bin] PATTERN...")
@target_options
@guard_options
@click.option("--sort", type=click.Choice(["count", "name", "address"]), default="count", show_default=True,
              help="Order of the functions in the text report.")
@click.option("--print-bpf", is_flag=True, hidden=True, help="Print the BPF C source and exit.")
def count_cmd(args, pid, command, duration, as_json, interval, max_overhead, verbose, retry_detached, sort,
              print_bpf) -> None:
    """Calls per function and calls per second: what is hot?

    One probe per call, at the function's entry (after its stack-check
    prologue): no return probe and no goroutine key, so it costs a fraction
    of `gotrace latency` per call and is the first look to take at a busy
    production process. Functions without a return instruction (tail-jump
    wrappers, functions that only panic) can be counted too. Same targets
    and cost guard as latency.

    \b
    Examples:
      gotrace count -p 4242 'net/http.*' -d 5
      gotrace count ./server 'main.*' -i 1
      gotrace count -c './server -n 1000' ./server 'main.*' --json
    """
    from gotrace.commands.count import CountRequest, count

    request = CountRequest(args, _trace_options(pid, command, duration, interval, max_overhead, verbose,
                                                retry_detached=retry_detached), sort=sort, print_bpf=print_bpf)
    _show(count(request), as_json=as_json)


def _show(events, *, as_json: bool, unit: str = "auto") -> None:
    """Print what a tracing command yields, as it comes: reports and calls on stdout, the rest on stderr."""
    from gotrace.output.stream import render

    for event in events:
        for to_stdout, text in render(event, as_json=as_json, unit=unit):
            if not to_stdout:
                sys.stdout.flush()
            _write_all(sys.stdout if to_stdout else sys.stderr, text)


def _write_all(stream, text: str) -> None:
    """Write text whole: straight to the file descriptor when there is one. (CPython 3.11's buffered writer
    dropped the rest of a write to a full pipe that a signal interrupted after a partial write, seen on a
    Ctrl-C while a reader was slow; os.write returns the partial count and the loop writes the rest.)"""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        stream.write(text)
        stream.flush()
        return
    stream.flush()
    data = memoryview(text.encode(stream.encoding or "utf-8", stream.errors or "strict"))
    while data:
        data = data[os.write(fd, data):]


# -- args ------------------------------------------------------------------------------

from gotrace.commands import DEFAULT_MAX_OVERHEAD_PCT as _DEFAULT_BUDGET_PCT  # noqa: E402  (what guard_options reads)

@cli.command("args")
@click.argument("args", nargs=-1, metavar="[./bin] PATTERN...")
@target_options
@click.option("-n", "--max-events", type=click.IntRange(min=1), metavar="N", help="Stop after N calls.")
@click.option("--str-len", type=click.IntRange(0, 512), default=64, show_default=True, metavar="N",
              help="Bytes of each string and []byte shown.")
@click.option("--depth", type=click.IntRange(0, 8), default=2, show_default=True, metavar="N",
              help="Levels of memory followed: pointers, slice and map elements, interface values.")
@click.option("--max-elems", type=click.IntRange(0, 64), default=8, show_default=True, metavar="N",
              help="Elements of each slice, array and map shown.")
@click.option("--min-latency", type=Duration(), default=None, metavar="DURATION",
              help="Show only calls at least this slow (e.g. 5ms); faster ones are counted in the kernel.")
@click.option("--sig", "sigs", multiple=True, metavar="'[NAME=]func(...) (...)'",
              help="A function's signature in Go syntax, for binaries without DWARF (or to override it); "
                   "methods list the receiver first. Repeat as NAME=func(...) for several functions.")
@click.option("--max-rate", type=click.IntRange(min=0), default=10000, show_default=True,
              metavar="N", help="At most N calls per second are reported; the rest are counted and the "
                                "count printed at the end (0: no limit).")
@click.option("--max-overhead", type=click.FloatRange(min=0), default=_DEFAULT_BUDGET_PCT, show_default=True,
              metavar="PERCENT", help="Cost guard, as for latency: when the probes cost more than PERCENT of the "
                                      "traced process's CPU time, detach the costliest functions (0: only estimate).")
@click.option("--print-bpf", is_flag=True, hidden=True, help="Print the BPF C source and exit.")
def args_cmd(args, pid, command, duration, as_json, max_events, str_len, depth, max_elems, min_latency, sigs,
             max_rate, max_overhead, print_bpf) -> None:
    """Arguments and results of each call of Go functions, as Go would write them.

    One line per completed call: time, pid, goroutine id, the call with its
    arguments, its results, and its latency. Names and types come from the
    binary's DWARF, else (methods of stripped binaries) from its runtime type
    data, else from --sig. Pointers, slices, maps and interfaces are followed
    --depth levels deep, with the first --max-elems elements and --str-len
    bytes of each string; floats passed in vector registers cannot be read by
    a uprobe and show as unavailable. Calls beyond --max-rate per second, or
    that the reader could not keep up with, are counted and reported at the
    end, never silently lost. --max-rate bounds what is printed, not what the
    probes cost: the cost guard does that, as for latency (--max-overhead).

    \b
    Examples:
      gotrace args ./server main.work
      gotrace args -p 4242 'main.(*Server).handle' -n 20
      gotrace args -p 4242 'net/http.serverHandler.ServeHTTP' --min-latency 5ms --depth 1
      gotrace args ./server-stripped main.work --sig 'func(n int, s string) (int, error)'
      gotrace args ./stripped 'main.*' --sig 'main.a=func(int) bool' --sig 'main.b=func(s string)'
      gotrace args -c './server -n 100' ./server 'main.*' --json
    """
    started = time.perf_counter()
    from gotrace.commands.args import ArgsRequest
    from gotrace.commands.args import args as run_args

    timings = {"imports": time.perf_counter() - started} if os.environ.get("GOTRACE_TIMINGS") == "1" else None
    request = ArgsRequest(args, pid=pid, command=command, duration_s=duration, max_events=max_events,
                          str_len=str_len, depth=depth, max_elems=max_elems, sigs=tuple(sigs), max_rate=max_rate,
                          min_latency_ns=min_latency or 0, print_bpf=print_bpf, timings=timings,
                          max_overhead_pct=max_overhead or None)
    _show(run_args(request), as_json=as_json)


# -- doctor -----------------------------------------------------------------------------

@cli.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def doctor_cmd(as_json: bool) -> None:
    """What this host can trace, and with which kernel mechanisms.

    Tries each kernel feature gotrace uses (BPF ring buffer, BPF cookies,
    uprobe_multi and perf-event links) and loads each command's BPF
    programs, then says which mechanism each command will use and what is
    missing. Exits 0 when this host can trace, 3 when it cannot. Attaches
    nothing to any process.

    \b
    Examples:
      sudo gotrace doctor
      sudo gotrace doctor --json
    """
    from gotrace.commands.doctor import doctor, exit_code
    from gotrace.output.doctor import doctor_json, render_doctor_text

    report = doctor()
    if as_json:
        click.echo(json.dumps(doctor_json(report)))
    else:
        click.echo(render_doctor_text(report), nl=False)
    sys.exit(exit_code(report))


# -- floor ------------------------------------------------------------------------------------

@cli.command("floor")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--cached", is_flag=True, help="Print the cached figure; do not measure.")
def floor_cmd(as_json: bool, cached: bool) -> None:
    """Measure what an empty Go function measures on this host: the probes' own cost.

    Every latency gotrace reports includes this much of its own probes'
    cost; reports state it. gotrace measures it on its first latency run on
    a host (building a tiny Go program, which needs a Go toolchain, and
    tracing 5000 calls of its empty function) and caches it per kernel
    release and gotrace version; this command measures it again.

    \b
    Examples:
      gotrace floor
      gotrace floor --cached --json
    """
    from gotrace.commands.floor import cache_path, host_floor

    floor = host_floor(measure=not cached, again=not cached)
    if as_json:
        click.echo(json.dumps({"floor_ns": floor.ns, "calls": floor.calls or None, "reason": floor.reason,
                               "cache": str(cache_path())}))
    elif floor.ns is None:
        click.echo(f"floor unknown: {floor.reason}")
    else:
        click.echo(f"an empty Go function measures {floor.ns / 1000:.1f}us on this host "
                   f"(median of {floor.calls} calls; cached in {cache_path()})")
    if floor.ns is None:
        sys.exit(EXIT_USAGE)


# -- top ------------------------------------------------------------------------------------

@cli.command("top")
@click.argument("args", nargs=-1, metavar="[./bin] PATTERN...")
@click.option("-p", "--pid", type=click.IntRange(min=1), help="Trace only process PID.")
@click.option("-c", "--command", metavar="'COMMAND ARGS'", help="Start COMMAND and trace only it.")
@click.option("-d", "--duration", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Stop after SECONDS (the final counts stay on the screen until q).")
@click.option("--max-overhead", type=click.FloatRange(min=0), default=_DEFAULT_BUDGET_PCT, show_default=True,
              metavar="PERCENT", help="Cost guard, as for latency: when the probes cost more than PERCENT of the traced process's "
                   "CPU time, detach the costliest functions (0: only estimate).")
@click.option("--retry-detached", is_flag=True,
              help="Also probe the functions the cost guard detached in an earlier trace of this binary.")
def top_cmd(args, pid, command, duration, max_overhead, retry_detached) -> None:
    """A live table of Go functions, like top: what is slow right now.

    Refreshed every second, one row per function: calls per second, calls
    since start, p50, p99 and max over the last second, calls in flight
    (running at the refresh), and the function's share of the time spent in all traced functions. Sorted by
    that time. Keys: t c p m n sort by time, calls/s, p99, max, name;
    space pauses; q quits. Needs a terminal (80x24 is enough). The cost
    guard watches the probes as in latency: the screen shows what they
    cost, and a function it detached is marked so.

    \b
    Examples:
      gotrace top -p 4242 'main.*'
      gotrace top ./server 'net/http.*' 'main.(*Server).*'
      gotrace top -c './server -n 1000' ./server 'main.*'
    """
    from gotrace.errors import UsageError

    if not (sys.stdout.isatty() and sys.stdin.isatty()):
        raise UsageError("gotrace top needs a terminal and this is not one; "
                         "for reports in a pipe or a file use gotrace latency -i 1")
    from gotrace.commands.top import TopRequest, top
    from gotrace.output.topscreen import run_top

    run_top(top(TopRequest(args, pid=pid, command=command, duration_s=duration, max_overhead_pct=max_overhead or None,
                           retry_detached=retry_detached)))


# -- entry point --------------------------------------------------------------------------

def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; turns every expected failure into one line and an exit code."""
    try:
        cli.main(args=argv, prog_name="gotrace", standalone_mode=False)
    except GotraceError as e:
        click.echo(f"gotrace: {_one_line(str(e))}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.NoArgsIsHelpError as e:
        click.echo(e.ctx.get_help() if e.ctx else str(e))
        sys.exit(EXIT_USAGE)
    except click.UsageError as e:
        cmd = e.ctx.command_path if e.ctx else "gotrace"
        click.echo(f"gotrace: {_one_line(e.format_message())} (see {cmd} --help)", err=True)
        sys.exit(EXIT_USAGE)
    except click.Abort:
        sys.exit(130)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # a bug of ours: still one line, with the way to the traceback
        if os.environ.get("GOTRACE_DEBUG"):
            raise
        click.echo(f"gotrace: internal error: {type(e).__name__}: {_one_line(str(e))} "
                   f"(rerun with GOTRACE_DEBUG=1 for details, and please report it)", err=True)
        sys.exit(1)
