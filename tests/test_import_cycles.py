"""No import circle in the package: every module's imports (function-level ones included; those only
under `if TYPE_CHECKING:` left out), read statically, form no cycle between xtp_ray's modules."""
import ast
import sys
from pathlib import Path

import xtp_ray

PACKAGE = Path(xtp_ray.__file__).parent


def modules() -> dict[str, Path]:
    """Module name -> file, for every module of the package (a package is its __init__.py)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """The Import and ImportFrom nodes anywhere in the tree (functions, classes, try blocks), except under
    `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _type_checking(node.test):
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _imports(node)


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that module `name` imports (an imported name that is a module counts as
    that module; otherwise the module it comes from)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                stem = ".".join(parts[:len(parts) - node.level + 1])
                base = f"{stem}.{base}" if base else stem
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        for target in targets:
            while target and target not in known:  # `import a.b.c` of a non-module attribute: its module
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return out


def test_the_finder_sees_a_cycle_through_a_function_level_import():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_imports_are_read_with_function_level_ones_and_without_type_checking_ones():
    edges = graph()
    assert "xtp_ray.tasks" in edges["xtp_ray.job.actor"]  # module level
    assert "xtp_ray.engine.load" in edges["xtp_ray.job.actor"]  # inside a function
    assert "xtp_ray.metrics" in edges["xtp_ray.tasks.base"]
    assert "xtp_ray.tasks.xnli" in edges["xtp_ray.tasks"]  # `from . import xnli`


def test_no_import_cycle_in_the_package():
    found = cycles(graph())
    assert found == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_metrics_import_nothing_of_the_package():
    """The metrics floor stands on its own: no tasks, no torch (the standard library only)."""
    assert graph()["xtp_ray.metrics"] == set()
    tree = ast.parse((PACKAGE / "metrics.py").read_text(encoding="utf-8"))
    names = {alias.name if isinstance(node, ast.Import) else node.module
             for node in _imports(tree) for alias in node.names}
    assert {name.split(".")[0] for name in names} <= set(sys.stdlib_module_names)
