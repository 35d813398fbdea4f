"""The package's shape: one top-level import name, and an import graph without cycles or back doors.

Parses every project module (no import side effects) and checks:
* no import cycle between project modules (module-level imports);
* ``fedprune.client`` imports nothing from ``fedprune.server`` or ``fedprune.strategies`` (the protocol
  between the two sides lives in ``fedprune.protos``);
* no function-local import of a project module (the usual way to hide a cycle);
* no module over 350 lines and no function over 60, unless a ``# size: <reason>`` comment says why.
And builds the wheel: it must install ``fedprune`` alone into site-packages.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("server", "client", "strategies", "pruning", "protos", "kernels", "simulation", "models", "data",
               "deploy", "tuning")
MAX_MODULE_LINES = 350
MAX_FUNCTION_LINES = 60
SIZE_REASON = re.compile(r"#\s*size:\s*\S")  # `# size: <reason>` exempts the def below it, or its module
BEING_SPLIT: frozenset[str] = frozenset()  # files exempt while being split elsewhere (none now)


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


def _sized_modules() -> dict[Path, list[str]]:
    """The lines of every project module the size limits apply to (``BEING_SPLIT`` left out)."""
    return {path: path.read_text().splitlines() for path in project_modules().values()
            if path.relative_to(ROOT).as_posix() not in BEING_SPLIT}


def _module_over_limit(lines: list[str]) -> bool:
    """Over ``MAX_MODULE_LINES`` without a ``# size:`` reason in its first five lines."""
    return len(lines) > MAX_MODULE_LINES and not any(SIZE_REASON.match(line.strip()) for line in lines[:5])


def _functions_over_limit(lines: list[str]) -> list[str]:
    """'line name: N lines' of every function or method (nested ones too) over ``MAX_FUNCTION_LINES``, counted
    from its ``def`` to its last line, without a ``# size:`` reason on the line right before it (before its
    decorators, if any)."""
    over = []
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            above = lines[first - 2].strip() if first > 1 else ""
            if length > MAX_FUNCTION_LINES and not SIZE_REASON.match(above):
                over.append(f"{node.lineno} {node.name}: {length} lines")
    return over


def test_no_module_over_the_line_limit():
    over = [f"{path.relative_to(ROOT)}: {len(lines)} lines" for path, lines in _sized_modules().items()
            if _module_over_limit(lines)]
    assert over == [], "\n".join(over)


def test_no_function_over_the_line_limit():
    over = [f"{path.relative_to(ROOT)}:{offender}" for path, lines in _sized_modules().items()
            for offender in _functions_over_limit(lines)]
    assert over == [], "\n".join(over)


def test_a_size_reason_exempts_exactly_the_def_or_module_it_precedes():
    body = [f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES)]
    source = ["def long():", *body, "", "# size: one table, clearer whole", "@staticmethod", "def reasoned():",
              *body, "", "# size: ", "def empty_reason():", *body]
    assert _functions_over_limit(source) == [f"1 long: {MAX_FUNCTION_LINES + 1} lines",
                                             f"{source.index('def empty_reason():') + 1} empty_reason: "
                                             f"{MAX_FUNCTION_LINES + 1} lines"]
    assert _functions_over_limit(["def short():", *body[:-1]]) == []
    padding = ["x = 0"] * MAX_MODULE_LINES
    assert _module_over_limit(['"""A module."""', *padding])
    assert not _module_over_limit(["# size: generated tables", '"""A module."""', *padding])
    assert not _module_over_limit(padding)


def test_being_split_lists_only_modules_that_exist():
    assert sorted(p for p in BEING_SPLIT if not (ROOT / p).is_file()) == []


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
