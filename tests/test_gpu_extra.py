"""The ``gpu`` extra matches torch's CUDA: static checks of pyproject.toml and constraints.txt.

torch 2.13.0's Linux x86_64 wheel is a CUDA 13 build (it requires ``cuda-toolkit`` 13.0.3), so
the extra must name CUDA 13 packages: with ``cuml-cu12`` the resolver finds no solution. Resolved
for Linux x86_64 / CPython 3.11 with ``uv pip compile --extra gpu`` (no local wheels, no pip
config): torch 2.13.0, cuml-cu13 26.10.0, cupy-cuda13x 14.2.0, cuda-toolkit 13.0.3.0.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERIFIED_CUML = (26, 10, 0)  # the cuML the resolve above and cuml_signatures.json were made with
VERIFIED_CUPY = (14, 2, 0)
CUDA12 = re.compile(r"cu(?:da)?-?12|cuda12x", re.I)  # cuml-cu12, cupy-cuda12x, nvidia-*-cu12


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def _requirement(extra: list[str], name: str) -> str:
    found = [r for r in extra if re.match(rf"{re.escape(name)}\s*(?:[<>=~!;\[]|$)", r)]
    assert len(found) == 1, f"the gpu extra names {name} {len(found)} times: {extra}"
    return found[0]


def test_gpu_extra_is_cuda13_with_a_real_lower_bound() -> None:
    extra = PYPROJECT["project"]["optional-dependencies"]["gpu"]
    cuml = _requirement(extra, "cuml-cu13")
    bound = re.search(r">=\s*([0-9][0-9.]*)", cuml)
    assert bound, f"{cuml!r}: no lower bound (without one a resolver may pick the 0.0.0a0 stub)"
    assert _version(bound.group(1)) >= VERIFIED_CUML
    upper = re.search(r"<\s*([0-9][0-9.]*)", cuml)
    assert upper and _version(upper.group(1)) > _version(bound.group(1))
    cupy = _requirement(extra, "cupy-cuda13x")
    bound = re.search(r">=\s*([0-9][0-9.]*)", cupy)
    assert bound and _version(bound.group(1)) >= VERIFIED_CUPY


def test_no_cuda12_package_anywhere() -> None:
    for name in ("pyproject.toml", "constraints.txt"):
        lines = [ln.split("#")[0] for ln in (ROOT / name).read_text().splitlines()]
        hits = [ln.strip() for ln in lines if CUDA12.search(ln)]
        assert not hits, f"{name} names CUDA 12 packages: {hits}"


def test_torch_pin_is_the_cuda13_build() -> None:
    """The pins the extra was resolved against; moving them means resolving again."""
    deps = PYPROJECT["project"]["dependencies"]
    assert "torch==2.13.0" in deps and "ray[train,tune]==2.60.0" in deps


def test_tabulate_is_not_a_dependency() -> None:
    """Nothing imports tabulate (the Markdown tables are written by kdci_ray.results.table itself,
    not pandas' ``DataFrame.to_markdown``, which would need it)."""
    deps = PYPROJECT["project"]["dependencies"]
    assert not any(d.startswith("tabulate") for d in deps)
    for path in (ROOT / "kdci_ray").rglob("*.py"):
        text = path.read_text()
        assert "import tabulate" not in text and "from tabulate" not in text, path
        assert not re.search(r"\.to_markdown\(", text), f"{path} calls pandas' to_markdown"
