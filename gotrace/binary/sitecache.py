"""Probe sites found before, kept on disk per binary content: a later run on the same binary skips disassembling.

Finding the sites of `'*'` in caddy (62,583 functions, most of it capstone's
linear sweep) takes 3-4 s of a CPU, 8-13 s on a loaded 2-CPU host. On such a
host any CPU work costs the service while it runs, whatever its priority
(README, "The analysis is kept"): what is not computed costs nothing. An SRE
traces the same service binary many times; each answer is a pure function of
the binary's bytes and of gotrace's analysis code, so it is kept:

* key: sha256 of the binary's bytes, with the architecture, gotrace's
  version, capstone's version and a hash of the analysis modules' own
  sources (gotrace/binary/*.py): another binary, a changed binary or a
  changed analysis never reads another's answer;
* the entry is checked before it is used: its own checksum, its key, and
  that it and its directory belong to this user and no one else may write
  them (a planted entry would put probes in the middle of instructions);
  anything else is a miss, never an error;
* written atomically (a temporary file, then rename); a directory that
  cannot be written only means finding the sites again next time; the
  KEEP_ENTRIES most recently used entries are kept, older ones removed.

Only analyses of MIN_FUNCTIONS functions or more use it: hashing the binary
(about 0.1 s for 40 MB) costs more than finding the sites of a few.

Directory: $GOTRACE_SITES_CACHE, else $GOTRACE_CACHE/sites, else
/var/cache/gotrace/sites. Addresses in an entry are ELF vaddrs of the binary
(sites as offsets from their function's entry vaddr).
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

from gotrace import __version__, keptfile
from gotrace.binary.sites import ProbeSites

FORMAT = 1
MIN_FUNCTIONS = 2_000
KEEP_ENTRIES = 16
DEFAULT_DIR = Path("/var/cache/gotrace/sites")


def cache_dir() -> Path:
    return keptfile.cache_dir("GOTRACE_SITES_CACHE", "sites", DEFAULT_DIR)


@functools.lru_cache(maxsize=1)
def analysis_version() -> str:
    """What the answer depends on besides the binary: gotrace's and capstone's versions, the analysis sources."""
    import capstone

    digest = hashlib.sha256(f"{FORMAT} {__version__} {capstone.__version__}".encode())
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()


def content_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, in hex."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def binary_key(content: str, arch: str) -> str:
    """The cache key of a binary: its bytes' sha256 (content_sha256), its architecture, the analysis version."""
    return hashlib.sha256(f"{content} {arch} {analysis_version()}".encode()).hexdigest()


class SiteCache:
    """The kept probe sites of one binary (entry vaddr -> ProbeSites), loaded at open, saved when changed."""

    def __init__(self, key: str, directory: Path, sites: dict[int, ProbeSites]):
        self.key, self.directory = key, directory
        self._sites = sites
        self._changed = False

    @classmethod
    def open(cls, content: str, arch: str, directory: Path | None = None) -> "SiteCache":
        """The kept sites of the binary whose bytes' sha256 is `content` (content_sha256)."""
        directory = directory or cache_dir()
        key = binary_key(content, arch)
        return cls(key, directory, _load(directory / f"{key}.json", key))

    def __len__(self) -> int:
        return len(self._sites)

    def get(self, entry_vaddr: int) -> ProbeSites | None:
        return self._sites.get(entry_vaddr)

    def put(self, entry_vaddr: int, sites: ProbeSites) -> None:
        self._sites[entry_vaddr] = sites
        self._changed = True

    def save(self) -> None:
        """Write the entry when something was added (and drop the oldest entries beyond KEEP_ENTRIES); a
        directory that cannot be written is left alone."""
        path = self.directory / f"{self.key}.json"
        if not self._changed:
            keptfile.touch(path)  # recently used
            return
        if keptfile.save(path, _encode(self.key, self._sites), ".sites-"):
            self._changed = False
            keptfile.prune(self.directory, KEEP_ENTRIES)


def _encode(key: str, sites: dict[int, ProbeSites]) -> bytes:
    strings: dict[str, int] = {}

    def index(text: str | None) -> int:
        return -1 if text is None else strings.setdefault(text, len(strings))

    rows = []
    for entry, s in sorted(sites.items()):
        rows.append([entry, None if s.entry_vaddr is None else s.entry_vaddr - entry,
                     [vaddr - entry for vaddr in s.return_vaddrs], index(s.reason),
                     [[vaddr - entry, index(why)] for vaddr, why in s.refused]])
    return keptfile.encode(FORMAT, {"key": key, "strings": list(strings), "functions": rows})


def _load(path: Path, key: str) -> dict[int, ProbeSites]:
    """The sites kept under `key`; empty when there are none, or when the entry is damaged, of another format or
    key, or not private (see the module's docstring)."""
    doc = keptfile.load(path, FORMAT)
    if doc is None or doc.get("key") != key:
        return {}
    try:
        strings = doc["strings"]

        def text(i: int) -> str | None:
            return None if i < 0 else strings[i]

        return {entry: ProbeSites(None if at is None else entry + at, tuple(entry + r for r in returns), text(reason),
                                  tuple((entry + off, text(why)) for off, why in refused))
                for entry, at, returns, reason, refused in doc["functions"]}
    except (ValueError, KeyError, TypeError, IndexError):
        return {}
