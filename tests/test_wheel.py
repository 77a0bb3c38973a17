"""The package as a production host gets it: `pip wheel .`, installed into a fresh venv without system site packages, traces with no compiler, no kernel headers, no bcc and no cached BPF.

The wheel is built from a copy of the checkout (so the test neither reads nor
writes the checkout's build/); an sdist made from the same copy must build a
wheel with the same files. The wheel is installed with pip into a venv of
its own (pyvenv.cfg: include-system-site-packages = false), its dependencies
from the package index. Then, in a private mount namespace, empty tmpfs
mounts hide /usr/src, /lib/modules, gotrace's kernel-header tree, bcc's
Python module and the BPF cache directory, /dev/null is bind-mounted over
every clang binary, and PATH holds only the venv's bin/. There the
installed `gotrace` traces testdata/latencytruth with `latency` (each
function's count equals the program's own, panicked calls are unmatched)
and testdata/argstruth with `args` (every value equals the program's own
log of it, as tests/test_args_truth.py scores it), and `gotrace doctor`
exits 0 naming the shipped objects.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from support import gobuild
from gotrace.bpf import compiler
from test_args_truth import DEPTH, MAX_ELEMS, PATTERNS, STR_LEN, score
from test_tracer_bpf import TRUTH_FUNCTIONS

pytestmark = pytest.mark.bpf

REPO = gobuild.REPO_ROOT
PACKAGE_FILES = ("gotrace", "probes", "setup.py", "setup.cfg", "pyproject.toml", "MANIFEST.in", "README.md")
HIDDEN_DIRS = ("/usr/src", "/lib/modules", "/var/cache/gotrace/kernel-headers", "/usr/lib/python3/dist-packages/bcc",
               "/var/cache/gotrace/bpf")
OBJECTS = {f"gotrace/probes/{compiler.object_name(p, a)}" for p in compiler.PROGRAMS for a in compiler.ARCHES}


def run(argv: list, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=kw.pop("timeout", 600), **kw)
    assert proc.returncode == 0, f"{argv}:\n{proc.stdout}\n{proc.stderr}"
    return proc


# A venv with the wheel installed, made beforehand (tests/test_kernel_matrix.py makes one on the host for
# its VMs, which have no network): the tests that use only the venv take it instead of building one.
PREBUILT_VENV_ENV = "GOTRACE_TEST_WHEEL_VENV"


def build_wheel_venv(work: Path) -> dict:
    """Build the wheel and the sdist from a copy of the checkout under work, and install the wheel into work/venv."""
    source = work / "src"
    source.mkdir()
    for name in PACKAGE_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.o"))
        else:
            shutil.copy2(src, source / name)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check", "-w",
         work / "dist", "."], cwd=source)
    (wheel,) = (work / "dist").glob("gotrace-*.whl")
    run([sys.executable, "setup.py", "-q", "sdist", "-d", work / "sdist"], cwd=source)
    (sdist,) = (work / "sdist").glob("gotrace-*.tar.gz")
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check", "-w",
         work / "from-sdist", sdist], cwd=work)
    (wheel_from_sdist,) = (work / "from-sdist").glob("gotrace-*.whl")
    venv = work / "venv"
    run([sys.executable, "-m", "venv", venv])
    run([venv / "bin" / "pip", "install", "-q", "--disable-pip-version-check", wheel], cwd=work)
    return {"wheel": wheel, "wheel_from_sdist": wheel_from_sdist, "sdist": sdist, "venv": venv, "work": work}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    prebuilt = os.environ.get(PREBUILT_VENV_ENV)
    if prebuilt:
        venv = Path(prebuilt)
        if not (venv / "bin" / "gotrace").exists():
            pytest.fail(f"{PREBUILT_VENV_ENV}={prebuilt} has no bin/gotrace")
        return {"venv": venv, "work": venv.parent}
    if compiler.find_clang() is None:
        pytest.fail("building the wheel needs clang (scripts/install installs it)")
    return build_wheel_venv(tmp_path_factory.mktemp("wheel"))


def wheel_files(path: Path) -> set[str]:
    with zipfile.ZipFile(path) as wheel:
        return {name for name in wheel.namelist() if ".dist-info/" not in name}


def test_wheel_and_sdist_carry_the_probes_and_the_objects_for_both_arches(built):
    files = wheel_files(built["wheel"])
    assert OBJECTS <= files
    assert {"gotrace/probes/gotrace.h", "gotrace/probes/bpf_abi.h", "gotrace/probes/latency.bpf.c",
            "gotrace/probes/args.bpf.c"} <= files
    assert not any(name.startswith("probes/") for name in files)  # inside the package, not beside it
    assert wheel_files(built["wheel_from_sdist"]) == files
    print(f"wheel {built['wheel'].name}: {built['wheel'].stat().st_size} bytes; "
          f"sdist {built['sdist'].name}: {built['sdist'].stat().st_size} bytes")


def test_venv_has_no_system_site_packages_and_imports_the_installed_copy(built):
    venv = built["venv"]
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    probe = ("import importlib.util, gotrace, gotrace.header as h; print(gotrace.__file__); print(h.PROBES_DIR); "
             "print(importlib.util.find_spec('bcc'))")
    out = run([venv / "bin" / "python", "-c", probe], cwd=built["work"]).stdout.split()
    assert out[0].startswith(str(venv)) and out[1].startswith(str(venv)) and out[1].endswith("gotrace/probes")
    assert out[2] == "None"  # bcc is not importable there


def hidden(venv: Path, argv: list[str], *, input: str | None = None, env: dict | None = None,
           timeout: float = 300) -> subprocess.CompletedProcess:
    """Run argv in a private mount namespace with no headers, no bcc, no clang, no BPF cache, PATH = venv/bin."""
    clangs = sorted({os.path.realpath(found) for name in compiler.CLANG_NAMES if (found := shutil.which(name))})
    script = "\n".join([
        "set -e",
        *(f'if [ -d {d} ]; then mount -t tmpfs gotrace-hidden {d}; fi' for d in HIDDEN_DIRS),
        *(f"mount --bind /dev/null {c}" for c in clangs),
        # What this run can see: nothing to compile with, no headers, no bcc, no compiled programs.
        'for d in /usr/src /lib/modules /var/cache/gotrace/bpf; do '
        'if [ -d $d ] && [ -n "$(ls -A $d)" ]; then echo "gotrace-test: $d not empty" >&2; exit 97; fi; done',
        *(f'if {c} --version >/dev/null 2>&1; then echo "gotrace-test: {c} still runs" >&2; exit 98; fi'
          for c in clangs),
        f'if PATH={venv}/bin command -v clang >/dev/null; then echo "gotrace-test: clang on PATH" >&2; exit 99; fi',
        "set +e",
        f'env -i PATH={venv}/bin GOTRACE_TIMINGS=1 {" ".join(f"{k}={v}" for k, v in (env or {}).items())} "$@"',
        "rc=$?",
        'echo "gotrace-test: cache entries after: $(ls -A /var/cache/gotrace/bpf | wc -l)" >&2',
        "exit $rc",
    ])
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *argv],
                          input=input, capture_output=True, text=True, timeout=timeout, cwd=venv.parent)


def test_doctor_in_the_bare_venv_finds_the_shipped_objects(built):
    venv = built["venv"]
    proc = hidden(venv, [venv / "bin" / "gotrace", "doctor", "--json"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["can_trace"] is True
    for program in report["programs"]:
        assert program["origin"] == "shipped" and program["loads"] is True, program
        assert program["path"].startswith(str(venv))
    assert "gotrace-test: cache entries after: 0" in proc.stderr


def test_latency_in_the_bare_venv_counts_exactly(built):
    venv = built["venv"]
    binary = gobuild.build("latencytruth", "1.23.9", "default")
    # --max-overhead 0: exact counts need every function traced to the end (the cost guard may detach some)
    proc = hidden(venv, [venv / "bin" / "gotrace", "latency", "-c", binary, binary, *TRUTH_FUNCTIONS, "--json",
                         "--max-overhead", "0"], input="go\n")
    assert proc.returncode == 0, proc.stderr
    objects = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    (truth,) = [o for o in objects if "ok" in o]  # latencytruth's own line
    (report,) = [o for o in objects if "target" in o]  # gotrace's final report
    assert truth["ok"] is True
    got = {f["name"]: f for f in report["functions"]}
    assert set(got) == set(TRUTH_FUNCTIONS)
    for name in TRUTH_FUNCTIONS:
        assert got[name]["count"] == truth["functions"][name]["count"], name
        assert got[name]["unmatched"] == truth["functions"][name]["panicked"], name
    assert truth["functions"]["main.mayPanic"]["panicked"] == 200
    assert "gotrace: bpf programs shipped" in proc.stderr
    assert "compile child" not in proc.stderr
    assert "gotrace-test: cache entries after: 0" in proc.stderr  # nothing compiled, nothing cached


def test_args_in_the_bare_venv_reports_every_value_exactly(built, tmp_path, private_binary):
    venv = built["venv"]
    # A copy in a temporary directory: in the kernel matrix's VMs the cache of builds is 9p, where the kernel maps
    # only the pages a process touched, and a uprobe's read cannot fault in a string constant not read yet.
    binary = private_binary(gobuild.build("argstruth", gobuild.TOOLCHAINS[-1], "default"))
    truth_path = tmp_path / "truth.jsonl"
    proc = hidden(venv, [venv / "bin" / "gotrace", "args", "-c", f"{binary} -truth {truth_path}", binary, *PATTERNS,
                         "--str-len", str(STR_LEN), "--depth", str(DEPTH), "--max-elems", str(MAX_ELEMS),
                         "--max-rate", "0", "--max-overhead", "0", "--json"])  # every call compared (test_args_truth)
    assert proc.returncode == 0, proc.stderr
    truth = [json.loads(line) for line in truth_path.read_text().splitlines()]
    calls = [json.loads(line) for line in proc.stdout.splitlines()]
    shares, misses = score(truth, calls)
    assert not misses, "\n".join(misses[:20])
    for kind in ("int", "uint", "bool", "string", "bytes", "slice", "ptr", "struct", "array", "error", "iface",
                 "goid", "pid"):
        ok, total = shares.get(kind, (0, 0))
        assert total > 0 and ok == total, f"{kind}: {ok}/{total} exact"
    assert " 0 dropped" in proc.stderr
    assert "gotrace: bpf programs shipped" in proc.stderr
    assert "gotrace-test: cache entries after: 0" in proc.stderr
