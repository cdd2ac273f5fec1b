"""The import picture of the package: modules, floors, arrows, circles, the largest modules.

``python docs/imports.py [DIR]`` reads every ``import`` of legoexp's own modules in DIR/legoexp
(default: this checkout), wherever it stands (lazy imports in functions too), with Python's ``ast``.
A module is a node (a package's ``__init__`` is the package); an arrow goes from a module to each
module it imports. Floors: the longest chain of arrows, circles collapsed, counted in modules.
"""

import ast
import sys
from pathlib import Path


def graph(root: Path) -> tuple[dict[str, Path], set[tuple[str, str]]]:
    modules = {}
    for path in sorted((root / "legoexp").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    arrows = set()
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("legoexp"):
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("legoexp")]
            arrows |= {(name, t) for t in targets if t in modules and t != name}
    return modules, arrows


def circles(nodes, arrows) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    out, index, low, stack, found = {}, {}, {}, [], []
    for a, b in arrows:
        out.setdefault(a, []).append(b)

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in out.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in nodes:
        if v not in index:
            visit(v)
    return found


def floors(nodes, arrows, loops) -> int:
    group = {v: min(c) for c in loops for v in c}
    out = {}
    for a, b in arrows:
        a, b = group.get(a, a), group.get(b, b)
        if a != b:
            out.setdefault(a, set()).add(b)
    depth = {}

    def height(v):
        if v not in depth:
            depth[v] = 1 + max((height(w) for w in out.get(v, ())), default=0)
        return depth[v]

    return max(height(group.get(v, v)) for v in nodes)


def main() -> None:
    sys.setrecursionlimit(10_000)
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent)
    modules, arrows = graph(root)
    loops = circles(modules, arrows)
    lines = {name: len(path.read_text().splitlines()) for name, path in modules.items()}
    largest = sorted(lines.items(), key=lambda item: -item[1])[:3]
    print(f"modules {len(modules)}  floors {floors(modules, arrows, loops)}  arrows {len(arrows)}  "
          f"circles {len(loops)} {[sorted(c) for c in loops]}")
    print("largest: " + ", ".join(f"{name} ({n} lines)" for name, n in largest))
    print("over 250 lines: " + (", ".join(f"{n} ({c})" for n, c in lines.items() if c > 250) or "none"))


if __name__ == "__main__":
    main()
