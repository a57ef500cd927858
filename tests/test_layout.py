"""The shape of the code, checked: the core imports no engine, and no module reaches into another package
for a private name."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("s3sim", "s3exec")


def _modules(package: str):
    for path in sorted((ROOT / package).rglob("*.py")):
        yield ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"), path


def test_core_imports_neither_torch_nor_simpy_nor_an_engine():
    core = [name for name, _ in _modules("s3sim") if name.startswith("s3sim.core")]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in core)
            + "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'simpy', 'transformers', 's3exec')"
              " or m.startswith('s3sim.simulator'))\nprint(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert len(core) >= 10 and out.stdout.strip() == ""


def test_simulator_packages_never_import_the_executor():
    for name, path in _modules("s3sim"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("s3exec"), f"{name} imports {node.module}"
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("s3exec") for a in node.names), f"{name} imports s3exec"


def test_no_private_name_is_imported_across_packages():
    """`from a.b import _x` is allowed only inside the package (first two dotted parts) that defines it."""
    offences = []
    for package in PACKAGES:
        for name, path in _modules(package):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
                    here, there = name.split(".")[:2], node.module.split(".")[:2]
                    private = [a.name for a in node.names if a.name.startswith("_")]
                    if private and here != there:
                        offences.append(f"{name}: from {node.module} import {', '.join(private)}")
    assert offences == []


def _graph():
    """Every import of one project module by another, at module level or inside a function."""
    names = {name for package in PACKAGES for name, _ in _modules(package)}

    def resolve(dotted):
        parts = dotted.split(".")
        while parts and ".".join(parts) not in names:
            parts.pop()
        return ".".join(parts) or None

    graph = {}
    for package in PACKAGES:
        for name, path in _modules(package):
            edges = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
                    edges |= {resolve(f"{node.module}.{a.name}") for a in node.names}
                elif isinstance(node, ast.Import):
                    edges |= {resolve(a.name) for a in node.names if a.name.split(".")[0] in PACKAGES}
            graph[name] = edges - {None, name}
    return graph


def test_no_import_cycles_even_through_imports_inside_functions():
    graph, cycles = _graph(), []
    state = {}

    def visit(m, path):
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                cycles.append(" -> ".join(path[path.index(n):] + [n]))
            elif n not in state:
                visit(n, path + [n])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


# the command-line layer: what a user runs; nothing below it imports it
COMMANDS = ("s3sim.cli", "s3sim.plot_cli", "s3sim.experiments", "s3sim.bench", "s3sim.sweep", "s3exec.cli")
# the lab: tools that measure, fit or tabulate, run by a person or `make`; only commands and the lab import them
LABS = ("s3sim.lab", "s3exec.lab")


def _within(m, packages):
    return any(m == p or m.startswith(p + ".") for p in packages)


def test_the_library_never_imports_a_command_and_writes_through_the_writers():
    def command(m):
        return any(m == c or m.startswith(c + ".") for c in COMMANDS)

    graph = _graph()
    up = {m: sorted(n for n in graph[m] if command(n)) for m in graph if not command(m)}
    assert {m: n for m, n in up.items() if n} == {}
    writers = ast.parse((ROOT / "s3sim" / "writers.py").read_text())
    WRITERS = {n.name for n in writers.body if isinstance(n, ast.FunctionDef)}
    assert not [n for n in ast.walk(writers) if isinstance(n, (ast.Import, ast.ImportFrom))
                and (getattr(n, "module", None) or "").startswith(PACKAGES)]
    for package in PACKAGES:
        for name, path in _modules(package):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module == "s3sim.runner":
                    assert not [a.name for a in node.names if a.name in WRITERS], name


def test_the_runtime_never_imports_a_lab_tool():
    graph = _graph()
    lab = sorted(m for m in graph if _within(m, LABS))
    assert len(lab) >= 14 and "s3sim.lab.calibrate" in lab and "s3exec.lab.gpu_check" in lab
    up = {m: sorted(n for n in graph[m] if _within(n, LABS)) for m in graph if not _within(m, COMMANDS + LABS)}
    assert {m: n for m, n in up.items() if n} == {}
