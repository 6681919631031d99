"""Import guards: the package's layering, checked statically with ``ast`` (no imports run).

Every ``.py`` file under ``kdci_ray/`` is parsed, imports inside functions and ``if`` blocks
included (``import x``, ``from x import y``, relative ``from . import y`` and constant-string
``importlib.import_module`` / ``__import__`` calls). Two sets of rules:

- **The layer order** (``LAYERS``, lowest first; DESIGN.md's Layout): a top-level module or
  package of ``kdci_ray`` may import itself and the layers below its own, nothing beside or
  above it. Only imports under ``if TYPE_CHECKING:`` are exempt: they never run, they only name
  the type of an object handed down (the loop annotates its config as the distillation kind's
  ``ExperimentConfig`` without importing that kind).
- **Specific edges**, type-only imports included: ``kdci_ray.methods.*`` never imports
  ``kdci_ray.kdci`` or ``ray`` (KDCI is a plug-in the loop applies; methods run without Ray);
  ``kdci_ray.models``, ``kdci_ray.kdci`` and ``kdci_ray.cgn`` never import ``kdci_ray.methods``;
  ``kdci_ray.results`` never imports ``ray``; a method module (dafl, fast, cmi, deepinv,
  mosaickd, dfnd) never imports another method module: what two methods share lives in a shared
  module (``methods/inversion.py``, ``methods/open_world.py``, ``bn_statistics``, ``losses``,
  ``pool``, ...).

And the light layers load nothing heavy: ``import kdci_ray.results`` (what ``kdci-ray report``
needs) and ``import kdci_ray.config`` load neither torch nor Ray.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = "kdci_ray"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
METHOD_MODULES = frozenset({"dafl", "fast", "cmi", "deepinv", "mosaickd", "dfnd"})
FRONT_DOOR = "front door"  # kdci_ray/__init__.py and kdci_ray/api.py: one unit

# lowest first; a unit may import itself and any unit of a lower layer
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "atomic", "threads", "environment"),  # the ground: import nothing of the package
    ("config", "data", "models", "cluster", "cache"),
    ("methods", "kdci"),
    ("train",),  # the one loop, resume, the Ray Train adapter, teachers
    ("cgn",),  # SKDCGN's parts (its own schema included)
    ("experiments",),  # the kinds: schema, trial, result row
    ("search",),
    ("results",),  # Ray-free: reads a sweep directory
    ("engine",),  # the Ray layer: placement, pre-trial steps, Tune, resume
    (FRONT_DOOR,),
    ("cli",),
)
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}
TOP_MODULES = frozenset(p.stem for p in ROOT.iterdir() if p.suffix == ".py" or p.is_dir())


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def module_of(path: Path) -> tuple[str, bool]:
    """``kdci_ray/methods/fast.py`` -> ("kdci_ray.methods.fast", False); packages -> True."""
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def unit_of(module: str) -> str | None:
    """The layer unit of a ``kdci_ray`` module: its top-level package or module (``kdci_ray``
    itself and ``kdci_ray.api``: the front door); None outside the package."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    if len(parts) == 1 or parts[1] == "api":
        return FRONT_DOOR
    return parts[1]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _nodes(tree: ast.AST) -> Iterator[tuple[ast.AST, bool]]:
    """Every node with whether it sits under ``if TYPE_CHECKING:`` (its body, not its else)."""
    stack: list[tuple[ast.AST, bool]] = [(tree, False)]
    while stack:
        node, type_only = stack.pop()
        yield node, type_only
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack += [(child, True) for child in node.body]
            stack += [(child, type_only) for child in node.orelse]
            continue
        stack += [(child, type_only) for child in ast.iter_child_nodes(node)]


def imports(source: str, module: str,
            is_package: bool) -> Iterator[tuple[int, str, str, bool]]:
    """``(line, imported module, statement, type_only)`` for every import in ``source``.
    ``from m import n`` yields ``m`` and ``m.n`` (``n`` may be a submodule); relative imports
    are resolved; ``type_only``: under ``if TYPE_CHECKING:``."""
    for node, type_only in _nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, f"import {alias.name}", type_only
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names = ", ".join(a.name for a in node.names)
            text = f"from {'.' * node.level}{node.module or ''} import {names}"
            # ``from kdci_ray import engine`` imports the subpackage, not the front door
            if base != PACKAGE or any(a.name not in TOP_MODULES for a in node.names):
                yield node.lineno, base, text, type_only
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{base}.{alias.name}", text, type_only
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else \
                func.id if isinstance(func, ast.Name) else ""
            arg = node.args[0]
            if name in ("import_module", "__import__") and isinstance(arg, ast.Constant) \
                    and isinstance(arg.value, str) and not arg.value.startswith("."):
                yield node.lineno, arg.value, f"{name}({arg.value!r})", type_only


def forbidden_edge(module: str, target: str) -> str | None:
    """Why ``module`` may not import ``target`` by a specific rule (None: no rule says so)."""
    if _within(module, f"{PACKAGE}.methods"):
        if _within(target, f"{PACKAGE}.kdci"):
            return "methods must not import kdci_ray.kdci (KDCI is a plug-in of the loop)"
        if _within(target, "ray"):
            return "methods must not import ray"
    if _within(module, f"{PACKAGE}.results") and _within(target, "ray"):
        return "kdci_ray.results must not import ray (it reads a sweep directory without Ray)"
    for layer in ("models", "kdci", "cgn"):
        if _within(module, f"{PACKAGE}.{layer}") and _within(target, f"{PACKAGE}.methods"):
            return f"kdci_ray.{layer} must not import kdci_ray.methods"
    parts, target_parts = module.split("."), target.split(".")
    if len(parts) == 3 and parts[:2] == [PACKAGE, "methods"] and parts[2] in METHOD_MODULES \
            and len(target_parts) >= 3 and target_parts[:2] == [PACKAGE, "methods"] \
            and target_parts[2] in METHOD_MODULES and target_parts[2] != parts[2]:
        return ("a method module must not import another method module "
                "(move the shared piece into a shared module)")
    return None


def layer_problem(module: str, target: str) -> str | None:
    """Why the layer order forbids ``module`` importing ``target`` (None: allowed)."""
    unit, other = unit_of(module), unit_of(target)
    if unit is None or other is None or unit == other:
        return None
    for name in (unit, other):
        if name not in RANK:
            return (f"kdci_ray.{name} is in no layer: add it to LAYERS in "
                    "tests/test_import_guards.py")
    if RANK[other] < RANK[unit]:
        return None
    where = "beside" if RANK[other] == RANK[unit] else "above"
    return f"layer order: {unit} must not import {other} ({where} it)"


def forbidden(module: str, target: str, type_only: bool = False) -> str | None:
    """Why ``module`` may not import ``target``: a specific rule, else (for an import that
    runs) the layer order."""
    return forbidden_edge(module, target) or (None if type_only else layer_problem(module, target))


def violations(source: str, path: str, module: str, is_package: bool = False) -> list[str]:
    """``file:line: statement  [rule]`` for each forbidden import, in line order."""
    found: dict[str, int] = {}
    for line, target, text, type_only in imports(source, module, is_package):
        why = forbidden(module, target, type_only)
        if why is not None:
            found.setdefault(f"{path}:{line}: {text}  [{why}]", line)
    return sorted(found, key=found.__getitem__)


def test_package_layering() -> None:
    files = sorted(ROOT.rglob("*.py"))
    modules = {module_of(f)[0] for f in files}
    # the guard must see what it guards (a moved tree would otherwise pass vacuously)
    assert {f"{PACKAGE}.methods.{m}" for m in METHOD_MODULES} <= modules
    assert {f"{PACKAGE}.models", f"{PACKAGE}.kdci", f"{PACKAGE}.cgn", f"{PACKAGE}.experiments",
            f"{PACKAGE}.engine", f"{PACKAGE}.results", f"{PACKAGE}.train.loop"} <= modules
    unplaced = sorted({unit_of(m) for m in modules} - set(RANK))
    assert not unplaced, f"modules in no layer (add them to LAYERS): {unplaced}"
    found: list[str] = []
    for path in files:
        module, is_package = module_of(path)
        rel = str(path.relative_to(ROOT.parent))
        found += violations(path.read_text(encoding="utf-8"), rel, module, is_package)
    assert not found, "forbidden imports:\n" + "\n".join(found)


@pytest.mark.parametrize("module", ["kdci_ray.results", "kdci_ray.config"])
def test_light_layers_load_neither_torch_nor_ray(module: str) -> None:
    """``python -X importtime -c "import kdci_ray.results"`` lists every module the import
    loads: neither torch nor Ray may be among them."""
    run = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                         capture_output=True, text=True, check=True, cwd=ROOT.parent)
    loaded = {line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines()
              if line.startswith("import time:")}
    assert f"{module}" in loaded  # the output is what it is thought to be
    heavy = sorted(m for m in loaded if m.split(".")[0] in ("torch", "ray"))
    assert not heavy, f"import {module} loads {heavy[:5]}"


# ----------------------------------------------------------------------------- the guard itself

BAD_METHOD = """
import ray.train
from kdci_ray.methods.inversion import shift_flip
from kdci_ray.methods.cmi import decision_adversarial

def later():
    from .. import kdci
    from . import dfnd, bn_statistics
    import importlib
    return importlib.import_module("kdci_ray.kdci.plugin")
"""


def test_guard_flags_a_violating_method_module() -> None:
    found = violations(BAD_METHOD, "kdci_ray/methods/fast.py", "kdci_ray.methods.fast")
    assert [v.split(":")[1] for v in found] == ["2", "4", "7", "8", "10"]
    assert "import ray.train" in found[0] and "must not import ray" in found[0]
    assert "from kdci_ray.methods.cmi import" in found[1] and "another method" in found[1]
    assert "from .. import kdci" in found[2] and "kdci_ray.kdci" in found[2]
    assert "from . import dfnd, bn_statistics" in found[3] and "another method" in found[3]
    assert "import_module('kdci_ray.kdci.plugin')" in found[4]


@pytest.mark.parametrize("module,source", [
    ("kdci_ray.models.small", "from kdci_ray.methods.bn_statistics import bn_inputs\n"),
    ("kdci_ray.kdci.plugin", "def f():\n    from ..methods import base\n"),
    ("kdci_ray.cgn", "import kdci_ray.methods\n"),
])
def test_guard_flags_lower_layers_importing_methods(module: str, source: str) -> None:
    is_package = module == "kdci_ray.cgn"
    found = violations(source, "x.py", module, is_package)
    assert found and "must not import kdci_ray.methods" in found[0]


PLANTED = """
from kdci_ray.errors import ConfigError

def summary(sweep_dir):
    import ray
    from kdci_ray.engine.sweep_dir import read_record
    from ..search import Search
    return read_record(sweep_dir)
"""


def test_guard_flags_a_planted_upward_import() -> None:
    """An import inside a function that goes up the order (results -> engine), one beside
    nothing (results -> search is down: allowed) and ``ray`` in results are reported."""
    found = violations(PLANTED, "kdci_ray/results/__init__.py", "kdci_ray.results", True)
    assert [v.split(":")[1] for v in found] == ["5", "6"]
    assert "kdci_ray.results must not import ray" in found[0]
    assert "layer order: results must not import engine (above it)" in found[1]


@pytest.mark.parametrize("module,source,rule", [
    ("kdci_ray.train.run_reporter", "def f():\n    from kdci_ray.search.cases import NAME\n",
     "train must not import search (above it)"),
    ("kdci_ray.data.photos", "from kdci_ray.models import create_model\n",
     "data must not import models (beside it)"),
    ("kdci_ray.experiments.kinds", "from ..engine import plan_sweep\n",
     "experiments must not import engine (above it)"),
    ("kdci_ray.engine.runner", "from kdci_ray import thread_env\n",
     "engine must not import front door (above it)"),
    ("kdci_ray.errors", "import kdci_ray.atomic\n", "errors must not import atomic (beside it)"),
    ("kdci_ray.newthing", "import os\nfrom kdci_ray.errors import ConfigError\n",
     "kdci_ray.newthing is in no layer"),
])
def test_guard_flags_imports_against_the_layer_order(module: str, source: str,
                                                     rule: str) -> None:
    found = violations(source, "x.py", module)
    assert len(found) >= 1 and rule in found[0]


def test_guard_allows_lower_layers_own_layer_and_type_only_imports() -> None:
    source = ("from typing import TYPE_CHECKING\nfrom kdci_ray.config.cases import NAME\n"
              "from .resume import Snapshot\nfrom kdci_ray.methods import METHODS\n"
              "if TYPE_CHECKING:\n    from kdci_ray.experiments.dfkd import ExperimentConfig\n"
              "else:\n    pass\n")
    assert violations(source, "kdci_ray/train/loop.py", "kdci_ray.train.loop") == []
    upward_else = "if TYPE_CHECKING:\n    pass\nelse:\n    import kdci_ray.engine\n"
    assert len(violations(upward_else, "x.py", "kdci_ray.train.loop")) == 1
    front = "from kdci_ray import api\nfrom kdci_ray.threads import thread_env\n"
    assert violations(front, "kdci_ray/__init__.py", "kdci_ray", True) == []


def test_guard_allows_shared_modules() -> None:
    source = ("from kdci_ray.methods.base import Method\nfrom .inversion import BestBatch\n"
              "from . import bn_statistics, open_world\n"
              "from kdci_ray.data.selection import select\nimport torch\n")
    assert violations(source, "kdci_ray/methods/fast.py", "kdci_ray.methods.fast") == []
    registry = "from kdci_ray.methods.cmi import CMI\nfrom .dafl import DAFL\n"
    assert violations(registry, "kdci_ray/methods/__init__.py", "kdci_ray.methods", True) == []


def test_type_only_imports_still_obey_the_specific_rules() -> None:
    source = "if TYPE_CHECKING:\n    from kdci_ray.kdci import KDCI\n"
    found = violations(source, "kdci_ray/methods/base.py", "kdci_ray.methods.base")
    assert len(found) == 1 and "must not import kdci_ray.kdci" in found[0]
