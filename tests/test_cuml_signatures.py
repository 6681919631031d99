"""Every cuML / cuPy call in kdci_ray, checked against the signatures of the pinned cuML.

``kdci_ray/cluster/cuml_signatures.json`` holds the parameters, methods and attributes of the cuML
and cuPy names the package uses, read from the wheels of the ``gpu`` extra's lower bounds by
``tools/refresh_cuml_signatures.py``. The GPU path cannot run here (no GPU, no cuML), so these
tests read the code with ``ast`` instead: a keyword the pinned cuML does not take (the old
``PCA(random_state=...)``), a method or attribute it lacks, or a cuML / cuPy name missing from the
snapshot fails.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "kdci_ray"
SNAPSHOT = json.loads((PACKAGE / "cluster" / "cuml_signatures.json").read_text())
ROOTS = ("cuml", "cupy")


def _imports_gpu(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] in ROOTS
                                                for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ROOTS:
            return True
    return False


def gpu_files() -> list[Path]:
    """The files of kdci_ray that import cuML or cuPy."""
    return [p for p in sorted(PACKAGE.rglob("*.py")) if _imports_gpu(ast.parse(p.read_text()))]


class Checker:
    """Resolves names to cuML / cuPy callables and checks their uses against ``snapshot``."""

    def __init__(self, snapshot: dict) -> None:
        self.callables = snapshot["callables"]
        self.problems: list[str] = []
        self.checked: set[str] = set()

    def check_source(self, source: str, where: str) -> list[str]:
        tree = ast.parse(source)
        aliases = self._aliases(tree)
        scopes = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
        scopes += [m for c in tree.body if isinstance(c, ast.ClassDef) for m in c.body
                   if isinstance(m, ast.FunctionDef | ast.AsyncFunctionDef)]
        scopes.append(ast.Module(body=[n for n in tree.body if n not in scopes
                                       and not isinstance(n, ast.ClassDef)], type_ignores=[]))
        for scope in scopes:
            self._check_scope(scope, aliases, where)
        return self.problems

    @staticmethod
    def _aliases(tree: ast.AST) -> dict[str, str]:
        """Local name -> dotted cuML / cuPy name, from every import in the file."""
        out = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] in ROOTS:
                        out[a.asname or a.name.split(".")[0]] = a.name if a.asname else \
                            a.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ROOTS:
                for a in node.names:
                    out[a.asname or a.name] = f"{node.module}.{a.name}"
        return out

    def _dotted(self, node: ast.AST, aliases: dict[str, str]) -> str | None:
        if isinstance(node, ast.Name):
            return aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self._dotted(node.value, aliases)
            return f"{base}.{node.attr}" if base else None
        return None

    def _instance(self, node: ast.AST, aliases: dict, instances: dict) -> str | None:
        """The cuML class whose instance ``node`` is (``km`` of ``km = KMeans(...)``)."""
        if isinstance(node, ast.Name):
            return instances.get(node.id)
        if isinstance(node, ast.Call):
            name = self._dotted(node.func, aliases)
            if name in self.callables and self.callables[name]["kind"] == "class":
                return name
        return None

    def _check_scope(self, scope: ast.AST, aliases: dict, where: str) -> None:
        instances: dict[str, str] = {}
        for node in ast.walk(scope):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and \
                    isinstance(node.targets[0], ast.Name):
                cls = self._instance(node.value, aliases, {})
                if cls:
                    instances[node.targets[0].id] = cls
        called = set()
        for node in ast.walk(scope):
            if not isinstance(node, ast.Call):
                continue
            called.add(id(node.func))
            name = self._dotted(node.func, aliases)
            at = f"{where}:{node.lineno}"
            if name is not None:
                self._check_call(name, node, at)
            elif isinstance(node.func, ast.Attribute):
                cls = self._instance(node.func.value, aliases, instances)
                if cls:
                    self._check_member(cls, node.func.attr, at, node)
        for node in ast.walk(scope):
            if isinstance(node, ast.Attribute) and id(node) not in called:
                cls = self._instance(node.value, aliases, instances)
                if cls:
                    self._check_member(cls, node.attr, f"{where}:{node.lineno}", None)

    def _check_call(self, name: str, call: ast.Call, at: str) -> None:
        spec = self.callables.get(name)
        if spec is None:
            self.problems.append(f"{at}: {name} is not in cuml_signatures.json (add it to "
                                 f"TARGETS in tools/refresh_cuml_signatures.py and refresh)")
            return
        self.checked.add(name)
        sig = spec["methods"]["__init__"] if spec["kind"] == "class" else spec["signature"]
        self._check_args(name, sig, call, at)

    def _check_member(self, cls: str, attr: str, at: str, call: ast.Call | None) -> None:
        spec = self.callables[cls]
        self.checked.add(f"{cls}.{attr}")
        if call is None:
            if attr not in spec["attributes"] and attr not in spec["methods"]:
                self.problems.append(f"{at}: {cls} has no attribute {attr!r} in the pinned cuML")
        elif attr in spec["methods"]:
            self._check_args(f"{cls}.{attr}", spec["methods"][attr], call, at)
        else:
            self.problems.append(f"{at}: {cls} has no method {attr!r} in the pinned cuML")

    def _check_args(self, name: str, sig: dict, call: ast.Call, at: str) -> None:
        positional = [a for a in call.args if not isinstance(a, ast.Starred)]
        if len(positional) > len(sig["positional"]) and not sig["varargs"]:
            self.problems.append(f"{at}: {name} takes {len(sig['positional'])} positional "
                                 f"arguments, {len(positional)} given")
        for kw in call.keywords:
            if kw.arg is not None and kw.arg not in sig["keyword"] and not sig["varkw"]:
                self.problems.append(f"{at}: {name} takes no keyword {kw.arg!r} in the pinned "
                                     f"cuML (accepts: {', '.join(sig['keyword']) or 'none'})")


def check(source: str, where: str = "<src>") -> list[str]:
    return Checker(SNAPSHOT).check_source(source, where)


# ----------------------------------------------------------------------------- the package


def test_the_gpu_files_are_found() -> None:
    files = {p.relative_to(ROOT).as_posix() for p in gpu_files()}
    assert "kdci_ray/cluster/cuml_backend.py" in files


@pytest.mark.parametrize("path", gpu_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_cuml_and_cupy_call_matches_the_pinned_signatures(path: Path) -> None:
    checker = Checker(SNAPSHOT)
    problems = checker.check_source(path.read_text(), path.relative_to(ROOT).as_posix())
    assert not problems, "\n".join(problems)


def test_the_backend_uses_what_the_snapshot_describes() -> None:
    """The checker really saw the calls (a silent alias-resolution failure would pass)."""
    checker = Checker(SNAPSHOT)
    path = PACKAGE / "cluster" / "cuml_backend.py"
    assert checker.check_source(path.read_text(), "cuml_backend.py") == []
    assert {"cuml.decomposition.PCA", "cuml.cluster.KMeans", "cupy.asarray", "cupy.asnumpy",
            "cupy.cuda.runtime.getDeviceCount", "cuml.decomposition.PCA.fit_transform",
            "cuml.cluster.KMeans.fit_predict", "cuml.cluster.KMeans.cluster_centers_",
            "cuml.cluster.KMeans.inertia_"} <= checker.checked


# ----------------------------------------------------------------------------- the checker


OLD_PCA = """
def fit(x, dims, seed):
    import cupy as cp
    from cuml.decomposition import PCA
    return PCA(n_components=dims, random_state=seed).fit_transform(cp.asarray(x))
"""


def test_the_old_pca_call_is_caught() -> None:
    problems = check(OLD_PCA)
    assert len(problems) == 1 and "takes no keyword 'random_state'" in problems[0]
    assert "cuml.decomposition.PCA" in problems[0]


@pytest.mark.parametrize("source, message", [
    ("from cuml.cluster import KMeans\nkm = KMeans(n_clusters=2)\nkm.fit_predict(z, weights=w)",
     "takes no keyword 'weights'"),
    ("from cuml.cluster import KMeans\nkm = KMeans(n_clusters=2)\nc = km.centers_",
     "no attribute 'centers_'"),
    ("from cuml.cluster import KMeans\nKMeans(n_clusters=2).fit_labels(z)", "no method"),
    ("from cuml.cluster import KMeans\nKMeans(2)", "0 positional arguments, 1 given"),
    ("import cuml\ncuml.cluster.DBSCAN(eps=1.0)", "cuml.cluster.DBSCAN is not in"),
    ("import cupy\ncupy.asarray(x, stream=s)", "takes no keyword 'stream'"),
    ("import cupy as cp\ncp.cuda.runtime.getDeviceCount(0)", "0 positional arguments"),
    ("from cuml.decomposition import PCA as P\np = P(n_components=2)\np.fit(x, sample_weight=w)",
     "takes no keyword 'sample_weight'"),
])
def test_the_checker_catches(source: str, message: str) -> None:
    problems = check(source)
    assert problems and message in problems[0], problems


def test_the_checker_accepts_valid_uses() -> None:
    src = ("import cupy as cp\nfrom cuml.cluster import KMeans\n"
           "def f(z):\n    km = KMeans(n_clusters=2, init='k-means++', n_init=1, random_state=0)\n"
           "    lab = cp.asnumpy(km.fit(z).labels_)\n    return km.inertia_, lab, km.n_iter_\n")
    assert check(src) == []


# ----------------------------------------------------------------------------- versions


def _lower_bound(package: str) -> str:
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["gpu"]
    spec = next(r for r in extra if re.match(rf"{package}\s*[<>=~!]", r))
    return re.search(r"(?:>=|~=|==)\s*([0-9][0-9A-Za-z.]*)", spec).group(1)


def test_the_snapshot_is_of_the_pinned_versions() -> None:
    assert SNAPSHOT["cuml_version"] == _lower_bound("cuml-cu13")
    assert SNAPSHOT["packages"] == {"cuml-cu13": _lower_bound("cuml-cu13"),
                                    "cupy-cuda13x": _lower_bound("cupy-cuda13x")}


def _refresh_tool():
    path = ROOT / "tools" / "refresh_cuml_signatures.py"
    spec = importlib.util.spec_from_file_location("refresh_cuml_signatures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_snapshot_lists_the_refresh_targets() -> None:
    tool = _refresh_tool()
    assert set(SNAPSHOT["callables"]) == set(tool.TARGETS)
    assert tool.lower_bound(tool.gpu_extra()["cuml-cu13"]) == SNAPSHOT["cuml_version"]


def test_the_refresh_parser_reads_cython_and_python(tmp_path: Path) -> None:
    """The refresh script's parser on a small made-up package (no download)."""
    pkg = tmp_path / "gpu_lib"
    (pkg / "core").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from gpu_lib.funcs import convert  # NOQA\n")
    (pkg / "funcs.py").write_text("def convert(a, dtype=None, *, copy=None):\n    return a\n")
    (pkg / "base.py").write_text(
        "class Base:\n    def __init__(self, *, verbose=False):\n        self.verbose = verbose\n"
        "    def get_params(self, deep=True):\n        return {}\n")
    (pkg / "core" / "__init__.py").write_text(
        "from gpu_lib.core.model import (\n    Model,  # the estimator\n)\n")
    (pkg / "core" / "model.pyx").write_text(
        "from gpu_lib.base import Base\nfrom libc.stdint cimport uintptr_t\n\n"
        "class Model(Base):\n    '''Doc.\n\n    n_parts : int (default = 2)\n    '''\n"
        "    centers_ = object()\n\n    def __init__(self, *, n_parts=2, verbose=False):\n"
        "        super().__init__(verbose=verbose)\n        self.n_parts = n_parts\n\n"
        "    @property\n    def size_(self):\n        return 1\n\n"
        "    def fit(self, X, y=None, int n_iter=3) -> 'Model':\n"
        "        cdef uintptr_t p = 0\n        self.inertia_ = 0.0\n        return self\n")
    tree = _refresh_tool().Tree([tmp_path])
    model = tree.describe("gpu_lib.core.Model")
    assert model["kind"] == "class" and model["source"] == "gpu_lib/core/model.pyx"
    assert model["methods"]["__init__"]["keyword"] == ["n_parts", "verbose"]
    assert model["methods"]["__init__"]["positional"] == []
    assert model["methods"]["fit"]["positional"] == ["X", "y", "n_iter"]
    assert "get_params" in model["methods"]  # inherited from Base
    assert model["attributes"] == ["centers_", "inertia_", "n_parts", "size_", "verbose"]
    func = tree.describe("gpu_lib.convert")
    assert func == {"kind": "function", "source": "gpu_lib/funcs.py",
                    "signature": {"positional": ["a", "dtype"],
                                  "keyword": ["a", "dtype", "copy"],
                                  "varargs": False, "varkw": False}}
