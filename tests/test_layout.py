"""The package's import graph: no cycles, and arrows that point one way (DESIGN's layering).

Every import counts, also those inside functions and under TYPE_CHECKING: a cycle hidden in a
function is still a cycle for a reader following the code.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "healing_pl"

#: layer of each top-level part of the package; a module may import only from its own layer or lower ones
LAYERS = {
    "tracking": 0,
    "media": 0,
    "data": 0,
    "models": 0,
    "codehash": 0,
    "files": 0,
    "console": 0,
    "registry": 0,
    "records": 0,
    "lock": 0,
    "gradients": 1,
    "unlearning": 2,
    "adversary": 2,
    "healing": 2,
    "phases": 3,
    "callbacks": 4,
    "trainer": 5,
    "cli": 6,
    "report": 7,
    "experiments": 7,
    "main": 8,
}

#: the method families: on one layer, and none imports another (what they share lives lower, e.g. gradients)
FAMILIES = ("unlearning", "adversary", "healing")


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(
                        package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                    )
                found = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            targets.update(t for t in found if t in modules and t != name)
        graph[name] = targets
    return graph


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "healing_pl"


def test_no_import_cycles():
    graph = _imports()
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt] if nxt in stack else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_imports_point_down_the_layers():
    wrong = []
    for module, targets in _imports().items():
        if _part(module) == "healing_pl":
            continue
        for target in targets:
            if _part(target) != "healing_pl" and LAYERS[_part(target)] > LAYERS[_part(module)]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, wrong


def test_every_part_has_a_layer():
    parts = {_part(m) for m in _imports()} - {"healing_pl"}
    assert parts <= set(LAYERS), parts - set(LAYERS)


def test_method_families_do_not_import_each_other():
    wrong = [
        f"{module} imports {target}"
        for module, targets in _imports().items()
        for target in targets
        if _part(module) in FAMILIES and _part(target) in FAMILIES and _part(target) != _part(module)
    ]
    assert not wrong, wrong


def test_private_modules_of_unlearning_stay_inside_it():
    """A module of ``healing_pl.unlearning`` whose name starts with ``_`` is imported only from within the package."""
    wrong = [
        f"{module} imports {target}"
        for module, targets in _imports().items()
        if _part(module) != "unlearning"
        for target in targets
        if _part(target) == "unlearning" and any(part.startswith("_") for part in target.split(".")[2:])
    ]
    assert not wrong, wrong
