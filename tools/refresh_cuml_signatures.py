"""Refresh ``kdci_ray/cluster/cuml_signatures.json``, the cuML / cuPy signature snapshot.

``tests/test_cuml_signatures.py`` checks every cuML and cuPy call in ``kdci_ray`` against that
snapshot, so a wrong keyword (``PCA(random_state=...)``) fails on a machine without a GPU or
cuML. The snapshot describes the versions the ``gpu`` extra of ``pyproject.toml`` allows: this
script downloads the wheels of their lower bounds with pip (no dependencies, no GPU needed; ~80 MB)
and reads the parameters, methods and attributes of each name in ``TARGETS`` from the sources
(``ast`` for ``.py``; a small parser of ``def`` headers for Cython ``.pyx``; the signature Cython
embeds in a compiled module's docstring when there is no source).

To refresh (after changing the ``gpu`` extra, or to use another cuML or cuPy name):

    python tools/refresh_cuml_signatures.py             # downloads the wheels with pip
    python tools/refresh_cuml_signatures.py --wheels D  # or reads wheels already in folder D

then add the new names to ``TARGETS`` if the code uses more, run
``pytest tests/test_cuml_signatures.py`` and fix the calls it reports.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = ROOT / "kdci_ray" / "cluster" / "cuml_signatures.json"
PACKAGES = ("cuml-cu13", "cupy-cuda13x")  # distributions of the gpu extra that are read
TARGETS = (  # every cuML / cuPy name kdci_ray uses
    "cuml.decomposition.PCA",
    "cuml.cluster.KMeans",
    "cupy.asarray",
    "cupy.asnumpy",
    "cupy.cuda.runtime.getDeviceCount",
)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64")
PYTHON = "3.11"


# ----------------------------------------------------------------------------- versions


def gpu_extra(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, str]:
    """``{distribution: specifier}`` of the ``gpu`` extra."""
    data = tomllib.loads(pyproject.read_text())
    out = {}
    for req in data["project"]["optional-dependencies"]["gpu"]:
        m = re.match(r"\s*([A-Za-z0-9_.-]+)\s*(.*)", req)
        out[m.group(1).lower()] = m.group(2).strip()
    return out


def lower_bound(spec: str) -> str | None:
    """The version of ``>=V``, ``~=V`` or ``==V`` in a specifier, else None."""
    m = re.search(r"(?:>=|~=|==)\s*([0-9][0-9A-Za-z.]*)", spec)
    return m.group(1) if m else None


# ----------------------------------------------------------------------------- signatures


def _signature(args: ast.arguments, method: bool) -> dict:
    positional = [a.arg for a in args.posonlyargs + args.args]
    if method and positional and positional[0] in ("self", "cls"):
        positional = positional[1:]
    keyword = [a.arg for a in args.args if a.arg in positional] + [a.arg for a in args.kwonlyargs]
    return {"positional": positional, "keyword": keyword,
            "varargs": args.vararg is not None, "varkw": args.kwarg is not None}


def _outside_quotes(text: str, start: int = 0):
    """``(index, char, bracket depth after it)`` for each character outside string quotes."""
    depth, quote = 0, ""
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        else:
            depth += (ch in "([{") - (ch in ")]}")
            yield i, ch, depth


def _split_top(text: str) -> list[str]:
    """Split at commas outside brackets and quotes."""
    cuts = [i for i, ch, depth in _outside_quotes(text) if ch == "," and depth == 0]
    parts = [text[a + 1:b] for a, b in zip([-1, *cuts], [*cuts, len(text)], strict=True)]
    return parts if parts[-1].strip() else parts[:-1]


def _cython_params(params: str) -> ast.arguments:
    """Parameters of a Cython header ast cannot read (typed: ``int n=3``): names only."""
    clean = []
    for part in _split_top(params):
        head = part.split("=", 1)[0].strip()
        if head in ("*", "/") or head.startswith("**"):
            clean.append(head)
            continue
        star = "*" if head.startswith("*") else ""
        name = re.findall(r"\w+", head)[-1]  # `double[:] x` / `int n` -> the last word
        clean.append(star + name + ("=None" if "=" in part else ""))
    return ast.parse(f"def f({', '.join(clean)}): pass").body[0].args


def _header(text: str, start: int) -> tuple[str, int]:
    """The parameter text of the ``(`` at ``start`` up to its matching ``)``, and the end."""
    for i, ch, depth in _outside_quotes(text, start):
        if ch in ")]}" and depth == 0:
            return text[start + 1:i], i
    raise ValueError("unbalanced parentheses")


def _def_args(params: str) -> ast.arguments:
    try:
        return ast.parse(f"def f({params}): pass").body[0].args
    except SyntaxError:
        return _cython_params(params)


# ----------------------------------------------------------------------------- modules


class Tree:
    """The unpacked wheels: resolves dotted names to sources and describes them."""

    def __init__(self, roots: list[Path]) -> None:
        self.roots = roots

    def module(self, dotted: str) -> Path | None:
        parts = dotted.split(".")
        for root in self.roots:
            base = root.joinpath(*parts)
            for cand in (base / "__init__.py", base.with_suffix(".py"), base.with_suffix(".pyx")):
                if cand.is_file():
                    return cand
            compiled = sorted(base.parent.glob(base.name + ".*.so")) if base.parent.is_dir() else []
            if compiled:
                return compiled[0]
        return None

    def rel(self, path: Path) -> str:
        for root in self.roots:
            if path.is_relative_to(root):
                return path.relative_to(root).as_posix()
        return str(path)

    def find(self, dotted: str) -> tuple[Path, str]:
        """(module file, object name) of a dotted name (``cupy.cuda.runtime.getDeviceCount``)."""
        parts = dotted.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            path = self.module(".".join(parts[:cut]))
            if path is not None:
                if cut != len(parts) - 1:
                    raise LookupError(f"{dotted}: attribute of an attribute is not supported")
                return self.locate(path, ".".join(parts[:cut]), parts[-1], set())
        raise LookupError(f"{dotted}: no module of it in the wheels")

    def locate(self, path: Path, modname: str, name: str, seen: set) -> tuple[Path, str]:
        """Follow ``from X import name`` (and ``*``) until the module that defines ``name``."""
        if (path, name) in seen:
            raise LookupError(f"import cycle at {modname}.{name}")
        seen.add((path, name))
        if path.suffix == ".so":
            if _embedded(path, name) is None:
                raise LookupError(f"{modname}.{name}: no embedded signature in {path.name}")
            return path, name
        text = _source(path)
        if re.search(rf"^(?:cdef |cpdef )?(?:class|def)\s+{name}\b", text, re.M) or \
                re.search(rf"^cpdef\s+[\w\[\], ]*?\b{name}\s*\(", text, re.M):
            return path, name
        pkg = modname if path.name.startswith("__init__.") else modname.rpartition(".")[0]
        for mod, names in _imports(text, pkg):
            if name in names or "*" in names:
                src = self.module(mod)
                if src is None:
                    continue
                target = names.get(name, name)
                try:
                    return self.locate(src, mod, target, seen)
                except LookupError:
                    if "*" in names:
                        continue
                    raise
        raise LookupError(f"{modname}.{name}: not defined in {self.rel(path)}")

    def describe(self, dotted: str) -> dict:
        path, name = self.find(dotted)
        if path.suffix == ".so":
            return {"kind": "function", "source": self.rel(path),
                    "signature": _signature(_def_args(_embedded(path, name)), False)}
        text = _source(path)
        cls = _class_block(text, name)
        if cls is None:
            return {"kind": "function", "source": self.rel(path),
                    "signature": _function(text, name)}
        methods, attributes, bases = self.members(path, name, set())
        return {"kind": "class", "source": self.rel(path), "bases": bases,
                "methods": dict(sorted(methods.items())), "attributes": sorted(attributes)}

    def members(self, path: Path, name: str, seen: set) -> tuple[dict, set, list]:
        """Public methods (with ``__init__``) and attributes of a class and its in-wheel bases."""
        seen.add((path, name))
        text = _source(path)
        block = _class_block(text, name)
        if block is None:
            return {}, set(), []
        header, body = block
        methods: dict = {}
        attributes: set = set()
        bases: list = []
        modname = self.modname(path)
        pkg = modname if path.name.startswith("__init__.") else modname.rpartition(".")[0]
        imported = {alias: f"{mod}.{orig}" for mod, names in _imports(text, pkg)
                    for alias, orig in names.items() if alias != "*"}
        for base in _split_top(header):
            base = base.strip()
            if base and "=" not in base:
                bases.append(imported.get(base, f"{modname}.{base}"))
        for dotted in reversed(bases):  # the first base wins, as in the method resolution order
            try:
                bpath, bname = self.find(dotted)
            except LookupError:
                continue  # outside the wheels (sklearn, object): not described
            if bpath.suffix != ".so" and (bpath, bname) not in seen:
                bm, ba, _ = self.members(bpath, bname, seen)
                methods.update(bm)
                attributes |= ba
        own_methods, own_attributes = _class_members(body)
        methods.update(own_methods)
        attributes |= own_attributes
        public = {k: v for k, v in methods.items() if k == "__init__" or not k.startswith("_")}
        return public, {a for a in attributes if not a.startswith("_")}, bases

    def modname(self, path: Path) -> str:
        rel = Path(self.rel(path))
        parts = list(rel.parent.parts)
        if not rel.name.startswith("__init__."):
            parts.append(rel.name.split(".")[0])
        return ".".join(parts)


def _source(path: Path) -> str:
    """A ``.py`` / ``.pyx`` file without its triple-quoted strings (docstrings; lines kept)."""
    text = path.read_text(errors="replace")
    return re.sub(r"(\"\"\"|''')(.*?)\1", lambda m: "\n" * m.group(0).count("\n"), text,
                  flags=re.S)


def _imports(text: str, package: str) -> list[tuple[str, dict[str, str]]]:
    """``[(module, {local name: imported name})]`` of the ``from ... import`` statements
    (``cimport`` lines skipped; relative imports resolved against ``package``)."""
    out = []
    for m in re.finditer(r"^from\s+(\.*[\w.]*)\s+import\s+(\([^)]*\)|[^\n]*)", text, re.M):
        mod, names = m.group(1), m.group(2).strip("()")
        if mod.startswith("."):
            dots = len(mod) - len(mod.lstrip("."))
            base = package.split(".")
            base = base[:len(base) - dots + 1] if dots > 1 else base
            mod = ".".join(base + ([mod.lstrip(".")] if mod.lstrip(".") else []))
        table = {}
        for item in re.sub(r"#[^\n]*", "", names).split(","):
            words = item.split()
            if words:
                table[words[-1]] = words[0]  # `a as b` -> b: a
        out.append((mod, table))
    return out


def _embedded(path: Path, name: str) -> str | None:
    """The parameters Cython embeds in a compiled function's docstring (``name(a, b) -> T``)."""
    data = path.read_bytes()
    m = re.search(rb"(?<![\w.])" + re.escape(name.encode()) + rb"\(([^()\x00]*)\)(?: -> [\w.]+)?"
                  rb"(?=[\x00\n])", data)
    return m.group(1).decode() if m else None


def _function(text: str, name: str) -> dict:
    m = re.search(rf"^(?:cpdef [\w\[\], ]*?|def )\s*{name}\s*\(", text, re.M)
    params, _ = _header(text, m.end() - 1)
    return _signature(_def_args(params), False)


def _class_block(text: str, name: str) -> tuple[str, str] | None:
    """(base list, body) of top-level ``class name`` in ``text``, or None."""
    m = re.search(rf"^(?:cdef )?class\s+{name}\b\s*(\(?)", text, re.M)
    if m is None:
        return None
    header, end = "", m.end()
    if m.group(1):
        header, end = _header(text, m.end() - 1)
    rest = text[end:].split("\n", 1)[1] if "\n" in text[end:] else ""
    body = []
    for line in rest.split("\n"):
        if line.strip() and not line[0].isspace() and not line.lstrip().startswith("#"):
            break
        body.append(line)
    return header, "\n".join(body)


def _class_members(body: str) -> tuple[dict, set]:
    """Methods (with signatures) and attributes of a class body (its text, any indentation)."""
    lines = body.split("\n")
    indent = min((len(ln) - len(ln.lstrip()) for ln in lines if ln.strip()), default=4)
    methods, attributes = {}, set()
    for m in re.finditer(rf"^ {{{indent}}}(?:async )?(?:cpdef |def )[\w\[\], ]*?(\w+)\s*\(", body,
                         re.M):
        params, _ = _header(body, m.end() - 1)
        before = body[:m.start()].rstrip("\n").split("\n")
        decorators = []
        while before and before[-1].strip().startswith("@"):
            decorators.append(before.pop().strip())
        if "@property" in decorators or any(d.endswith(".setter") for d in decorators):
            attributes.add(m.group(1))
            continue
        static = "@staticmethod" in decorators
        methods[m.group(1)] = _signature(_def_args(params), not static)
    for m in re.finditer(rf"^ {{{indent}}}(\w+)\s*(?::[^=\n]+)?=(?!=)", body, re.M):
        attributes.add(m.group(1))  # class-level attribute (descriptors such as ReflectedAttr)
    attributes |= set(re.findall(r"\bself\.(\w+)\s*(?::[^=\n]+)?=(?!=)", body))
    return methods, attributes


# ----------------------------------------------------------------------------- main


def download(wheels: Path, pins: dict[str, str]) -> None:
    """``pip download`` the wheels of ``pins`` (Linux x86_64, CPython 3.11, no dependencies)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--python-version", PYTHON, "-d", str(wheels)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    subprocess.run(cmd + [f"{name}=={version}" for name, version in pins.items()], check=True)


def unpack(wheels: Path, pins: dict[str, str], into: Path) -> list[Path]:
    roots = []
    for name, version in pins.items():
        stem = name.replace("-", "_")
        found = sorted(wheels.glob(f"{stem}-{version}-*.whl"))
        if not found:
            raise SystemExit(f"no wheel of {name}=={version} in {wheels}")
        root = into / stem
        with zipfile.ZipFile(found[0]) as zf:
            zf.extractall(root)
        roots.append(root)
    return roots


def snapshot(roots: list[Path], pins: dict[str, str]) -> dict:
    tree = Tree(roots)
    return {"generated_by": "tools/refresh_cuml_signatures.py",
            "packages": pins, "cuml_version": pins.get("cuml-cu13"),
            "callables": {name: tree.describe(name) for name in TARGETS}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wheels", type=Path, help="folder with the wheels (else downloaded)")
    parser.add_argument("--out", type=Path, default=SNAPSHOT)
    args = parser.parse_args(argv)
    extra = gpu_extra()
    pins = {name: lower_bound(extra[name]) for name in PACKAGES}
    missing = [name for name, version in pins.items() if version is None]
    if missing:
        raise SystemExit(f"the gpu extra gives no lower bound for {', '.join(missing)}")
    with tempfile.TemporaryDirectory() as tmp:
        wheels = args.wheels
        if wheels is None:
            wheels = Path(tmp) / "wheels"
            download(wheels, pins)
        data = snapshot(unpack(wheels, pins, Path(tmp) / "src"), pins)
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {args.out} ({', '.join(f'{k} {v}' for k, v in pins.items())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
