"""The package's shape, checked: layers import only downwards, no import cycle, every module imports alone,
no function longer than a screen.

The layers, bottom up (docs/DESIGN.md):

    0  the core: mmpo.* outside the packages below (records, config, media, models, losses, trainer, ...)
    1  mmpo.builders and mmpo.eval, side by side: neither imports the other, and eval never the trainer
    2  mmpo.demo: uses the builders and evaluators the way a user's script would
    3  mmpo.app (the command line) and mmpo.__main__

Every import counts, those inside functions included (a lazy import is how a cycle or an upward dependency
hides); only imports under `if TYPE_CHECKING:` are left out, since they never run.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = {"mmpo.app": 3, "mmpo.__main__": 3, "mmpo.demo": 2, "mmpo.builders": 1, "mmpo.eval": 1}
FORBIDDEN = {"mmpo.builders": ("mmpo.eval",), "mmpo.eval": ("mmpo.builders", "mmpo.trainer")}


def module_names() -> dict[str, Path]:
    names = {}
    for path in sorted((REPO / "mmpo").rglob("*.py")):
        if not all((folder / "__init__.py").is_file() for folder in path.parents if REPO / "mmpo" in [folder, *folder.parents]):
            continue  # a script among package data (mmpo/models/hub_files), not a module
        parts = path.relative_to(REPO).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _runtime_nodes(tree: ast.AST):
    """Every node except those under `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The mmpo modules `name` imports; `from pkg import submodule` counts as importing the submodule only."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            submodules = {f"{base}.{alias.name}" for alias in node.names} & known.keys()
            found |= submodules
            if len(submodules) < len(node.names):  # a name defined in `base` itself
                found.add(base)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    known = module_names()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def layer(name: str) -> int:
    return max((rank for prefix, rank in LAYERS.items() if name == prefix or name.startswith(prefix + ".")),
               default=0)


def test_layers_import_only_downwards():
    upward = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
              for a, deps in graph().items() for b in deps if layer(b) > layer(a)]
    assert not upward, "\n".join(upward)


def test_builders_and_evaluators_stay_apart():
    crossing = [f"{a} imports {b}" for a, deps in graph().items() for b in deps
                for side, banned in FORBIDDEN.items()
                if (a == side or a.startswith(side + ".")) and any(b == x or b.startswith(x + ".") for x in banned)]
    assert not crossing, "\n".join(crossing)


def find_cycle(edges: dict[str, set[str]]) -> list[str]:
    """One import cycle as a list of modules (first == last), or [] when the graph has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return []

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            return cycle
    return []


def test_find_cycle_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert not cycle, " -> ".join(cycle)


def test_no_function_over_80_lines():
    """A function a reader cannot see in one screen is split (the training loop included: trainer.loop)."""
    long = [f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in module_names().values() for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80]
    assert not long, "\n".join(long)


def test_the_check_sees_the_imports_it_guards():
    edges = graph()
    assert "mmpo.builders.augment" in edges["mmpo.demo.video_models"]
    assert {"mmpo.eval", "mmpo.trainer"} <= edges["mmpo.app.cli"]  # lazy imports inside functions count


def test_every_module_imports_alone_and_has_a_docstring():
    """Each module, imported first in a fresh set of mmpo modules (third-party ones stay loaded for speed):
    an import that works only after another mmpo module has run fails here."""
    names = [n for n in module_names() if n != "mmpo.__main__"]
    script = (
        "import importlib, sys, torch, transformers\n"
        f"for name in {names!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'mmpo' or m.startswith('mmpo.')]:\n"
        "        del sys.modules[loaded]\n"
        "    module = importlib.import_module(name)\n"
        "    assert module.__doc__, f'{name} has no module docstring'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
