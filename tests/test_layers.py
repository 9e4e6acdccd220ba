"""Layers you can see: every import inside flexunet points down the layer table, and module-level
imports form no circle. Read from the source (AST), so lazy imports inside functions count too."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: Where each subpackage lives (setup.cfg's package_dir), bottom layer first.
LAYERS = (
    ("flexunet.core", REPO / "runtime" / "core"),
    ("flexunet.architectures", REPO / "train" / "architectures"),
    ("flexunet.runtime", REPO / "runtime"),
    ("flexunet.train", REPO / "train"),
    ("flexunet.export", REPO / "export"),
    ("flexunet.projects", REPO / "projects"),
)
TOP = len(LAYERS)  # the root package: flexunet/__init__.py, cli.py, __main__.py
ROOT_MODULES = ("__init__.py", "__main__.py", "cli.py")


def _modules() -> dict[str, Path]:
    """Module name -> file, for every module of the installed package."""
    found = {}
    for package, folder in LAYERS:
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            if package == "flexunet.runtime" and rel.parts[0] == "core":
                continue  # runtime/core is flexunet.core
            if package == "flexunet.train" and rel.parts[0] == "architectures":
                continue  # train/architectures is flexunet.architectures
            parts = [p for p in rel.parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    for name in ROOT_MODULES:
        module = "flexunet" if name == "__init__.py" else f"flexunet.{name[:-3]}"
        found[module] = REPO / name
    return found


def layer(module: str) -> int:
    for i, (package, _) in enumerate(LAYERS):
        if module == package or module.startswith(package + "."):
            return i
    return TOP


def _imports(path: Path, module: str, top_level_only: bool = False) -> list[tuple[str, int]]:
    """flexunet modules imported by a file, with line numbers (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    nodes = tree.body if top_level_only else ast.walk(tree)
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "flexunet"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            if base.split(".")[0] == "flexunet":
                out.append((base, node.lineno))
    return out


MODULES = _modules()


def test_the_package_has_every_layer():
    assert {layer(m) for m in MODULES} == set(range(TOP + 1))
    assert len(MODULES) > 40


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    own = layer(module)
    upward = [f"line {line}: {target}" for target, line in _imports(MODULES[module], module)
              if layer(target) > own]
    assert not upward, f"{module} (layer {own}) imports a higher layer: {upward}"


def test_no_import_circle_at_module_level():
    graph = {m: {t for t, _ in _imports(p, m, top_level_only=True) if t in MODULES and t != m}
             for m, p in MODULES.items()}
    done, path = set(), []

    def visit(node):
        if node in path:
            cycle = path[path.index(node):] + [node]
            raise AssertionError("import circle: " + " -> ".join(cycle))
        if node in done:
            return
        path.append(node)
        for nxt in sorted(graph[node]):
            visit(nxt)
        path.pop()
        done.add(node)

    for m in sorted(graph):
        visit(m)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The check above can fail: a core module importing the runtime is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from flexunet.runtime.segmenter import Segmenter\n")
    targets = _imports(bad, "flexunet.core.bad")
    assert targets == [("flexunet.runtime.segmenter", 2)] and layer(targets[0][0]) > layer("flexunet.core.bad")


@pytest.mark.parametrize("script", sorted((REPO / "benchmarks").glob("*.py")) + sorted((REPO / "tests").glob("*.py")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_scripts_and_tests_import_flexunet_by_its_one_name(script):
    """Benchmarks put the repository root on sys.path (to share benchmarks/common.py), where the
    folders also import as ``runtime``, ``train``...: a second copy of flexunet. They never do."""
    folders = {p.name for p in REPO.iterdir() if (p / "__init__.py").is_file()} - {"benchmarks"}
    tree = ast.parse(script.read_text(encoding="utf-8"))
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and not n.level]
    assert not [n for n in names if n.split(".")[0] in folders], folders
