"""The probe sites kept per binary content (gotrace.binary.sitecache).

A later analysis of the same bytes reads the kept sites instead of
disassembling, and gets the same answer as a fresh analysis; a different
binary, a damaged entry, an entry others may write, or a directory that
cannot be written is a miss or no cache at all, never a wrong answer or an
error. Real Go binaries, real files; the analysis is the real one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from gotrace.binary import gobinary, sitecache
from gotrace.binary.gobinary import GoBinary
from support import gobuild

VERSION = "1.23.9"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    directory = tmp_path / "sites"
    monkeypatch.setenv("GOTRACE_SITES_CACHE", str(directory))
    return directory


def binary(tmp_path: Path, mode: str = "default") -> Path:
    path = tmp_path / f"service-{mode}"
    shutil.copy2(gobuild.build("service", VERSION, mode, gobuild.NATIVE_ARCH), path)
    return path


def fresh_sites(path: Path) -> list:
    """Every function's sites, found without the cache."""
    with GoBinary.open(path) as gobin:
        return [gobin.probe_sites(fn) for fn in gobin.all_functions()]


def sites_of(path: Path) -> list:
    with GoBinary.open(path) as gobin:
        return gobin.probe_sites_of(gobin.all_functions())


def analysed_again(path: Path, monkeypatch) -> bool:
    """Whether analysing `path` again finds some function's sites anew instead of reading them all from the
    cache (finding them fails inside this call)."""
    class FoundAgain(Exception):
        pass

    def fail(*args, **kwargs):
        raise FoundAgain
    with monkeypatch.context() as m:
        m.setattr(gobinary, "find_probe_sites", fail)
        try:
            sites_of(path)
        except FoundAgain:
            return True
    return False


def entries(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.json"))


@pytest.mark.parametrize("mode", ["default", "stripped", "pie"])
def test_a_second_analysis_reads_the_kept_sites_and_gets_the_same_answer(tmp_path, cache, monkeypatch, mode):
    path = binary(tmp_path, mode)
    expected = fresh_sites(path)
    assert len(expected) >= sitecache.MIN_FUNCTIONS
    assert not cache.exists()
    assert sites_of(path) == expected  # found, and kept
    (entry,) = entries(cache)
    assert entry.stat().st_mode & 0o077 == 0 and cache.stat().st_mode & 0o077 == 0
    assert not analysed_again(path, monkeypatch)
    assert sites_of(path) == expected  # read back, every function, exactly


def test_a_changed_binary_is_analysed_again(tmp_path, cache, monkeypatch):
    path = binary(tmp_path)
    sites_of(path)
    with open(path, "ab") as f:
        f.write(b"\0")  # other bytes, other key; the ELF reads the same
    assert analysed_again(path, monkeypatch)


def test_few_functions_are_analysed_without_the_cache(tmp_path, cache):
    path = binary(tmp_path)
    with GoBinary.open(path) as gobin:
        few = gobin.match(["main.*"])
        assert 0 < len(few) < sitecache.MIN_FUNCTIONS
        assert gobin.probe_sites_of(few) == [gobin.probe_sites(fn) for fn in few]
    assert not cache.exists()


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "other key", "not json", "empty"])
def test_a_damaged_entry_is_a_miss_and_is_replaced(tmp_path, cache, damage):
    path = binary(tmp_path)
    expected = sites_of(path)
    (entry,) = entries(cache)
    body = entry.read_bytes()
    head, payload = body.split(b"\n", 1)
    if damage == "flip a byte":  # a digit of a site offset: still JSON, but no longer what was checksummed
        at = payload.index(b"]", len(payload) // 2) - 1
        assert payload[at:at + 1].isdigit()
        body = head + b"\n" + payload[:at] + bytes([payload[at] ^ 1]) + payload[at + 1:]
    elif damage == "truncate":
        body = body[: len(body) // 2]
    elif damage == "other key":  # a consistent entry, filed under the wrong binary
        doc = json.loads(payload)
        doc["key"] = "0" * 64
        payload = json.dumps(doc, separators=(",", ":")).encode()
        body = json.dumps({"format": sitecache.FORMAT, "sha256": hashlib.sha256(payload).hexdigest()}).encode() \
            + b"\n" + payload
    elif damage == "not json":
        body = b"\x7fELF" + body[4:]
    else:
        body = b""
    entry.write_bytes(body)
    assert sites_of(path) == expected
    assert entry.read_bytes() != body  # found again, and kept again


def test_an_entry_others_may_write_is_not_read(tmp_path, cache, monkeypatch):
    path = binary(tmp_path)
    expected = sites_of(path)
    (entry,) = entries(cache)
    assert not analysed_again(path, monkeypatch)
    entry.chmod(0o666)
    assert analysed_again(path, monkeypatch)
    entry.chmod(0o600)
    cache.chmod(0o777)  # a directory others may write: its entries could be anyone's
    assert analysed_again(path, monkeypatch)
    assert sites_of(path) == expected


def test_a_directory_that_cannot_be_written_only_means_analysing_again(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    monkeypatch.setenv("GOTRACE_SITES_CACHE", str(blocked / "sites"))
    path = binary(tmp_path)
    assert sites_of(path) == fresh_sites(path)
    assert blocked.read_text() == "not a directory"


def test_only_the_most_recently_used_entries_are_kept(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(sitecache, "KEEP_ENTRIES", 2)
    paths = []
    for i in range(3):  # three different binaries
        (tmp_path / str(i)).mkdir()
        paths.append(binary(tmp_path / str(i)))
        with open(paths[-1], "ab") as f:
            f.write(bytes([i]))
    sites_of(paths[0])
    sites_of(paths[1])
    first = entries(cache)
    assert len(first) == 2
    oldest = min(first, key=lambda p: p.stat().st_mtime)
    os.utime(oldest, (1, 1))
    sites_of(paths[2])
    kept = entries(cache)
    assert len(kept) == 2 and oldest not in kept
