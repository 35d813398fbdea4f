"""The package's shape: one top-level import name, and an import graph without cycles or back doors.

Parses every project module (no import side effects) and checks:
* no import cycle between project modules (module-level imports);
* ``fedprune.client`` imports nothing from ``fedprune.server`` or ``fedprune.strategies`` (the protocol
  between the two sides lives in ``fedprune.protos``);
* no function-local import of a project module (the usual way to hide a cycle).
And builds the wheel: it must install ``fedprune`` alone into site-packages.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("server", "client", "strategies", "pruning", "protos", "kernels", "simulation", "models", "data",
               "deploy")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] != "fedprune":
        parts.insert(0, "fedprune")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    """Every hand-written module of the package, by its import name (generated protobuf code excluded)."""
    modules = {}
    for folder in ("fedprune", *SUBPACKAGES):
        for path in sorted((ROOT / folder).glob("*.py")):
            if not path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
                modules[_module_name(path)] = path
    return modules


def _imports(path: Path, name: str, modules: dict[str, Path]) -> tuple[set[str], list[tuple[int, str]]]:
    """(project modules imported at module level, [(line, module)] imported inside functions)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    top, local = set(), []

    def targets(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        return []

    def visit(node: ast.AST, in_function: bool, in_type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            function = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            guarded = in_type_checking or (isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test))
            for target in targets(child):
                if target in modules and not guarded:
                    (local.append((child.lineno, target)) if in_function else top.add(target))
            visit(child, function, guarded)

    visit(tree, False, False)
    return top, local


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: _imports(path, name, modules)[0] for name, path in modules.items()}


def test_no_import_cycles(graph):
    state: dict[str, int] = {}
    cycles = []

    def walk(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt, [*stack, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module, [module])
    assert cycles == [], "\n".join(" -> ".join(c) for c in cycles)


def test_client_never_imports_server_or_strategies(graph):
    bad = sorted((name, target) for name, targets in graph.items() if name.startswith("fedprune.client")
                 for target in targets if target.startswith(("fedprune.server", "fedprune.strategies")))
    assert bad == []


def test_no_function_local_imports_of_project_modules():
    modules = project_modules()
    found = [f"{path.relative_to(ROOT)}:{line} imports {target}"
             for name, path in modules.items() for line, target in _imports(path, name, modules)[1]]
    assert found == [], "\n".join(found)


def test_the_wheel_installs_fedprune_alone(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("fedprune-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/", 1)[0] for name in names}
    assert top == {"fedprune", next(t for t in top if t.endswith(".dist-info"))}
    for sub in SUBPACKAGES:
        assert f"fedprune/{sub}/__init__.py" in names
    assert not any(name.startswith("fedprune/tests") for name in names)


def test_an_installed_wheel_submits_a_generated_flower_app(tmp_path, monkeypatch):
    """Outside a source tree `flwr run` gets a folder holding only a pyproject.toml whose components name the
    installed package and whose config is RunSettings' defaults (checked for real in a fresh venv: BENCHMARKS)."""
    import tomllib

    from fedprune.server.run_config import RunSettings
    from fedprune.simulation import flower_processes

    assert flower_processes.flower_app_dir() == ROOT  # this checkout is a source tree
    monkeypatch.setattr(flower_processes, "APP_DIR", tmp_path / "site-packages" / "fedprune")
    monkeypatch.setattr(flower_processes.tempfile, "gettempdir", lambda: str(tmp_path))
    app = flower_processes.flower_app_dir()
    assert app != ROOT and sorted(p.name for p in app.iterdir()) == ["pyproject.toml"]
    flwr = tomllib.loads((app / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert flwr["components"] == {"serverapp": "fedprune.server.app:app", "clientapp": "fedprune.client.app:app"}
    assert flwr["config"] == RunSettings().to_run_config()
