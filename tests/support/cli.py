"""The one way tests run the gotrace CLI: in this process, or as `python -m gotrace` in a child process.

* ``run_gotrace(*argv)`` runs the CLI inside the test process (fast; what
  most output tests use) and returns (exit status, stdout, stderr).
* ``gotrace_argv(*argv)`` is the command line of `python -m gotrace ARGV...`
  with the test's Python, for a child process: what a shell user runs.
  Wrappers (setpriv, unshare, a seccomp launcher) go in front of it.
* ``run_command(argv)`` runs any such command line from the repository root
  and returns its CompletedProcess (text, stdout and stderr captured);
  ``run_gotrace_process(*argv)`` is ``run_command(gotrace_argv(*argv))``.

Processes that must be watched while they run (wait for a line, send a
signal) are started with the ``spawn`` fixture (support.processes).
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from collections.abc import Mapping

from gotrace.cli import main as gotrace_main
from support.gobuild import REPO_ROOT

DEFAULT_TIMEOUT_S = 300


def run_gotrace(*argv: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `gotrace ARGV...`, run in this process."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            gotrace_main(list(argv))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return code, out.getvalue(), err.getvalue()


# The commands under the cost guard: tests run them with the guard only estimating (--max-overhead 0) unless
# they set a budget, since they check exact counts, which need every function traced to the end
# (tests/test_guard.py checks the guard itself).
GUARDED_COMMANDS = ("latency", "count")


def gotrace_argv(*argv: object) -> list[str]:
    """The command line of `python -m gotrace ARGV...` (each argument turned into a string); a guarded command
    gets --max-overhead 0 when ARGV sets no budget."""
    args = list(map(str, argv))
    if args and args[0] in GUARDED_COMMANDS and "--max-overhead" not in args:
        args += ["--max-overhead", "0"]
    return [sys.executable, "-m", "gotrace", *args]


def run_command(argv: list[str], *, env: Mapping[str, str] | None = None, timeout: float = DEFAULT_TIMEOUT_S,
                **kwargs) -> subprocess.CompletedProcess:
    """Run `argv` from the repository root to its end; stdout and stderr captured as text."""
    return subprocess.run(argv, cwd=REPO_ROOT, env=None if env is None else dict(env), capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def run_gotrace_process(*argv: object, env: Mapping[str, str] | None = None, timeout: float = DEFAULT_TIMEOUT_S,
                        **kwargs) -> subprocess.CompletedProcess:
    """`python -m gotrace ARGV...` in a child process, run to its end."""
    return run_command(gotrace_argv(*argv), env=env, timeout=timeout, **kwargs)
