"""The project's seams, checked on the source: methods never import ray or kdci_ray.kdci."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

METHODS_DIR = Path(__file__).resolve().parents[1] / "kdci_ray" / "methods"
FORBIDDEN = ("ray", "kdci_ray.kdci")


def forbidden_imports(source: str, package: str = "kdci_ray.methods") -> list[str]:
    """Imports of ray / kdci_ray.kdci anywhere in ``source`` (absolute or relative)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
                found.append(name)
    return found


@pytest.mark.parametrize("source", [
    "import ray\n",
    "from ray import train\n",
    "import kdci_ray.kdci.plugin\n",
    "from kdci_ray.kdci import KDCI\n",
    "from kdci_ray import kdci\n",
    "from ..kdci import KDCI\n",
    "def f():\n    import ray.tune\n",
])
def test_checker_catches_every_import_form(source: str) -> None:
    assert forbidden_imports(source)


def test_checker_allows_torch_and_sibling_modules() -> None:
    assert not forbidden_imports("import torch\nfrom kdci_ray.methods.base import Method\n"
                                 "from .losses import kd_loss\nimport rays_of_light\n")


def test_method_files_import_neither_ray_nor_kdci() -> None:
    files = sorted(METHODS_DIR.glob("*.py"))
    assert len(files) >= 4
    offenders = {f.name: forbidden_imports(f.read_text()) for f in files}
    assert not {k: v for k, v in offenders.items() if v}, offenders


def test_only_the_task_branches_on_kdci_enabled() -> None:
    """The loop builds KDCI through ``build_kdci``, the one place that asks ``kdci.enabled``."""
    pkg = METHODS_DIR.parent
    # a validate.py only validates the setting (K against the refresh size); no branch.
    hits = [p.relative_to(pkg).as_posix() for p in pkg.rglob("*.py")
            if ".kdci.enabled" in p.read_text() and p.name != "validate.py"]
    assert hits == ["train/kdci_setup.py"], hits
