"""gotrace.bpf.cache: a shipped object loads with no compiler; without one, clang compiles once and the cache serves every later run; either way the counts are exact.

Live tests trace testdata/latencytruth, which counts its own calls, in fresh
processes (so that what one run imported or compiled cannot help another)
with a cache directory of their own. "Shipped" objects are made the way
setup.py makes them (gotrace.bpf.compiler) into a probes directory of the
test's own. Damaged entries and damaged objects must mean compiling again,
never an error or a wrong program; an object the kernel's verifier refuses
must mean compiling here and tracing exactly all the same.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from support import gobuild
from support.cli import run_command
from gotrace import header
from gotrace.binary.gobinary import GoBinary
from gotrace.bpf import cache as bpfcache
from gotrace.bpf import compiler
from gotrace.bpf import syscalls as bpfsys
from gotrace.bpf.image import MapSpec, ProgramImage, map_references, with_map_imms
from gotrace.errors import CapabilityError
from gotrace.trace.latency import LatencyTracer, TracedFunction
from gotrace.trace.tracer import CONFIG_STRUCT
from test_tracer_bpf import TRUTH_FUNCTIONS, finish_truth, latency_tracer, start_truth, traced_functions

needs_clang = pytest.mark.skipif(compiler.find_clang() is None, reason="clang is not installed (scripts/install)")

# Runs in a fresh Python: attach, run latencytruth, print what a user and this test check.
TRACE_ONCE = r"""
import json, subprocess, sys
from pathlib import Path
from gotrace import header
from gotrace.binary.gobinary import GoBinary
from gotrace.bpf import cache as bpfcache
from gotrace.binary.gobinary import GoBinary
from gotrace.trace.latency import LatencyTracer
from gotrace.trace.tracer import traced_functions
spec = json.loads(sys.argv[1])
bpfcache.CACHE_DIR = Path(spec["cache_dir"])
if spec["probes_dir"]:
    header.PROBES_DIR = Path(spec["probes_dir"])
with GoBinary(spec["binary"]) as gobin:
    functions = traced_functions(gobin, [gobin.probe_sites(fn) for fn in gobin.match(spec["functions"])])
    tracer = LatencyTracer(gobin, functions, pid=None)
with tracer:
    truth = subprocess.run([spec["binary"]], input=b"go\n", capture_output=True, check=True, timeout=120).stdout
    counts = tracer.read(reset=False)
print(json.dumps({
    "origin": tracer.bpf_origin,
    "hit": tracer.bpf_cache_hit,
    "compiler_peak_rss_kb": tracer.bpf_compiler_peak_rss_kb,
    "bcc_imported": "bcc" in sys.modules,
    "mode": tracer.attached_by,
    "truth": {name: f["count"] for name, f in json.loads(truth)["functions"].items()},
    "counts": {fn.name: sum(counts[fn.func_id].buckets.values()) for fn in functions},
    "unmatched": {fn.name: counts[fn.func_id].unmatched for fn in functions},
}))
"""


def trace_once(binary: Path, functions: list[TracedFunction], cache_dir: Path, probes_dir: Path | None = None,
               env: dict | None = None) -> dict:
    spec = {
        "binary": str(binary),
        "cache_dir": str(cache_dir),
        "probes_dir": str(probes_dir) if probes_dir else None,
        "functions": [fn.name for fn in functions],
    }
    proc = subprocess.run([sys.executable, "-c", TRACE_ONCE, json.dumps(spec)], cwd=gobuild.REPO_ROOT,
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def assert_exact(result: dict) -> None:
    assert result["counts"]
    for name, got in result["counts"].items():
        want = result["truth"][name]
        assert got == want, f"{name}: traced {got} calls, program made {want}"


@pytest.fixture(scope="module")
def truth_binary(tmp_path_factory) -> Path:
    """latencytruth, copied: probes on every process running this file see no one else's runs of the program."""
    copy = tmp_path_factory.mktemp("own") / "latencytruth"
    shutil.copy2(gobuild.build("latencytruth", "1.23.9", "default"), copy)
    return copy


def cache_entries(cache_dir: Path) -> list[Path]:
    return sorted(p for p in cache_dir.iterdir() if not p.name.startswith(".")) if cache_dir.is_dir() else []


def shipped_probes(tmp_path: Path) -> Path:
    """A probes directory like an installed package's: the sources and the objects built from them."""
    probes = tmp_path / "probes"
    shutil.copytree(header.CHECKOUT_PROBES_DIR, probes)
    for program in compiler.PROGRAMS:
        for arch in compiler.ARCHES:
            compiler.compile_program(program, probes, arch, probes / compiler.object_name(program, arch))
    return probes


@pytest.mark.bpf
@needs_clang
def test_shipped_object_traces_exactly_without_compiling_or_caching(tmp_path, truth_binary):
    binary = truth_binary
    functions = traced_functions(binary, TRUTH_FUNCTIONS)
    result = trace_once(binary, functions, tmp_path / "cache", shipped_probes(tmp_path))
    assert result["origin"] == "shipped"
    assert result["compiler_peak_rss_kb"] is None  # nothing was compiled
    assert result["bcc_imported"] is False
    assert cache_entries(tmp_path / "cache") == []
    assert_exact(result)
    assert result["unmatched"]["main.mayPanic"] == 200


@pytest.mark.bpf
@needs_clang
def test_without_a_shipped_object_clang_compiles_once_and_the_cache_serves_the_next_run(tmp_path, truth_binary):
    binary = truth_binary
    functions = traced_functions(binary, TRUTH_FUNCTIONS)
    probes = tmp_path / "probes"
    shutil.copytree(header.CHECKOUT_PROBES_DIR, probes)  # sources only, as in a checkout
    first = trace_once(binary, functions, tmp_path / "cache", probes)
    assert first["origin"] == "compiled" and first["hit"] is False
    assert first["compiler_peak_rss_kb"] > 10 * 1024  # clang's own peak RSS: it really ran
    assert first["bcc_imported"] is False
    assert len(cache_entries(tmp_path / "cache")) == 1
    second = trace_once(binary, functions, tmp_path / "cache", probes)
    assert second["origin"] == "cached" and second["hit"] is True
    assert second["compiler_peak_rss_kb"] is None
    assert second["mode"] == first["mode"]  # uprobe_multi on Linux 6.6+, else perf_link, both ways
    assert_exact(first)
    assert_exact(second)
    assert second["counts"] == first["counts"] == second["truth"]
    assert second["unmatched"] == first["unmatched"]
    assert len(cache_entries(tmp_path / "cache")) == 1


@pytest.mark.bpf
@needs_clang
@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped_byte", "empty"])
def test_damaged_entry_is_compiled_again(tmp_path, damage, truth_binary):
    binary = truth_binary
    functions = traced_functions(binary, ["main.work", "main.recurse"])
    assert trace_once(binary, functions, tmp_path)["origin"] == "compiled"
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
    assert result["origin"] == "compiled"
    assert_exact(result)
    assert entry.read_bytes() == good  # rewritten whole
    assert trace_once(binary, functions, tmp_path)["origin"] == "cached"


@pytest.mark.bpf
@needs_clang
def test_damaged_shipped_object_is_compiled_here(tmp_path, truth_binary):
    binary = truth_binary
    functions = traced_functions(binary, ["main.work"])
    probes = shipped_probes(tmp_path)
    obj = probes / compiler.object_name("latency", "amd64")
    obj.write_bytes(obj.read_bytes()[:200])
    result = trace_once(binary, functions, tmp_path / "cache", probes)
    assert result["origin"] == "compiled"
    assert_exact(result)


REFUSED_ENTRY = """SEC("uprobe/gt_entry")
int gt_entry(struct pt_regs *ctx)
{
    if (bpf_ktime_get_ns() == 1)
        return *(volatile int *)(long)bpf_ktime_get_ns(); /* a scalar dereferenced: every verifier refuses it */
"""


@pytest.mark.bpf
@needs_clang
def test_object_the_verifier_refuses_falls_back_to_compiling_here_and_counts_exactly(tmp_path, truth_binary):
    """Where this kernel's verifier refuses the shipped object, clang compiles the shipped sources here."""
    binary = truth_binary
    functions = traced_functions(binary, ["main.work", "main.recurse"])
    probes = shipped_probes(tmp_path)
    bad_source = tmp_path / "bad" / "latency.bpf.c"
    shutil.copytree(probes, bad_source.parent)
    text = bad_source.read_text()
    assert text.count('SEC("uprobe/gt_entry")\nint gt_entry(struct pt_regs *ctx)\n{\n') == 1
    bad_source.write_text(text.replace('SEC("uprobe/gt_entry")\nint gt_entry(struct pt_regs *ctx)\n{\n', REFUSED_ENTRY))
    compiler.compile_object(bad_source, "amd64", probes / compiler.object_name("latency", "amd64"))
    result = trace_once(binary, functions, tmp_path / "cache", probes)
    assert result["origin"] == "compiled"
    assert_exact(result)


@pytest.mark.bpf
@needs_clang
def test_refused_object_without_clang_names_the_verifier_and_clang(tmp_path):
    binary = gobuild.build("latencytruth", "1.23.9", "default")
    probes = shipped_probes(tmp_path)
    text = (probes / "latency.bpf.c").read_text()
    bad = tmp_path / "bad" / "latency.bpf.c"
    shutil.copytree(probes, bad.parent)
    bad.write_text(text.replace('SEC("uprobe/gt_entry")\nint gt_entry(struct pt_regs *ctx)\n{\n', REFUSED_ENTRY))
    compiler.compile_object(bad, "amd64", probes / compiler.object_name("latency", "amd64"))
    env = dict(os.environ, GOTRACE_CLANG="no-such-clang")
    proc = subprocess.run([sys.executable, "-c", TRACE_ONCE, json.dumps(
        {"binary": str(binary), "cache_dir": str(tmp_path / "cache"), "probes_dir": str(probes),
         "functions": ["main.work"]})], cwd=gobuild.REPO_ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "verifier refused the BPF program gt_entry" in last and "invalid mem access" in last
    assert "apt-get install clang" in last


@pytest.mark.bpf
@needs_clang
def test_unwritable_cache_directory_still_traces(tmp_path, truth_binary):
    binary = truth_binary
    functions = traced_functions(binary, ["main.work"])
    blocker = tmp_path / "not-a-directory"
    blocker.write_bytes(b"")
    result = trace_once(binary, functions, blocker / "bpf")
    assert result["origin"] == "compiled"
    assert_exact(result)


@needs_clang
def test_compile_error_is_one_line_with_clangs_first_diagnostic(tmp_path):
    probes = tmp_path / "probes"
    shutil.copytree(header.CHECKOUT_PROBES_DIR, probes)
    source = probes / "latency.bpf.c"
    source.write_text(source.read_text() + "\nint broken(void) { return undeclared_thing; }\n")
    with pytest.raises(CapabilityError) as err:
        bpfcache.find_program("latency", "amd64", probes_dir=probes, cache_dir=tmp_path / "cache")
    assert "undeclared_thing" in str(err.value) and "latency.bpf.c" in str(err.value)
    assert "\n" not in str(err.value) and err.value.exit_code == 3
    assert cache_entries(tmp_path / "cache") == []


def test_clang_killed_by_a_signal_is_one_capability_line(tmp_path, monkeypatch):
    fake = tmp_path / "clang"
    fake.write_text("#!/bin/sh\necho clang noise >&2\nkill -KILL $$\n")
    fake.chmod(0o755)
    monkeypatch.setenv("GOTRACE_CLANG", str(fake))
    probes = tmp_path / "probes"
    shutil.copytree(header.CHECKOUT_PROBES_DIR, probes)
    with pytest.raises(CapabilityError, match="killed by signal 9") as err:
        bpfcache.find_program("latency", "amd64", probes_dir=probes, cache_dir=tmp_path / "cache")
    assert "\n" not in str(err.value) and err.value.exit_code == 3


def test_no_object_and_no_clang_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("GOTRACE_CLANG", "no-such-clang")
    probes = tmp_path / "probes"
    shutil.copytree(header.CHECKOUT_PROBES_DIR, probes)
    with pytest.raises(CapabilityError) as err:
        bpfcache.find_program("latency", "amd64", probes_dir=probes, cache_dir=tmp_path / "cache")
    message = str(err.value)
    assert "no compiled BPF program latency.amd64.o for amd64" in message
    assert "install gotrace from a wheel" in message and "apt-get install clang" in message
    assert "header" not in message  # kernel headers are never what is missing


@pytest.mark.bpf
@needs_clang
def test_one_object_serves_every_goid_offset_and_number_of_functions(tmp_path, monkeypatch):
    """Nothing of the run is compiled in: other offsets or function counts load the same program."""
    monkeypatch.setattr(bpfcache, "CACHE_DIR", tmp_path)
    binary = gobuild.build("latencytruth", "1.23.9", "default")
    two = traced_functions(binary, ["main.work", "main.recurse"])
    with GoBinary(binary) as gobin:
        goid = gobin.runtime_offsets.goid
    proc = start_truth(binary)
    origins = []
    try:
        for functions, offset in [(two, goid), (two[:1], goid), (two, goid + 8), (two, goid)]:
            as_if = SimpleNamespace(path=str(binary), arch="amd64",
                                    runtime_offsets=SimpleNamespace(goid=offset, stack_hi=8),
                                    match=lambda patterns: [])  # no runtime.goexit1 probe
            with LatencyTracer(as_if, functions, pid=proc.pid) as tracer:
                origins.append(tracer.bpf_origin)
    finally:
        finish_truth(proc)
    assert origins == ["compiled", "cached", "cached", "cached"]
    assert len(cache_entries(tmp_path)) == 1


def test_key_depends_on_sources_arch_and_clang(tmp_path):
    probes = tmp_path / "probes"
    probes.mkdir()
    (probes / "latency.bpf.c").write_text("int f(void *ctx) { return 0; }\n")
    (probes / "gotrace.h").write_text("#define GT_X 1\n")
    clang = tmp_path / "clang"
    clang.write_text("#!/bin/sh\n")
    key = bpfcache.cache_key("latency", "amd64", str(clang), probes)
    assert bpfcache.cache_key("latency", "amd64", str(clang), probes) == key
    assert bpfcache.cache_key("latency", "arm64", str(clang), probes) != key
    assert bpfcache.cache_key("args16", "amd64", str(clang), probes) != key
    (probes / "gotrace.h").write_text("#define GT_X 2\n")
    changed_header = bpfcache.cache_key("latency", "amd64", str(clang), probes)
    assert changed_header != key
    clang.write_text("#!/bin/sh\n# another clang\n")
    assert bpfcache.cache_key("latency", "amd64", str(clang), probes) != changed_header


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
    patched = with_map_imms(IMAGE.programs["gt_entry"], [41, 42].__getitem__)
    assert [imm for _, imm in map_references(patched)] == [42, 41]
    assert patched[32:] == EXIT


def test_instantiate_refuses_a_size_for_a_map_the_programs_do_not_have():
    with pytest.raises(KeyError, match="gt_nothing"):
        IMAGE.instantiate(max_entries={"gt_nothing": 4})


@pytest.mark.parametrize("text,count", [("0\n", 1), ("0-1\n", 2), ("0-3,8-11\n", 8), ("0,2,4-5\n", 4)])
def test_possible_cpus_counts_ranges(tmp_path, text, count):
    path = tmp_path / "possible"
    path.write_text(text)
    assert bpfsys.possible_cpus(str(path)) == count


@pytest.mark.bpf
def test_percpu_layout_counters_and_run_sized_maps_round_trip_through_raw_map_fds(tmp_path, monkeypatch):
    """A per-CPU element holds an 8-byte slot per possible CPU (gt_cost), the probes' hits are what a raw lookup
    of the maps returns, and what user space reads from memory it shares with the kernel (gt_func_counts); the maps sized by the run have the run's size and gt_config holds
    the run's settings."""
    monkeypatch.setattr(bpfcache, "CACHE_DIR", tmp_path)
    binary = gobuild.build("latencytruth", "1.23.9", "default")
    functions = traced_functions(binary, ["main.work", "main.recurse"])
    proc = start_truth(binary)
    with latency_tracer(binary, functions, pid=proc.pid) as tracer:
        truth = finish_truth(proc)
        calls = truth["main.work"]["count"]
        syscalls = bpfsys.Syscalls()
        ncpus = bpfsys.possible_cpus()
        n = header.constant("GT_FC_N")
        entries_index = header.constant("GT_FC_ENTRIES")  # of func_id 0
        raw = syscalls.map_lookup_elem(tracer.loaded().map_fd("gt_func_counts"), struct.pack("<I", entries_index), 8)
        assert struct.unpack("<Q", raw) == (calls,)
        raw = syscalls.map_lookup_elem(tracer.loaded().map_fd("gt_cost"), struct.pack("<I", header.constant("GT_COST_HITS")),
                                       bpfsys.percpu_value_size(8, ncpus))
        recursions = truth["main.recurse"]["count"]
        assert sum(struct.unpack(f"<{ncpus}Q", raw)) == 2 * (calls + recursions)  # an entry and a return hit per call
        entry_hits, return_hits = tracer.hits()
        assert (entry_hits, return_hits) == ([calls, recursions], [calls, recursions])
        # As the kernel reports them, not as asked for.
        _, _, _, max_entries, _, _ = syscalls.map_info(tracer.loaded().map_fd("gt_func_counts"))
        assert max_entries == 2 * n
        _, _, _, max_entries, _, _ = syscalls.map_info(tracer.loaded().map_fd("gt_hit_cost"))
        assert max_entries == 2 + 2  # per function, then a return hit, then a goroutine exit (fixed probe)
        # The whole value: the kernel writes all of it, whatever size is asked for.
        config = syscalls.map_lookup_elem(tracer.loaded().map_fd("gt_config"), struct.pack("<I", 0), CONFIG_STRUCT.size)
        with GoBinary(binary) as gobin:
            offsets = gobin.runtime_offsets
        assert CONFIG_STRUCT.unpack(config)[:4] == (proc.pid, 2, offsets.goid, offsets.stack_hi)


@pytest.mark.bpf
def test_one_program_serves_every_pid_and_still_traces_only_that_pid(tmp_path, monkeypatch):
    """`-p PID` must not compile again for each new process, nor count another process's calls."""
    monkeypatch.setattr(bpfcache, "CACHE_DIR", tmp_path)
    binary = gobuild.build("latencytruth", "1.23.9", "default")
    functions = traced_functions(binary, ["main.work"])
    origins, counts = [], []
    for _ in range(2):
        traced, other = start_truth(binary), start_truth(binary)
        try:
            with latency_tracer(binary, functions, pid=traced.pid) as tracer:
                origins.append(tracer.bpf_origin)
                other_truth = finish_truth(other)
                traced_truth = finish_truth(traced)
                counts.append(sum(tracer.read(reset=False)[0].buckets.values()))
        finally:
            for proc in (traced, other):
                if proc.poll() is None:
                    proc.kill()
        assert other_truth["main.work"]["count"] > 0  # the other process really called it too
        assert counts[-1] == traced_truth["main.work"]["count"]
    assert origins[1] in ("cached", "shipped") and origins[0] in ("compiled", "shipped")
    assert len(cache_entries(tmp_path)) == (1 if origins[0] == "compiled" else 0)



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
