"""What keeps two runs of the test suite on one machine apart: private copies of traced binaries, a private BPF cache.

* A probe placed on a binary for every process (the binary form, no pid)
  fires in every process that runs that file, whoever started it. Tests
  that trace that way copy the binary first (``private_copy``: its own
  inode) and run the program from the copy, so another run's processes of
  the shared cached build (tests/support/gobuild.py) are never counted.
* gotrace caches compiled BPF programs in one directory (gotrace.bpf.cache,
  default /var/cache/gotrace/bpf). The test session points it at a fresh
  directory of its own through GOTRACE_BPF_CACHE (``use_private_bpf_cache``),
  so whether a program is compiled or loaded from the cache depends on
  this session alone; child processes inherit the variable.
* gotrace keeps the probe sites of large analyses per binary content
  (gotrace.binary.sitecache, default /var/cache/gotrace/sites): the session
  keeps its own too (``use_private_sites_cache``, GOTRACE_SITES_CACHE).
* gotrace remembers what its cost guard detached per binary content
  (gotrace.trace.guardmemory, default /var/cache/gotrace/guard): each test
  gets a directory of its own (conftest's ``private_guard_memory``,
  GOTRACE_GUARD_MEMORY), so one test's detachments never leave a function
  out of another's trace.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

BPF_CACHE_ENV = "GOTRACE_BPF_CACHE"
"""The environment variable gotrace.bpf.cache reads for its directory."""
SITES_CACHE_ENV = "GOTRACE_SITES_CACHE"
"""The environment variable gotrace.binary.sitecache reads for its directory."""
GUARD_MEMORY_ENV = "GOTRACE_GUARD_MEMORY"
"""The environment variable gotrace.trace.guardmemory reads for its directory."""

def private_copy(binary: Path, directory: Path) -> Path:
    """A copy of `binary` in `directory`, with the same file name and its own inode."""
    copy = directory / binary.name
    shutil.copy2(binary, copy)
    return copy


def use_private_sites_cache() -> Path:
    """Create an empty directory for gotrace's kept probe sites and point GOTRACE_SITES_CACHE at it; its path."""
    directory = Path(tempfile.mkdtemp(prefix="gotrace-tests-sites-cache-"))
    os.environ[SITES_CACHE_ENV] = str(directory)
    return directory


def use_private_bpf_cache() -> Path:
    """Create an empty BPF cache directory and point GOTRACE_BPF_CACHE at it; its path.

    Call it before gotrace.bpf.cache is imported: gotrace reads the variable
    once, when it starts.
    """
    directory = Path(tempfile.mkdtemp(prefix="gotrace-tests-bpf-cache-"))
    os.environ[BPF_CACHE_ENV] = str(directory)
    return directory
