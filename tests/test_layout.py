"""The house: every module of ``nasbert`` sits in a layer, a module imports only its own
layer or lower ones, the import graph has no circle, no stage imports the trainer, and
the package's data ships with it.

The layers, lowest first (:data:`LAYERS`): base utilities -> the architecture (space,
costs) -> transformers helpers and the teacher (hf, teacher) -> the model and its own
tools (ops, configuration, importance, quantisation, model) -> supernet and extract ->
export -> data -> measuring (the latency protocol and its tables, reporting) -> recipe
and run -> train -> latency -> search -> finetune -> compress -> pipeline -> cli.

Where this departs from the order issue 35 sketched, deliberately, because the code
shows a better one:

* ``hf`` and ``teacher`` come before the model, not after it: the supernet builds from
  the teacher's weights through ``hf.bert`` and int8 quantisation quiets ONNX Runtime's
  logging through ``hf.quiet``; the teacher needs nothing but the space.
* ``importance`` and ``quantize`` left ``compress/`` for the model's layer: the supernet
  inherits the teacher through importance scoring (``train``), and the model quantises
  on load, the latency protocol times int8 and export writes it (``quantize``). They are
  the model's tools, not steps that take a model folder and write one.
* ``supernet`` and ``extract`` (the issue placed neither) sit right above the model:
  ``extract`` makes a standalone model of a supernet's path, ``export`` reads what it
  writes, and ``RunDir`` loads the supernet.
* ``export`` comes right after the model, far before ``compress``: the latency protocol
  times ONNX Runtime graphs that ``export`` writes, and ``compress.deploy`` and
  ``compress.ngram`` export through it.
* the latency *protocol and tables* (``latency.protocol``, ``latency.measure``,
  ``latency.predictors``) sit below ``run``, while the latency *stage*
  (``latency.stage``, profile and fit) stays after ``train``: ``RunDir`` loads every
  stage's artefacts, latency tables included (the design card), and ``reporting`` names
  the machine through ``latency.measure``. The longest prefix that covers a module
  decides its layer, so the rest of ``nasbert.latency`` is the stage.
* ``recipe`` ranks with ``run`` (a run holds its recipe), after ``data``, whose corpus
  configuration a recipe holds.

A new module must be ranked here (a module of a subpackage takes its subpackage's rank,
e.g. ``nasbert.search.plan`` is the search stage's): the test fails for one that is not.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "nasbert"
# lowest first; a module (or a subpackage, by prefix: the longest prefix wins) may import
# only modules of its own layer or lower ones. "nasbert" itself is the package's
# __init__ only.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base utilities", ("nasbert", "nasbert._lazy", "nasbert._register", "nasbert.errors",
                        "nasbert.io", "nasbert.digest", "nasbert.provenance", "nasbert.schema",
                        "nasbert.resources", "nasbert.losses", "nasbert.distributed")),
    ("architecture", ("nasbert.space", "nasbert.costs")),
    ("transformers helpers, teacher", ("nasbert.hf", "nasbert.teacher", "nasbert.pooling")),
    ("model", ("nasbert.ops", "nasbert.configuration_nasbert", "nasbert.importance",
               "nasbert.quantize", "nasbert.model", "nasbert.configuration_static",
               "nasbert.static")),
    ("supernet, extract", ("nasbert.supernet", "nasbert.extract")),
    ("export", ("nasbert.export",)),
    ("data", ("nasbert.data", "nasbert.families")),
    ("measuring", ("nasbert.latency.protocol", "nasbert.latency.measure",
                   "nasbert.latency.predictors", "nasbert.reporting")),
    ("recipe, run", ("nasbert.recipe", "nasbert.run")),
    ("stage: train", ("nasbert.train",)),
    ("stage: latency", ("nasbert.latency",)),
    ("stage: search", ("nasbert.search",)),
    ("stage: finetune", ("nasbert.finetune", "nasbert.embed")),
    ("stage: compress", ("nasbert.compress",)),
    ("pipeline", ("nasbert.pipeline",)),
    ("cli", ("nasbert.cli", "nasbert.__main__")),
]
TRAINER = "nasbert.train"
# the end of the pipeline, the only modules that may import the trainer
ENDS = ("nasbert.pipeline", "nasbert.cli")


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


def _covers(prefix: str, module: str) -> bool:
    if prefix == "nasbert":  # the package's __init__, not everything under it
        return module == prefix
    return module == prefix or module.startswith(prefix + ".")


def _layer(module: str) -> int | None:
    """The layer of ``module``: that of the longest prefix that covers it."""
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if _covers(p, module) and (best is None or len(p) > best[0]):
                best = (len(p), i)
    return None if best is None else best[1]


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


def test_every_module_is_ranked_and_every_rank_names_a_module(graph):
    unranked = sorted(m for m in graph if _layer(m) is None)
    assert not unranked, f"rank these in LAYERS (tests/test_layout.py): {unranked}"
    stale = sorted(p for _, prefixes in LAYERS for p in prefixes
                   if not any(_covers(p, m) for m in graph))
    assert not stale, f"LAYERS names modules that no longer exist: {stale}"
    # the rule the ranking follows: a subpackage's new module takes its rank, a new
    # top-level module has none until it is given one
    assert _layer("nasbert.search.plan") == _layer("nasbert.search.stage")
    assert _layer("nasbert.not_yet_ranked") is None
    assert _layer("nasbert.latency.measure") < _layer("nasbert.run") < _layer(
        "nasbert.latency.stage")


def test_no_module_imports_a_higher_layer(graph):
    wrong = []
    for m, deps in sorted(graph.items()):
        for d in sorted(deps):
            if _layer(d) > _layer(m):
                wrong.append(f"{m} ({LAYERS[_layer(m)][0]}) imports {d} "
                             f"({LAYERS[_layer(d)][0]})")
    assert not wrong, "imports of a higher layer:\n" + "\n".join(wrong)


def test_no_stage_imports_the_trainer(graph):
    """Only the end of the pipeline (``pipeline``, ``cli``) imports the trainer; a stage
    reads earlier stages' files through ``RunDir``, which may load their readers."""
    for m, deps in graph.items():
        if m in ENDS or _covers(TRAINER, m):
            continue
        trainer = sorted(d for d in deps if _covers(TRAINER, d))
        assert not trainer, f"{m} imports the trainer ({trainer}); read the run through RunDir"


def test_shipped_spaces_and_recipes_are_top_level_folders():
    """The YAML lives where the design card says (``search_spaces/``, ``supernet/``), none
    inside the package, and what nasbert finds by name is those files."""
    from nasbert.recipe import load_recipe
    from nasbert.resources import folder, names
    from nasbert.space import SearchSpace

    inside = sorted(PACKAGE.rglob("*.yaml"))
    assert not inside, f"shipped YAML belongs in search_spaces/ or supernet/: {inside}"
    for kind, source in (("spaces", "search_spaces"), ("recipes", "supernet")):
        assert folder(kind) == ROOT / source
        assert names(kind) == sorted(p.stem for p in (ROOT / source).glob("*.yaml"))
    assert {"minilm_l6", "nasbert_base", "tiny"} <= set(names("spaces"))
    assert {"quickstart", "minilm_wiki", "bert_base_paper"} <= set(names("recipes"))
    for name in names("recipes"):
        recipe = load_recipe(name)  # a recipe names its space: a shipped file
        assert recipe.space.is_file() and recipe.space.parent == folder("spaces")
        assert SearchSpace.from_yaml(recipe.space).name == recipe.space.stem


def _sources(tmp_path: Path) -> Path:
    """A copy of what `pip install .` reads (building writes build/ beside the sources)."""
    import shutil

    source = tmp_path / "source"
    for name in ("nasbert", "search_spaces", "supernet"):
        shutil.copytree(ROOT / name, source / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    return source


# run by an installed nasbert, away from the source tree: where its modules, its shipped
# folder and the quickstart's space come from, and the shipped names
_CHECK = """
import json, sys
from importlib import resources
import nasbert
from nasbert.recipe import load_recipe
from nasbert.resources import names
from nasbert.space import SearchSpace
r = load_recipe("quickstart")
print(json.dumps({"package": nasbert.__file__, "spaces": str(resources.files("nasbert.spaces")),
                  "recipes": str(resources.files("nasbert.recipes")), "space": str(r.space),
                  "name": SearchSpace.from_yaml(r.space).name, "names": names("spaces")}))
"""


def _installed(python: str, cwd: Path, env: dict[str, str]) -> dict:
    import json
    import subprocess

    out = subprocess.run([python, "-c", _CHECK], cwd=cwd, env=env, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _clean_env() -> dict[str, str]:
    import os

    # no PYTHONPATH: the installed nasbert, not the one this test runs from
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return env | {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}


def test_a_built_wheel_carries_the_spaces_and_recipes(tmp_path):
    """What `pip install .` (not editable) installs: every module, and the top-level YAML
    as nasbert/spaces/ and nasbert/recipes/ (`nasbert quickstart` needs them)."""
    import subprocess
    import sys
    import zipfile

    source = _sources(tmp_path)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps",
                    "--no-build-isolation", "--quiet", "-w", str(tmp_path)], check=True,
                   capture_output=True)
    wheel = next(tmp_path.glob("nasbert-*.whl"))
    inside = set(zipfile.ZipFile(wheel).namelist())
    # every subpackage: setup.cfg lists them by hand
    missing = sorted(p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*.py")
                     if p.relative_to(ROOT).as_posix() not in inside)
    assert not missing, f"add their packages to setup.cfg's [options] packages: {missing}"
    for kind, folder in (("spaces", "search_spaces"), ("recipes", "supernet")):
        for path in (ROOT / folder).glob("*.yaml"):
            assert f"nasbert/{kind}/{path.name}" in inside
    assert not any(n.startswith(("search_spaces/", "supernet/")) for n in inside)
    # installed from the wheel, away from the source tree, the quickstart's recipe loads
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
                    "--quiet", "--target", str(target), str(wheel)], check=True,
                   capture_output=True)
    found = _installed(sys.executable, tmp_path, _clean_env() | {"PYTHONPATH": str(target)})
    assert found["package"] == str(target / "nasbert" / "__init__.py")
    assert found["spaces"] == str(target / "nasbert" / "spaces")
    assert found["recipes"] == str(target / "nasbert" / "recipes")
    assert found["space"] == str(target / "nasbert" / "spaces" / "minilm_l6.yaml")
    assert found["name"] == "minilm_l6"


def test_an_editable_install_finds_the_top_level_folders(tmp_path):
    """What `scripts/install.py` makes (`pip install -e`): setuptools' editable finder
    maps nasbert.spaces and nasbert.recipes to the checkout's search_spaces/ and
    supernet/, so a YAML added there after installing is found by name at once.

    In a throwaway venv, never the one the tests run in: it sees this interpreter's
    packages (torch, pyyaml, setuptools, pip) through a .pth file naming its
    site-packages (``--system-site-packages`` would give the base interpreter's instead);
    .pth files inside those are not run, so no other editable nasbert is on the path."""
    import shutil
    import site
    import subprocess
    import sys

    source = _sources(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                              "['purelib'])"], check=True, capture_output=True, text=True)
    Path(purelib.stdout.strip(), "_deps.pth").write_text("\n".join(site.getsitepackages()))
    env = _clean_env()
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                    "--no-index", "--quiet", "-e", str(source)], check=True,
                   capture_output=True, env=env)
    shutil.copy(source / "search_spaces" / "tiny.yaml", source / "search_spaces" / "added.yaml")
    away = tmp_path / "elsewhere"
    away.mkdir()
    found = _installed(python, away, env)
    assert found["package"] == str(source / "nasbert" / "__init__.py")
    assert found["spaces"] == str(source / "search_spaces")
    assert found["recipes"] == str(source / "supernet")
    assert found["space"] == str(source / "search_spaces" / "minilm_l6.yaml")
    assert found["name"] == "minilm_l6"
    assert "added" in found["names"]
