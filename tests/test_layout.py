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
