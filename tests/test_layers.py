"""The package's layers (virnucpro/__init__.py's docstring): every module imports only from its own
layer and those below it, no import loop exists among the project's modules, and a function-level
import of a project module says why (a comment) instead of hiding a loop.

The imports are read with `ast` (function-level ones included, relative ones resolved), so the
check needs no module imported. VIRNUCPRO_LAYERS_ROOT checks another checkout of the package."""

import ast
import os
import re
from pathlib import Path

import pytest

ROOT = Path(os.environ.get("VIRNUCPRO_LAYERS_ROOT") or Path(__file__).resolve().parents[1])
PACKAGE = ROOT / "virnucpro"
# the layer list as written down in the package docstring (in /work/wt/i29's layout)
DOCUMENTED = Path(__file__).resolve().parents[1] / "virnucpro" / "__init__.py"
LAYER_LINE = re.compile(r"^(\d+)\. [\w ]+: ([\w, ]+?)(?: --|$)", re.M)


def layers() -> dict[str, int]:
    """{top-level name under virnucpro: its layer number}."""
    table = {}
    for number, names in LAYER_LINE.findall(ast.get_docstring(ast.parse(DOCUMENTED.read_text()))):
        for name in names.split(","):
            table[name.strip()] = int(number)
    return table


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


class Imports(ast.NodeVisitor):
    """Every import of a module: (line, imported names, function-level?)."""

    def __init__(self, name: str, package: bool):
        self.base = name if package else name.rpartition(".")[0]
        self.found: list[tuple[int, list[str], bool]] = []
        self.depth = 0

    def visit_FunctionDef(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node):
        self.found.append((node.lineno, [alias.name for alias in node.names], self.depth > 0))

    def visit_ImportFrom(self, node):
        if node.level:
            parts = self.base.split(".")
            anchor = ".".join(parts[:len(parts) - node.level + 1])
            source = f"{anchor}.{node.module}" if node.module else anchor
        else:
            source = node.module
        self.found.append((node.lineno, [source] + [f"{source}.{alias.name}" for alias in node.names], self.depth > 0))


def resolve(name: str, known: dict[str, Path]) -> str | None:
    """The project module an imported name lives in (a module, or a package's __init__)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(known: dict[str, Path]) -> dict[str, dict[str, tuple[int, bool]]]:
    """{module: {imported module: (line, function-level?)}}. Importing a.b.c also runs a.b's
    __init__ (unless the importer is inside a.b, which is then already being imported)."""
    graph: dict[str, dict[str, tuple[int, bool]]] = {}
    for name, path in known.items():
        visitor = Imports(name, is_package(path))
        visitor.visit(ast.parse(path.read_text(), str(path)))
        edges = graph.setdefault(name, {})
        for line, names, nested in visitor.found:
            targets = {resolve(n, known) for n in names if n == "virnucpro" or n.startswith("virnucpro.")} - {None}
            for target in targets:
                parent = target
                while parent:
                    inside = name == parent or name.startswith(parent + ".")
                    if not inside and parent != name:
                        edges.setdefault(parent, (line, nested))
                    parent = parent.rpartition(".")[0]
    return graph


def layer_of(name: str, table: dict[str, int]) -> int | None:
    if name == "virnucpro":
        return 1
    return table.get(name.split(".")[1])


def test_every_module_has_a_layer():
    table = layers()
    assert len(set(table.values())) >= 5, table
    missing = sorted(name for name in modules() if layer_of(name, table) is None)
    assert not missing, f"modules in no layer of virnucpro/__init__.py's docstring: {missing}"


def test_no_module_imports_from_a_higher_layer():
    table, known = layers(), modules()
    upward = [f"{name} (layer {layer_of(name, table)}) imports {target} (layer {layer_of(target, table)}), "
              f"line {line}{' (in a function)' if nested else ''}"
              for name, edges in import_graph(known).items() for target, (line, nested) in edges.items()
              if (layer_of(target, table) or 0) > (layer_of(name, table) or 0)]
    assert not upward, "\n".join(upward)


def find_cycle(graph: dict[str, dict]) -> list[str] | None:
    """One import loop (its modules in order), or None."""
    colour: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, {})):
            if colour.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if not colour.get(target):
                found = visit(target)
                if found:
                    return found
        stack.pop()
        colour[node] = 2
        return None

    for node in sorted(graph):
        if not colour.get(node):
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_loop_among_the_project_modules():
    cycle = find_cycle(import_graph(modules()))
    assert cycle is None, "import loop: " + " -> ".join(cycle)


def test_the_loop_finder_finds_a_loop():
    assert find_cycle({"a": {"b": (1, False)}, "b": {"c": (1, False)}, "c": {"a": (1, True)}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": (1, False)}, "b": {}}) is None


def explained(lines: list[str], line: int) -> bool:
    """A comment on the import's line, or on the line above it (or above the group of imports it is in)."""
    if "#" in lines[line - 1]:
        return True
    above = line - 2
    while above >= 0 and re.match(r"\s*(from \S+ )?import ", lines[above]):
        above -= 1
    return above >= 0 and lines[above].strip().startswith("#")


def test_function_level_project_imports_say_why():
    known = modules()
    silent = []
    for name, path in known.items():
        visitor = Imports(name, is_package(path))
        visitor.visit(ast.parse(path.read_text(), str(path)))
        lines = path.read_text().splitlines()
        for line, names, nested in visitor.found:
            project = any(n == "virnucpro" or n.startswith("virnucpro.") for n in names)
            if nested and project and not explained(lines, line):
                silent.append(f"{path.relative_to(ROOT)}:{line}: {lines[line - 1].strip()}")
    assert not silent, "function-level imports of the project's modules without a comment saying why:\n" + "\n".join(silent)


@pytest.mark.parametrize("name", ["virnucpro.cli", "virnucpro.orchestration.plan", "virnucpro.orchestration.task"])
def test_the_graph_sees_the_modules_imports(name):
    """A guard on the reader itself: these modules import project modules, so it must find some."""
    graph = import_graph(modules())
    assert graph[name] and all(target.startswith("virnucpro") for target in graph[name])


LOADED = ("import sys\nfrom virnucpro.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
          "print(sorted({'torch', 'numpy'} & set(sys.modules)))\n")


@pytest.mark.parametrize("argv", [["--help"], ["status", "-w", "{workdir}"], ["submit", "--help"]], ids=" ".join)
def test_login_node_commands_import_neither_torch_nor_numpy(argv, tmp_path):
    """The dispatcher imports only the chosen family: --help and status stay light."""
    import subprocess
    import sys

    argv = [a.format(workdir=tmp_path) for a in argv]
    done = subprocess.run([sys.executable, "-c", LOADED, *argv], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout + done.stderr
