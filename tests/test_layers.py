r"""The layers of gotrace's package, read from its imports: every edge must point down.

    cli  ->  commands  ->  trace  ->  bpf
               |   |         \----->  capture  ->  binary
               |   \-> output  ----->  capture, binary (data objects only)

`binary` knows nothing of BPF or output, `bpf` nothing of Go, `capture` nothing
of tracers or output, `output` nothing of tracers, BPF or commands. `errors`,
`header` (the constants of probes/gotrace.h) and `keptfile` (files kept between
runs) sit under everything.
Imports inside functions and under TYPE_CHECKING count like any other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gotrace"

# Layer -> the layers it may import (besides itself and the shared base).
ALLOWED: dict[str, frozenset[str]] = {
    "binary": frozenset(),
    "bpf": frozenset(),
    "capture": frozenset({"binary"}),
    "output": frozenset({"capture", "binary"}),
    "trace": frozenset({"bpf", "capture", "binary"}),
    "commands": frozenset({"trace", "output", "capture", "binary", "bpf"}),
    "cli": frozenset({"commands", "output"}),
    "__main__": frozenset({"cli"}),
}
BASE = frozenset({"errors", "header", "keptfile", "__init__"})


def layer_of(module: str) -> str:
    """The layer of a dotted module name inside gotrace (`gotrace.bpf.cache` -> `bpf`)."""
    parts = module.split(".")
    assert parts[0] == "gotrace", module
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path, root: Path = PACKAGE) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def gotrace_imports(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, imported gotrace module) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(path, root)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "gotrace"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "gotrace":
                continue
            if target == "gotrace":  # from gotrace import errors, header, bpf ...
                found += [(node.lineno, f"gotrace.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, target))
    return found


def violations(root: Path = PACKAGE) -> list[str]:
    """Every import that points up or sideways, as 'file:line: layer -> layer (module)'."""
    bad = []
    for path in sorted(root.rglob("*.py")):
        source_layer = layer_of(module_name(path, root))
        for line, target in gotrace_imports(path, root):
            target_layer = layer_of(target)
            if target_layer == "__version__":
                target_layer = "__init__"
            if target_layer == source_layer or target_layer in BASE:
                continue
            if source_layer in BASE:
                bad.append(f"{path.relative_to(root.parent)}:{line}: {source_layer} (shared base) -> {target_layer} ({target})")
            elif target_layer not in ALLOWED.get(source_layer, frozenset()):
                bad.append(f"{path.relative_to(root.parent)}:{line}: {source_layer} -> {target_layer} ({target})")
    return bad


def test_every_module_belongs_to_a_known_layer():
    layers = {layer_of(module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert layers <= set(ALLOWED) | BASE, f"modules outside the known layers: {layers - set(ALLOWED) - BASE}"


def test_imports_point_down():
    assert violations() == [], "imports that point up:\n" + "\n".join(violations())


def test_a_back_edge_is_caught(tmp_path):
    """The checker itself: a copy of the package with one deliberate back-edge must fail."""
    import shutil

    copy = tmp_path / "gotrace"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / "binary" / "elffile.py"
    target.write_text(target.read_text() + "\nfrom gotrace.output.histogram import LatencyHistogram  # back-edge\n")
    found = violations(copy)
    assert len(found) == 1 and "binary -> output" in found[0] and "elffile.py" in found[0], found


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_exists(layer):
    if layer in ("cli", "__main__"):
        assert (PACKAGE / f"{layer}.py").is_file()
    else:
        assert (PACKAGE / layer / "__init__.py").is_file()
