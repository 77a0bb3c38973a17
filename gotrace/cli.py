"""The `gotrace` command line: argument parsing and the error boundary only.

Commands call the library and hand its data to the formatting modules. Every
GotraceError becomes one line on stderr and the contract's exit code; click's
usage errors become one line and exit 2. No traceback reaches the user.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time

import click

from gotrace import __version__
from gotrace.errors import CapabilityError, GotraceError, UsageError

EXIT_USAGE = 2


# -- targets ----------------------------------------------------------------------

def resolve_binary(arg: str) -> str:
    """A binary argument as a path: an existing path, else a command on $PATH."""
    if os.path.exists(arg) or "/" in arg:
        return arg
    found = shutil.which(arg)
    return found or arg


def pid_binary(pid: int) -> str:
    """`/proc/PID/exe` of a live process (works for processes in containers)."""
    exe = f"/proc/{pid}/exe"
    if not os.path.exists(f"/proc/{pid}"):
        raise UsageError(f"no process with pid {pid}; check the pid with ps or pgrep")
    try:
        os.stat(exe)
    except PermissionError:
        raise CapabilityError(f"cannot read {exe}: permission denied; run gotrace as root (sudo)") from None
    except OSError:
        raise UsageError(f"process {pid} has no readable executable (a kernel thread or exited); give a Go process pid")
    return exe


def open_target(binary: str | None, pid: int | None):
    from gotrace.binary.gobinary import GoBinary

    if pid is not None:
        return GoBinary.open(pid_binary(pid), display_path=f"pid {pid} ({_readlink(f'/proc/{pid}/exe')})")
    if binary is None:
        raise UsageError("give a binary path or -p PID")
    path = resolve_binary(binary)
    return GoBinary.open(path, display_path=binary)


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return path


# -- the command group ----------------------------------------------------------------

class GotraceGroup(click.Group):
    """Top-level group whose help lists examples."""


@click.group(cls=GotraceGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gotrace")
def cli() -> None:
    """eBPF tracing for Go binaries: goroutine-correct latency, call arguments.

    \b
    Examples:
      gotrace funcs ./server 'main.*'
      gotrace latency ./server 'main.(*Server).handle'
      gotrace latency -p 4242 'net/http.(*conn).serve' -d 10
      gotrace args ./server main.work
    """


# -- funcs -------------------------------------------------------------------------------

@cli.command("funcs")
@click.argument("args", nargs=-1, metavar="TARGET [PATTERN]...")
@click.option("-p", "--pid", type=int, help="Inspect the binary of process PID (/proc/PID/exe).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (see the CLI contract).")
@click.option("--all", "show_all", is_flag=True, help="Also list functions that cannot be traced.")
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
    from gotrace.commands.funcs import describe_functions
    from gotrace.output.funcs import render_funcs_text

    binary, patterns = _split_target(args, pid)
    with open_target(binary, pid) as gobin:
        listing = describe_functions(gobin, patterns)
        if as_json:
            click.echo(json.dumps(listing.to_json()))
        else:
            click.echo(render_funcs_text(listing, show_all=show_all or bool(patterns)), nl=False)


def _split_target(args: tuple[str, ...], pid: int | None) -> tuple[str | None, list[str]]:
    if pid is not None:
        return None, list(args)
    if not args:
        raise UsageError("missing TARGET: give a Go binary path or -p PID (see gotrace funcs --help)")
    return args[0], list(args[1:])


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


@cli.command("latency")
@click.argument("args", nargs=-1, metavar="[./bin] PATTERN...")
@target_options
@click.option("-i", "--interval", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Print a report every SECONDS (and reset).")
@click.option("--unit", type=click.Choice(["auto", "ns", "us", "ms", "s"]), default="auto", show_default=True,
              help="Unit of the text report.")
@click.option("--print-bpf", is_flag=True, hidden=True, help="Print the BPF C source and exit.")
def latency_cmd(args, pid, command, duration, as_json, interval, unit, print_bpf) -> None:
    """Latency histograms of Go functions, per goroutine, from entry to return.

    Probes go after each function's stack-check prologue and on every return
    instruction (never uretprobes, which crash Go). Calls are paired by
    goroutine and stack depth, so thread migration, recursion and stack growth
    are handled. Ctrl-C, SIGTERM, -d expiry or the traced process's exit print
    the final report; the traced process keeps running untouched.

    \b
    Examples:
      gotrace latency ./server 'main.(*Server).handle'
      gotrace latency -p 4242 'net/http.(*conn).serve' -d 10
      gotrace latency -c './server -n 1000' ./server 'main.*' --unit us
      gotrace latency ./server 'main.*' -i 5 --json
    """
    started = time.perf_counter()
    from gotrace.commands.latency import function_reports, plan_latency, traced_functions
    from gotrace.output.latency import header_line, latency_report_json, render_latency_text
    from gotrace.trace.session import attached, run_loop
    from gotrace.trace.latency import LatencyTracer

    imported = time.perf_counter()
    target, patterns = _tracing_target(args, pid, command)
    with open_target(target.binary_path if pid is None else None, pid) as gobin:
        plan = plan_latency(gobin, patterns)
        offsets = gobin.runtime_offsets
        analysed = time.perf_counter()

        def make_tracer() -> LatencyTracer:
            return LatencyTracer(gobin.path, traced_functions(plan), pid=target.pid,
                                 goid_offset=offsets.goid, stack_hi_offset=offsets.stack_hi, arch=gobin.arch)

        if print_bpf:
            click.echo(make_tracer().bpf_source())
            return
        for skipped in plan.skipped:
            click.echo(f"gotrace: skipping {skipped.function.name}: {skipped.reason}", err=True)

        with attached(target, make_tracer) as (tracer, stop):
            _warn_slow_detach(tracer.attach_mode, plan.n_sites)
            if os.environ.get("GOTRACE_TIMINGS") == "1":
                _echo_timings({"imports": imported - started, "elf_analysis": analysed - imported,
                               **tracer.timings_s})
                if tracer.bpf_compiler_peak_rss_kb:
                    click.echo(f"gotrace: bpf compile child peak RSS {tracer.bpf_compiler_peak_rss_kb / 1024:.1f} MB",
                               err=True)
            click.echo(header_line(len(plan.traced), plan.n_sites, target.pid, gobin.go_version,
                                   target.display), err=True)
            target_json = {"binary": target.display, "pid": target.pid, "go_version": gobin.go_version}
            last = [time.monotonic()]

            def emit() -> None:
                now = time.monotonic()
                reports = function_reports(plan, tracer.read(reset=True))
                if as_json:
                    click.echo(json.dumps(latency_report_json(target_json, now - last[0], reports)))
                else:
                    if interval is not None:
                        stamp = time.strftime("%H:%M:%S")
                        click.echo(f"--- {stamp}  last {now - last[0]:.1f}s ---")
                    click.echo(render_latency_text(reports, unit=unit), nl=False)
                sys.stdout.flush()
                last[0] = now

            ended = run_loop(target, stop, duration_s=duration, interval_s=interval, on_interval=emit)
            emit()
            if ended == "target-exit" and target.exit_status is not None:
                click.echo(f"gotrace: {_exit_note(target)}", err=True)


def _exit_note(target) -> str:
    """How a `-c` command ended, as `time` or strace would say it (its status is not gotrace's)."""
    status = target.exit_status
    if status < 0:
        try:
            how = f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            how = f"was killed by signal {-status}"
    else:
        how = f"exited with status {status}"
    return f"{target.command[0]} (pid {target.pid}) {how}"


def _echo_timings(phases_s: dict[str, float]) -> None:
    """GOTRACE_TIMINGS=1: one stderr line with the seconds each start-up phase took (for scripts/bench)."""
    click.echo("gotrace: timings " + " ".join(f"{name}_s={value:.4f}" for name, value in phases_s.items()), err=True)


# Measured on Linux 6.1-6.5 style per-site perf links: each removal waits for the kernel.
PERF_LINK_DETACH_S_PER_SITE = 0.087
SLOW_DETACH_WARN_SITES = 200


def _warn_slow_detach(attach_mode: str, n_sites: int) -> None:
    """On kernels without uprobe_multi (before 6.6) every site detaches on its own, slowly."""
    if attach_mode == "perf_link" and n_sites >= SLOW_DETACH_WARN_SITES:
        seconds = n_sites * PERF_LINK_DETACH_S_PER_SITE
        click.echo(f"gotrace: this kernel has no uprobe_multi links (Linux 6.6+): detaching {n_sites} probe "
                   f"sites will take about {seconds:.0f} s after tracing stops; trace fewer functions to "
                   f"shorten it", err=True)


def _tracing_target(args: tuple[str, ...], pid: int | None, command: str | None):
    """(Target, patterns) from the positional arguments and -p/-c."""
    from gotrace.trace.session import Target, parse_command

    if pid is not None and command is not None:
        raise UsageError("-p and -c exclude each other: trace a running process or start one")
    if pid is not None:
        if not args:
            raise UsageError("missing PATTERN: give at least one Go function name or glob, e.g. 'main.*'")
        return Target(pid_binary(pid), _readlink(f"/proc/{pid}/exe"), pid=pid), list(args)
    if len(args) < 2:
        what = "./bin and PATTERN" if not args else "PATTERN after the binary"
        raise UsageError(f"missing {what}: e.g. gotrace latency ./server 'main.handle' (or -p PID PATTERN)")
    binary = resolve_binary(args[0])
    argv = parse_command(command) if command is not None else None
    return Target(binary, args[0], command=argv), list(args[1:])


# -- args ------------------------------------------------------------------------------

ARGS_DEFAULT_MAX_RATE = 10000


class _StopOrLimit:
    """Truthy when the StopFlag is set or the -n limit is reached: run_loop's `stop`."""

    def __init__(self, stop, limit_reached) -> None:
        self._stop = stop
        self._limit_reached = limit_reached

    def __bool__(self) -> bool:
        return bool(self._stop) or self._limit_reached()


@cli.command("args")
@click.argument("args", nargs=-1, metavar="[./bin] PATTERN...")
@target_options
@click.option("-n", "--max-events", type=click.IntRange(min=1), metavar="N", help="Stop after N calls.")
@click.option("--str-len", type=click.IntRange(0, 256), default=64, show_default=True, metavar="N",
              help="Bytes of each string and []byte shown (and of slice elements).")
@click.option("--sig", "sigs", multiple=True, metavar="'[NAME=]func(...) (...)'",
              help="A function's signature in Go syntax, for binaries without DWARF (or to override it); "
                   "methods list the receiver first. Repeat as NAME=func(...) for several functions.")
@click.option("--max-rate", type=click.IntRange(min=0), default=ARGS_DEFAULT_MAX_RATE, show_default=True,
              metavar="N", help="At most N calls per second are reported; the rest are counted and the "
                                "count printed at the end (0: no limit).")
@click.option("--print-bpf", is_flag=True, hidden=True, help="Print the BPF C source and exit.")
def args_cmd(args, pid, command, duration, as_json, max_events, str_len, sigs, max_rate, print_bpf) -> None:
    """Arguments and results of each call of Go functions, as Go would write them.

    One line per completed call: time, pid, goroutine id, the call with its
    arguments, its results, and its latency. Names and types come from the
    binary's DWARF, or from --sig for stripped binaries. Strings and []byte
    show their first --str-len bytes; floats passed in vector registers
    cannot be read by a uprobe and show as unavailable. Calls beyond
    --max-rate per second, or that the reader could not keep up with, are
    counted and reported at the end, never silently lost.

    \b
    Examples:
      gotrace args ./server main.work
      gotrace args -p 4242 'main.(*Server).handle' -n 20
      gotrace args ./server-stripped main.work --sig 'func(n int, s string) (int, error)'
      gotrace args ./stripped 'main.*' --sig 'main.a=func(int) bool' --sig 'main.b=func(s string)'
      gotrace args -c './server -n 100' ./server 'main.*' --json
    """
    from gotrace.capture.plan import args_functions, plan_args
    from gotrace.trace.args import ArgsTracer
    from gotrace.output.latency import header_line
    from gotrace.trace.session import attached, run_loop
    from gotrace.capture.values import RuntimeTypes, call_json, decode_call, format_call

    target, patterns = _tracing_target(args, pid, command)
    with open_target(target.binary_path if pid is None else None, pid) as gobin:
        plan = plan_args(gobin, patterns, sig=sigs, str_len=str_len)
        offsets = gobin.runtime_offsets
        functions = args_functions(plan)

        def make_tracer() -> ArgsTracer:
            return ArgsTracer(gobin.path, functions, pid=target.pid, goid_offset=offsets.goid,
                              stack_hi_offset=offsets.stack_hi, arch=gobin.arch, max_rate=max_rate,
                              on_call=on_call)

        if print_bpf:
            click.echo(make_tracer().bpf_source())
            return
        for name, reason in plan.skipped:
            click.echo(f"gotrace: skipping {name}: {reason}", err=True)
        types = RuntimeTypes.of(gobin)
        fplans = [fplan for _, fplan in plan.traced]
        wall_offset_ns = time.time_ns() - time.monotonic_ns()
        out = sys.stdout
        state = {"printed": 0, "undecodable": 0}

        def limit_reached() -> bool:
            return max_events is not None and state["printed"] >= max_events

        def on_call(record) -> None:
            if limit_reached() or record.func_id >= len(fplans):
                return
            try:
                call = decode_call(record, fplans[record.func_id], types,
                                   load_bias=record.entry_ip - functions[record.func_id].entry_vaddr,
                                   wall_offset_ns=wall_offset_ns)
                line = json.dumps(call_json(call), ensure_ascii=False) if as_json else format_call(call)
            except Exception:  # a record we cannot make sense of: counted, never a crash
                state["undecodable"] += 1
                return
            out.write(line + "\n")
            state["printed"] += 1

        with attached(target, make_tracer) as (tracer, stop):
            click.echo(header_line(len(plan.traced), plan.n_sites, target.pid, gobin.go_version,
                                   target.display), err=True)

            def poll() -> None:
                tracer.poll(20)
                out.flush()

            run_loop(target, _StopOrLimit(stop, limit_reached), duration_s=duration, interval_s=0.02,
                     on_interval=poll)
            tracer.drain()
            out.flush()
            click.echo(_args_summary(state["printed"], state["undecodable"], tracer.stats(), max_rate,
                                     limit_reached()), err=True)


def _args_summary(printed: int, undecodable: int, stats: dict, max_rate: int, limited: bool) -> str:
    """The closing line: calls shown, and every call dropped or lost, by cause."""
    causes = []
    if stats["dropped_rate_limit"]:
        causes.append(f"{stats['dropped_rate_limit']} over --max-rate {max_rate}/s")
    if stats["dropped_ringbuf_full"]:
        causes.append(f"{stats['dropped_ringbuf_full']} because the reader fell behind (ring buffer full)")
    if undecodable:
        causes.append(f"{undecodable} undecodable")
    dropped = stats["dropped_rate_limit"] + stats["dropped_ringbuf_full"] + undecodable
    line = f"gotrace: {printed} call{'' if printed == 1 else 's'} shown"
    if limited:
        line += " (-n reached)"
    line += f"; {dropped} dropped" + (f" ({', '.join(causes)})" if causes else "")
    if stats["returns_without_entry"]:
        line += f"; {stats['returns_without_entry']} returns without a recorded entry (calls begun before tracing, or evicted)"
    if stats["stale_entries"]:
        line += f"; {stats['stale_entries']} calls never returned (panics)"
    return line


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
