"""The house: the import graph has no circle, no stage imports a later stage (nor the
trainer), and the package's data ships inside it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "nasbert"
# the stages in pipeline order; a stage may import only earlier ones
STAGES = ["nasbert.train", "nasbert.latency", "nasbert.search", "nasbert.finetune"]


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(tree: ast.AST, modules: set[str]) -> set[str]:
    """Every nasbert module a file imports, at module level or inside functions (but not
    under ``if TYPE_CHECKING:``)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("nasbert"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
                "nasbert"):
            for a in node.names:  # `from nasbert.search import stage` names a module
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in modules else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in modules}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in PACKAGE.rglob("*.py")}
    return {m: _imports(ast.parse(p.read_text()), set(files)) - {m} for m, p in files.items()}


def test_the_import_graph_has_no_circle(graph):
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def walk(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = path[path.index(n):] + [n] if n in path else [m, n]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if n not in state:
                walk(n, [*path, n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            walk(m, [m])


def _stage(module: str) -> int | None:
    for i, s in enumerate(STAGES):
        if module == s or module.startswith(s + "."):
            return i
    return None


def test_no_stage_imports_a_later_stage_or_the_trainer(graph):
    """Only the end of the pipeline (``pipeline``, ``cli``) imports the trainer; a stage
    reads earlier stages' files through ``RunDir``, which may load their readers."""
    for m, deps in graph.items():
        if m in ("nasbert.pipeline", "nasbert.cli"):
            continue
        mine = _stage(m)
        for d in deps:
            theirs = _stage(d)
            if theirs is None or theirs == mine:
                continue
            assert theirs != 0, f"{m} imports the trainer ({d}); read the run through RunDir"
            assert mine is None or theirs < mine, f"{m} imports {d}, a later stage"


def test_shipped_spaces_and_recipes_are_package_data():
    from nasbert.recipe import load_recipe
    from nasbert.resources import names
    from nasbert.space import SearchSpace

    assert {"minilm_l6", "nasbert_base", "tiny"} <= set(names("spaces"))
    assert {"quickstart", "minilm_wiki", "bert_base_paper"} <= set(names("recipes"))
    for name in names("recipes"):
        recipe = load_recipe(name)
        assert recipe.space.is_relative_to(PACKAGE)
        assert SearchSpace.from_yaml(recipe.space).name == recipe.space.stem


def test_a_built_wheel_carries_the_spaces_and_recipes(tmp_path):
    """What `pip install .` (not editable) installs: `nasbert quickstart` needs them."""
    import shutil
    import subprocess
    import sys
    import zipfile

    from nasbert.resources import names

    source = tmp_path / "source"  # a copy: building writes build/ beside the sources
    shutil.copytree(PACKAGE, source / "nasbert", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps",
                    "--no-build-isolation", "--quiet", "-w", str(tmp_path)], check=True,
                   capture_output=True)
    wheel = next(tmp_path.glob("nasbert-*.whl"))
    inside = set(zipfile.ZipFile(wheel).namelist())
    for kind in ("spaces", "recipes"):
        for name in names(kind):
            assert f"nasbert/{kind}/{name}.yaml" in inside
    # installed from the wheel, away from the source tree, the quickstart's recipe loads
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
                    "--quiet", "--target", str(target), str(wheel)], check=True,
                   capture_output=True)
    code = ("import nasbert, sys; from nasbert.recipe import load_recipe; "
            "from nasbert.space import SearchSpace; r = load_recipe('quickstart'); "
            "print(nasbert.__file__.startswith(sys.argv[1]), SearchSpace.from_yaml(r.space).name)")
    out = subprocess.run([sys.executable, "-c", code, str(target)], cwd=tmp_path,
                         env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True)
    assert out.stdout.split() == ["True", "minilm_l6"], out.stderr
