"""Import guards: the package's layering, checked statically with ``ast`` (no imports run).

Every ``.py`` file under ``kdci_ray/`` is parsed, imports inside functions and ``if`` blocks
included (``import x``, ``from x import y``, relative ``from . import y`` and constant-string
``importlib.import_module`` / ``__import__`` calls). Forbidden:

- ``kdci_ray.methods.*`` importing ``kdci_ray.kdci`` or ``ray`` (KDCI is a plug-in the loop
  applies; methods run without Ray);
- ``kdci_ray.models``, ``kdci_ray.kdci`` or ``kdci_ray.cgn`` importing ``kdci_ray.methods``;
- a method module (dafl, fast, cmi, deepinv, mosaickd, dfnd) importing another method module:
  what two methods share lives in a shared module (``methods/inversion.py``,
  ``methods/open_world.py``, ``hooks``, ``losses``, ``pool``, ...).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = "kdci_ray"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
METHOD_MODULES = frozenset({"dafl", "fast", "cmi", "deepinv", "mosaickd", "dfnd"})


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def module_of(path: Path) -> tuple[str, bool]:
    """``kdci_ray/methods/fast.py`` -> ("kdci_ray.methods.fast", False); packages -> True."""
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def imports(source: str, module: str, is_package: bool) -> Iterator[tuple[int, str, str]]:
    """``(line, imported module, statement)`` for every import in ``source``. ``from m import n``
    yields ``m`` and ``m.n`` (``n`` may be a submodule); relative imports are resolved."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, f"import {alias.name}"
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names = ", ".join(a.name for a in node.names)
            text = f"from {'.' * node.level}{node.module or ''} import {names}"
            yield node.lineno, base, text
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{base}.{alias.name}", text
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else \
                func.id if isinstance(func, ast.Name) else ""
            arg = node.args[0]
            if name in ("import_module", "__import__") and isinstance(arg, ast.Constant) \
                    and isinstance(arg.value, str) and not arg.value.startswith("."):
                yield node.lineno, arg.value, f"{name}({arg.value!r})"


def forbidden(module: str, target: str) -> str | None:
    """Why ``module`` may not import ``target`` (None: allowed)."""
    if _within(module, f"{PACKAGE}.methods"):
        if _within(target, f"{PACKAGE}.kdci"):
            return "methods must not import kdci_ray.kdci (KDCI is a plug-in of the loop)"
        if _within(target, "ray"):
            return "methods must not import ray"
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


def violations(source: str, path: str, module: str, is_package: bool = False) -> list[str]:
    """``file:line: statement  [rule]`` for each forbidden import, in line order."""
    found: dict[str, int] = {}
    for line, target, text in imports(source, module, is_package):
        why = forbidden(module, target)
        if why is not None:
            found.setdefault(f"{path}:{line}: {text}  [{why}]", line)
    return sorted(found, key=found.__getitem__)


def test_package_layering() -> None:
    files = sorted(ROOT.rglob("*.py"))
    modules = {module_of(f)[0] for f in files}
    # the guard must see what it guards (a moved tree would otherwise pass vacuously)
    assert {f"{PACKAGE}.methods.{m}" for m in METHOD_MODULES} <= modules
    assert {f"{PACKAGE}.models", f"{PACKAGE}.kdci", f"{PACKAGE}.cgn"} <= modules
    found: list[str] = []
    for path in files:
        module, is_package = module_of(path)
        rel = str(path.relative_to(ROOT.parent))
        found += violations(path.read_text(encoding="utf-8"), rel, module, is_package)
    assert not found, "forbidden imports:\n" + "\n".join(found)


# ----------------------------------------------------------------------------- the guard itself

BAD_METHOD = """
import ray.train
from kdci_ray.methods.inversion import shift_flip
from kdci_ray.methods.cmi import decision_adversarial

def later():
    from .. import kdci
    from . import dfnd, hooks
    import importlib
    return importlib.import_module("kdci_ray.kdci.plugin")
"""


def test_guard_flags_a_violating_method_module() -> None:
    found = violations(BAD_METHOD, "kdci_ray/methods/fast.py", "kdci_ray.methods.fast")
    assert [v.split(":")[1] for v in found] == ["2", "4", "7", "8", "10"]
    assert "import ray.train" in found[0] and "must not import ray" in found[0]
    assert "from kdci_ray.methods.cmi import" in found[1] and "another method" in found[1]
    assert "from .. import kdci" in found[2] and "kdci_ray.kdci" in found[2]
    assert "from . import dfnd, hooks" in found[3] and "another method" in found[3]
    assert "import_module('kdci_ray.kdci.plugin')" in found[4]


@pytest.mark.parametrize("module,source", [
    ("kdci_ray.models.small", "from kdci_ray.methods.hooks import bn_inputs\n"),
    ("kdci_ray.kdci.plugin", "def f():\n    from ..methods import base\n"),
    ("kdci_ray.cgn", "import kdci_ray.methods\n"),
])
def test_guard_flags_lower_layers_importing_methods(module: str, source: str) -> None:
    is_package = module == "kdci_ray.cgn"
    found = violations(source, "x.py", module, is_package)
    assert len(found) == 1 and "must not import kdci_ray.methods" in found[0]


def test_guard_allows_shared_modules() -> None:
    source = ("from kdci_ray.methods.base import Method\nfrom .inversion import BestBatch\n"
              "from . import hooks, open_world\nfrom kdci_ray.data.selection import select\n"
              "import torch\n")
    assert violations(source, "kdci_ray/methods/fast.py", "kdci_ray.methods.fast") == []
    registry = "from kdci_ray.methods.cmi import CMI\nfrom .dafl import DAFL\n"
    assert violations(registry, "kdci_ray/methods/__init__.py", "kdci_ray.methods", True) == []
