"""Builds gotrace: the Python package, with its BPF programs compiled for amd64 and arm64.

`pip wheel .` (or any PEP 517 build) copies the top-level probes/ into the
package as gotrace/probes/ and compiles each program there for each
architecture with clang (gotrace.bpf.compiler: `clang -target bpfel`, no
kernel headers), so that a host with the wheel needs no compiler, no kernel
headers and no bcc. Building needs clang (Debian: apt-get install clang);
GOTRACE_BUILD_WITHOUT_BPF=1 builds without the objects, and gotrace then
compiles them with clang at first use on the host.

An editable install (scripts/install) reads probes/ of the checkout and
compiles at first use (cached in /var/cache/gotrace/bpf).
"""

import os
import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
WITHOUT_BPF_ENV = "GOTRACE_BUILD_WITHOUT_BPF"


class build_py_with_probes(build_py):
    """build_py, then gotrace/probes/: the BPF C sources and the objects compiled from them."""

    def run(self):
        super().run()
        if not getattr(self, "editable_mode", False):
            self.build_probes(Path(self.build_lib) / "gotrace" / "probes")

    def build_probes(self, target: Path) -> None:
        sys.path.insert(0, str(ROOT))
        from gotrace.bpf import compiler
        from gotrace.errors import GotraceError

        target.mkdir(parents=True, exist_ok=True)
        for source in sorted((ROOT / "probes").glob("*.[ch]")):
            shutil.copy2(source, target / source.name)
        clang = compiler.find_clang()
        if clang is None:
            if os.environ.get(WITHOUT_BPF_ENV) == "1":
                self.warn("no clang: building gotrace without its compiled BPF programs; hosts will need clang")
                return
            raise SystemExit("error: building gotrace compiles its BPF programs with clang and there is none: "
                             f"apt-get install clang (or set {WITHOUT_BPF_ENV}=1 to build without them)")
        for program in compiler.PROGRAMS:
            for arch in compiler.ARCHES:
                output = target / compiler.object_name(program, arch)
                try:
                    compiler.compile_program(program, target, arch, output, clang)
                except GotraceError as exc:
                    raise SystemExit(f"error: {exc}") from None
                self.announce(f"compiled {output.name} with {clang}", level=2)


setup(cmdclass={"build_py": build_py_with_probes})
