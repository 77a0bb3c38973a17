"""Runs the gotrace CLI inside the test process, as a user's shell would see it."""

from __future__ import annotations

import contextlib
import io

from gotrace.cli import main as gotrace_main


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
