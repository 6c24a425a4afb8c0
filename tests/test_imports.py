"""The package has no import cycles, including imports written inside functions (which hide a cycle at
import time but still tie the modules together)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in (ROOT / "neuralgraph").rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                if t in files and t != name:  # a module, or the package whose __init__ defines the name
                    graph[name].add(t)
                    graph[name].update(_outer_packages(t, name, files))
                    break
    return graph


def _outer_packages(target: str, importer: str, files) -> set[str]:
    """Packages Python initialises before ``target``: its parents, except the importer's own (already being
    initialised when the importer runs, so importing a sibling is no cycle)."""
    parts = target.split(".")
    parents = (".".join(parts[:i]) for i in range(1, len(parts)))
    return {p for p in parents if p in files and not (importer + ".").startswith(p + ".")}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_cycles():
    cycle = _cycle(_import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_detects_a_cycle():  # the checker itself can fail
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_counts_the_packages_an_import_initialises():  # `from p.q import x` runs p/__init__ first
    files = {"p", "p.q", "p.r", "s"}
    assert _outer_packages("p.q", "s", files) == {"p"}
    assert _outer_packages("p.q", "p.r", files) == set()  # a sibling: p is already initialising
