"""What the tests share and nothing else provides: how to build, run and isolate what they trace.

* ``support.gobuild``: builds the Go programs of testdata/ over the toolchain
  x mode x arch matrix, cached under /var/cache/gotrace/builds (also a
  stdlib-only script for scripts/toolchains).
* ``support.dwarf_programs``: small Go programs built with DWARF.
* ``support.cli``: the gotrace CLI run in-process or as `python -m gotrace`.
* ``support.processes``: child processes watched while they run (``spawn``).
* ``support.caddy``: the third-party caddy binary, and a caddy server.
* ``support.hermetic``: private copies of traced binaries and a private BPF
  cache, so that two runs of the suite on one machine never see each other.

tests/conftest.py turns them into fixtures. Test modules import them as
``from support import gobuild`` (tests/ is on sys.path under pytest).
"""
