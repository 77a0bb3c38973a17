"""Files gotrace keeps between runs (the probe sites of a binary, the cost guard's memory): checked, written atomically, pruned.

What is read back from such a file changes what gotrace does to a traced
process (where its probes go, which functions it leaves out), so a file is
used only when it and its directory belong to this user and no one else may
write them, and when its own sha256 checksum matches; anything else reads as
nothing kept, never as an error. A file is written to a temporary name and
renamed, so a reader sees the old file or the new one; a directory that
cannot be written is left alone (nothing is kept). Each file is one JSON
header line ({"format", "sha256"}) and a JSON payload.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path


def cache_dir(explicit_env: str, subdir: str, default: Path) -> Path:
    """$<explicit_env>, else $GOTRACE_CACHE/<subdir>, else `default`."""
    explicit = os.environ.get(explicit_env)
    if explicit:
        return Path(explicit)
    base = os.environ.get("GOTRACE_CACHE")
    return Path(base) / subdir if base else default


def private(st: os.stat_result) -> bool:
    """Owned by this user and writable by no one else."""
    return st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def encode(file_format: int, payload: dict) -> bytes:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return json.dumps({"format": file_format, "sha256": hashlib.sha256(body).hexdigest()}).encode() + b"\n" + body


def load(path: Path, file_format: int) -> dict | None:
    """The payload kept at `path`; None when there is none, or it is damaged, of another format or not private."""
    try:
        with open(path, "rb") as f:
            if not (private(os.fstat(f.fileno())) and private(path.parent.stat())):
                return None
            head, body = f.read().split(b"\n", 1)
        meta = json.loads(head)
        if meta.get("format") != file_format or hashlib.sha256(body).hexdigest() != meta.get("sha256"):
            return None
        payload = json.loads(body)
        return payload if isinstance(payload, dict) else None
    except (OSError, ValueError, AttributeError):
        return None


def save(path: Path, body: bytes, prefix: str) -> bool:
    """Write `body` (encode()'s) to `path` atomically; False when the directory cannot be written or is not
    private (nothing is kept then)."""
    directory = path.parent
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not private(directory.stat()):
            return False
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix)
    except OSError:
        return False
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        os.replace(tmp, path)
        return True
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            return False
        raise


def touch(path: Path) -> None:
    """Mark a kept file as recently used (prune() keeps the most recent)."""
    with contextlib.suppress(OSError):
        os.utime(path)


def prune(directory: Path, keep: int) -> None:
    """Remove all but the `keep` most recently used *.json files of `directory`."""
    with contextlib.suppress(OSError):
        entries = sorted(directory.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[keep:]:
            with contextlib.suppress(OSError):
                old.unlink()
