"""gotrace.bpf.cache: the tracer's process never imports bcc (a miss compiles in a child process, a hit loads with bpf() alone), and counts exactly either way.

Live tests trace testdata/latencytruth, which counts its own calls, in fresh
processes (a process that once imported bcc cannot show that it does not)
with a cache directory of their own; those that trace every process of the
binary run a private copy of it. Damaged entries and changed -D constants
must mean compiling again, never an error or a wrong program.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from support import gobuild
from support.cli import run_command
from gotrace.bpf import cache as bpfcache
from gotrace.bpf import syscalls as bpfsys
from gotrace.bpf import kernel as kernelenv
from gotrace import header as probes_header
from gotrace.bpf.cache import MapSpec, ProgramImage
from gotrace.errors import CapabilityError, UsageError
from gotrace import header
from gotrace.trace.latency import LatencyTracer, TracedFunction
from test_tracer_bpf import TRUTH_FUNCTIONS, finish_truth, goid_offset, latency_tracer, start_truth, traced_functions

SOURCE_PATH = header.PROBES_DIR / "latency.bpf.c"

# Runs in a fresh Python: attach, run latencytruth, print what a user and this test check.
TRACE_ONCE = r"""
import json, subprocess, sys
from gotrace.bpf import cache as bpfcache
from gotrace.binary.gobinary import GoBinary
from gotrace.trace.latency import LatencyTracer
from gotrace.trace.tracer import traced_functions
spec = json.loads(sys.argv[1])
bpfcache.CACHE_DIR = bpfcache.Path(spec["cache_dir"])
with GoBinary(spec["binary"]) as gobin:
    functions = traced_functions(gobin, [gobin.probe_sites(fn) for fn in gobin.match(spec["functions"])])
    tracer = LatencyTracer(gobin, functions, pid=None)
with tracer:
    bcc_after_attach = "bcc" in sys.modules
    truth = subprocess.run([spec["binary"]], input=b"go\n", capture_output=True, check=True, timeout=120).stdout
    counts = tracer.read(reset=False)
print(json.dumps({
    "hit": tracer.bpf_cache_hit,
    "compiler_peak_rss_kb": tracer.bpf_compiler_peak_rss_kb,
    "bcc_imported": bcc_after_attach or "bcc" in sys.modules,
    "mode": tracer.attached_by,
    "truth": {name: f["count"] for name, f in json.loads(truth)["functions"].items()},
    "counts": {fn.name: sum(counts[fn.func_id].buckets.values()) for fn in functions},
    "unmatched": {fn.name: counts[fn.func_id].unmatched for fn in functions},
}))
"""


def trace_once(binary: Path, functions: list[TracedFunction], cache_dir: Path) -> dict:
    spec = {
        "binary": str(binary),
        "cache_dir": str(cache_dir),
        "functions": [fn.name for fn in functions],
    }
    proc = run_command([sys.executable, "-c", TRACE_ONCE, json.dumps(spec)], timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def assert_exact(result: dict) -> None:
    assert result["counts"]
    for name, got in result["counts"].items():
        want = result["truth"][name]
        assert got == want, f"{name}: traced {got} calls, program made {want}"


def cache_entries(cache_dir: Path) -> list[Path]:
    return sorted(p for p in cache_dir.iterdir() if not p.name.startswith("."))


@pytest.mark.bpf
def test_neither_a_miss_nor_a_hit_imports_bcc_in_the_tracer_and_both_count_the_same(tmp_path, private_binary):
    binary = private_binary(gobuild.build("latencytruth", "1.23.9", "default"))
    functions = traced_functions(binary, TRUTH_FUNCTIONS)
    first = trace_once(binary, functions, tmp_path)
    assert first["hit"] is False
    assert first["bcc_imported"] is False  # bcc and clang ran in the compiling child, which has exited
    assert first["compiler_peak_rss_kb"] > 50 * 1024  # the child's own VmHWM: it really imported bcc and compiled
    assert len(cache_entries(tmp_path)) == 1
    second = trace_once(binary, functions, tmp_path)
    assert second["hit"] is True
    assert second["bcc_imported"] is False
    assert second["compiler_peak_rss_kb"] is None
    assert second["mode"] == first["mode"]  # uprobe_multi on Linux 6.6+, else perf_link, both ways
    assert_exact(first)
    assert_exact(second)
    assert second["counts"] == first["counts"] == second["truth"]
    assert second["unmatched"] == first["unmatched"]
    assert second["unmatched"]["main.mayPanic"] == 200
    assert len(cache_entries(tmp_path)) == 1


@pytest.mark.bpf
@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped_byte", "empty"])
def test_damaged_entry_is_compiled_again(tmp_path, private_binary, damage):
    binary = private_binary(gobuild.build("latencytruth", "1.23.9", "default"))
    functions = traced_functions(binary, ["main.work", "main.recurse"])
    assert trace_once(binary, functions, tmp_path)["hit"] is False
    (entry,) = cache_entries(tmp_path)
    good = entry.read_bytes()
    if damage == "garbage":
        entry.write_bytes(b"\x7fELF not a cache entry")
    elif damage == "truncated":
        entry.write_bytes(good[: len(good) // 2])
    elif damage == "flipped_byte":  # still valid JSON: only the checksum can tell
        body_at = good.index(b"gt_entry") + 20
        while not chr(good[body_at]).isalnum():
            body_at += 1
        entry.write_bytes(good[:body_at] + bytes([good[body_at] ^ 0x01]) + good[body_at + 1:])
    else:
        entry.write_bytes(b"")
    result = trace_once(binary, functions, tmp_path)
    assert result["hit"] is False
    assert_exact(result)
    assert entry.read_bytes() == good  # rewritten whole
    assert trace_once(binary, functions, tmp_path)["hit"] is True


@pytest.mark.bpf
def test_unwritable_cache_directory_still_traces(tmp_path, private_binary):
    binary = private_binary(gobuild.build("latencytruth", "1.23.9", "default"))
    functions = traced_functions(binary, ["main.work"])
    blocker = tmp_path / "not-a-directory"
    blocker.write_bytes(b"")
    result = trace_once(binary, functions, blocker / "bpf")
    assert result["hit"] is False
    assert result["bcc_imported"] is False  # the child handed the program back on its stdout
    assert_exact(result)


@pytest.mark.bpf
def test_compile_error_in_the_child_is_one_line_with_the_callers_headers(tmp_path, monkeypatch, capfd):
    """The child sees the caller's BCC_KERNEL_SOURCE; the compiler's pages of errors become one CapabilityError line.

    What the first diagnostic says depends on bcc and the machine (clang's missing kconfig.h, or bcc's
    `modprobe: FATAL: Module kheaders not found` on a fresh one): assert what gotrace promises instead,
    one line, exit 3, and what to run."""
    broken = tmp_path / "broken-headers"
    (broken / "include").mkdir(parents=True)
    monkeypatch.setenv("BCC_KERNEL_SOURCE", str(broken))
    headers_dir = kernelenv.use_kernel_headers()
    with pytest.raises(CapabilityError) as err:
        bpfcache.compiled(SOURCE_PATH, {"GT_CFG_ARCH": 1}, [b"gt_entry"], headers_dir, tmp_path / "cache")
    assert "run scripts/kernel-headers" in str(err.value)
    assert err.value.exit_code == 3
    assert "\n" not in str(err.value)
    assert capfd.readouterr() == ("", "")  # nothing of the child's reached the terminal
    assert not (tmp_path / "cache").exists() or cache_entries(tmp_path / "cache") == []


def test_child_killed_by_a_signal_is_one_capability_line(tmp_path, monkeypatch):
    monkeypatch.setattr(bpfcache, "_compiler_command", lambda spec: ["sh", "-c", "echo clang noise >&2; kill -KILL $$"])
    with pytest.raises(CapabilityError, match="killed by SIGKILL") as err:
        bpfcache.compile_in_child(SOURCE_PATH, {}, [b"gt_entry"], "k", tmp_path)
    assert "\n" not in str(err.value) and err.value.exit_code == 3


def test_child_exiting_without_an_answer_says_so_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(bpfcache, "_compiler_command",
                        lambda spec: ["sh", "-c", "echo line one >&2; echo 'ImportError: no libbcc' >&2; exit 1"])
    with pytest.raises(CapabilityError, match=r"exit status 1 \(ImportError: no libbcc\)") as err:
        bpfcache.compile_in_child(SOURCE_PATH, {}, [b"gt_entry"], "k", tmp_path)
    assert "\n" not in str(err.value)


def test_childs_usage_error_arrives_as_a_usage_error(tmp_path, monkeypatch):
    answer = json.dumps({"error": "UsageError", "message": "bad constant: fix it", "peak_rss_kb": 1})
    monkeypatch.setattr(bpfcache, "_compiler_command", lambda spec: ["printf", "%s", answer])
    with pytest.raises(UsageError, match="^bad constant: fix it$"):
        bpfcache.compile_in_child(SOURCE_PATH, {}, [b"gt_entry"], "k", tmp_path)


@pytest.mark.bpf
def test_other_constants_are_another_entry(tmp_path, monkeypatch):
    """A program compiled for one goid offset or number of functions is never loaded for another."""
    monkeypatch.setattr(bpfcache, "CACHE_DIR", tmp_path)
    binary = gobuild.build("latencytruth", "1.23.9", "default")
    two = traced_functions(binary, ["main.work", "main.recurse"])
    goid = goid_offset(binary)
    proc = start_truth(binary)
    variants = [(two, goid), (two[:1], goid), (two, goid + 8), (two, goid)]
    hits = []
    try:
        for functions, offset in variants:
            as_if = SimpleNamespace(path=str(binary), arch="amd64",
                                    runtime_offsets=SimpleNamespace(goid=offset, stack_hi=8))
            with LatencyTracer(as_if, functions, pid=proc.pid) as tracer:
                hits.append(tracer.bpf_cache_hit)
    finally:
        finish_truth(proc)
    assert hits == [False, False, False, True]
    assert len(cache_entries(tmp_path)) == 3


SHOW_CACHE_DIR = "from gotrace.bpf import cache; print(cache.CACHE_DIR)"


def test_cache_directory_is_GOTRACE_BPF_CACHE_when_set(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "GOTRACE_BPF_CACHE"}
    shown = []
    for value in (None, "", str(tmp_path / "mine")):
        if value is not None:
            env["GOTRACE_BPF_CACHE"] = value
        proc = run_command([sys.executable, "-c", SHOW_CACHE_DIR], env=env)
        assert proc.returncode == 0, proc.stderr
        shown.append(proc.stdout.strip())
    assert shown == ["/var/cache/gotrace/bpf", "/var/cache/gotrace/bpf", str(tmp_path / "mine")]


def test_this_session_has_a_bpf_cache_of_its_own():
    """tests/conftest.py points GOTRACE_BPF_CACHE at a directory of this session before gotrace is imported,
    so another run of the suite on this machine cannot decide what compiles and what loads from the cache."""
    assert bpfcache.CACHE_DIR == Path(os.environ["GOTRACE_BPF_CACHE"])
    assert bpfcache.CACHE_DIR != bpfcache.DEFAULT_CACHE_DIR
    assert bpfcache.CACHE_DIR.name.startswith("gotrace-tests-bpf-cache-")


def test_key_depends_on_every_constant_not_their_order(tmp_path):
    source = tmp_path / "p.bpf.c"
    source.write_text("int f(void *ctx) { return 0; }\n")
    headers = tmp_path / "headers"
    config = {"GT_CFG_GOID_OFFSET": 152, "GT_CFG_NFUNCS": 3}
    key = bpfcache.cache_key([source], config, headers)
    assert bpfcache.cache_key([source], dict(reversed(config.items())), headers) == key
    assert bpfcache.cache_key([source], {**config, "GT_CFG_GOID_OFFSET": 160}, headers) != key
    assert bpfcache.cache_key([source], {**config, "GT_CFG_NFUNCS": 4}, headers) != key
    assert bpfcache.cache_key([source], config, tmp_path / "other-headers") != key
    source.write_text("int f(void *ctx) { return 1; }\n")
    assert bpfcache.cache_key([source], config, headers) != key


# -- the entry format, without a kernel ------------------------------------------------


def ld_map(dst: int, imm: int) -> bytes:
    """ld_imm64 dst, map reference imm (two instruction slots)."""
    return struct.pack("<BBhi", 0x18, (1 << 4) | dst, 0, imm) + struct.pack("<BBhi", 0, 0, 0, 0)


EXIT = struct.pack("<BBhi", 0x95, 0, 0, 0)
IMAGE = ProgramImage("GPL", (MapSpec("gt_gen", 2, 4, 4, 1, 0), MapSpec("gt_hist", 5, 8, 8, 64, 1)),
                     {"gt_entry": ld_map(1, 1) + ld_map(2, 0) + EXIT})


def test_image_round_trips_and_stores_atomically(tmp_path):
    assert bpfcache.store("k", IMAGE, tmp_path)
    assert bpfcache.load("k", tmp_path) == IMAGE
    assert [p.name for p in tmp_path.iterdir()] == ["k"]  # no temporary file left
    assert bpfcache.load("missing", tmp_path) is None


def test_entry_referencing_a_map_it_does_not_describe_is_a_miss(tmp_path):
    bad = ProgramImage("GPL", IMAGE.maps[:1], IMAGE.programs)  # references map 1 of 1
    bpfcache.store("k", bad, tmp_path)
    assert bpfcache.load("k", tmp_path) is None


def test_map_fds_are_patched_into_map_references_only():
    patched = bpfcache._with_map_imms(IMAGE.programs["gt_entry"], [41, 42].__getitem__)
    assert [imm for _, imm in bpfcache._map_references(patched)] == [42, 41]
    assert patched[32:] == EXIT


@pytest.mark.parametrize("text,count", [("0\n", 1), ("0-1\n", 2), ("0-3,8-11\n", 8), ("0,2,4-5\n", 4)])
def test_possible_cpus_counts_ranges(tmp_path, text, count):
    path = tmp_path / "possible"
    path.write_text(text)
    assert bpfsys.possible_cpus(str(path)) == count


@pytest.mark.bpf
def test_percpu_layout_and_generation_round_trip_through_raw_map_fds(tmp_path, monkeypatch):
    """Reset writes the generation the BPF side reads; a per-CPU element holds an 8-byte slot per possible CPU."""
    monkeypatch.setattr(bpfcache, "CACHE_DIR", tmp_path)
    binary = gobuild.build("latencytruth", "1.23.9", "default")
    functions = traced_functions(binary, ["main.work"])
    proc = start_truth(binary)
    with latency_tracer(binary, functions, pid=proc.pid) as tracer:
        truth = finish_truth(proc)
        syscalls = bpfsys.Syscalls()
        tracer.read(reset=True)
        tracer.read(reset=True)
        gen = syscalls.map_lookup_elem(tracer.loaded().map_fd("gt_gen"), struct.pack("<I", 0), 4)
        assert struct.unpack("<I", gen) == (2,)
        ncpus = bpfsys.possible_cpus()
        entries_index = probes_header.constant("GT_FC_ENTRIES")  # of func_id 0
        raw = syscalls.map_lookup_elem(tracer.loaded().map_fd("gt_func_counts"), struct.pack("<I", entries_index),
                                       bpfsys.percpu_value_size(8, ncpus))
        per_cpu = struct.unpack(f"<{ncpus}Q", raw)
        assert sum(per_cpu) == truth["main.work"]["count"]


@pytest.mark.bpf
def test_one_cached_program_serves_every_pid_and_still_traces_only_that_pid(tmp_path, monkeypatch):
    """`-p PID` must not compile again for each new process, nor count another process's calls."""
    monkeypatch.setattr(bpfcache, "CACHE_DIR", tmp_path)
    binary = gobuild.build("latencytruth", "1.23.9", "default")
    functions = traced_functions(binary, ["main.work"])
    hits, counts = [], []
    for _ in range(2):
        traced, other = start_truth(binary), start_truth(binary)
        try:
            with latency_tracer(binary, functions, pid=traced.pid) as tracer:
                hits.append(tracer.bpf_cache_hit)
                other_truth = finish_truth(other)
                traced_truth = finish_truth(traced)
                counts.append(sum(tracer.read(reset=False)[0].buckets.values()))
        finally:
            for proc in (traced, other):
                if proc.poll() is None:
                    proc.kill()
        assert other_truth["main.work"]["count"] > 0  # the other process really called it too
        assert counts[-1] == traced_truth["main.work"]["count"]
    assert hits == [False, True]
    assert len(cache_entries(tmp_path)) == 1
