"""The two test tiers: ``make check`` (no Ray, no ``kdci-ray`` drivers) and ``make test`` (all).

A test is ``slow`` when it starts Ray or runs a driver process. That is set here, not by hand:

- at collection, a test is marked ``slow`` when it uses the ``ray_session`` fixture (directly or
  through another fixture), or when its body, a fixture it requests or a helper of its module it
  calls (transitively) calls ``ray.init``, builds a ``ClusterInABox`` / ``AutoscalingCluster`` or
  starts a driver process (``kdci-ray``, a ``tools/`` or ``benchmarks/`` script, ``make``; not
  ``python -c`` or ``git``);
- in the fast tier (``make check``, or any ``pytest -m "not slow"``), a test that reaches a Ray
  start or a driver process anyway (an in-process ``kdci_ray.api.sweep`` whose checks pass, say)
  is skipped at that moment, naming what it started: the fast tier never starts Ray, whatever the
  test's code looks like, and ``make test`` runs that test in full.
"""

from __future__ import annotations

import ast
import importlib.abc
import importlib.util
import inspect
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

FAST_ENV = "KDCI_TEST_FAST"  # set by `make check`
RAY_FIXTURES = {"ray_session"}
# calls that start Ray or a process, by the name they are called with
STARTS = {"init": "ray", "ClusterInABox": "a cluster", "AutoscalingCluster": "a cluster",
          "Popen": "a driver", "run": "a driver", "check_output": "a driver",
          "check_call": "a driver", "call": "a driver"}
OWNERS = {"init": {"ray"}, "Popen": {"subprocess"}, "run": {"subprocess"},
          "check_output": {"subprocess"}, "check_call": {"subprocess"}, "call": {"subprocess"}}
# what a driver process runs: the command line, a repository script, make
DRIVER_WORDS = ("kdci-ray", "kdci_ray.cli", "kdci_ray/cli.py", "tools/", "benchmarks/", "make")


def fast_tier(config: pytest.Config) -> bool:
    """Whether this run is the fast tier: ``KDCI_TEST_FAST=1`` or a marker expression that
    leaves out ``slow``."""
    expr = " ".join((config.getoption("markexpr", "") or "").split())
    return os.environ.get(FAST_ENV) == "1" or "not slow" in expr


# ------------------------------------------------------------------- marking at collection


@cache
def _module(path: str) -> tuple[dict[str, ast.AST], frozenset[str]]:
    """The module-level functions (and fixtures) of a test module by name, and the names of its
    constants that spell a driver command (``CLI = ["-m", "kdci_ray.cli"]``)."""
    tree = ast.parse(Path(path).read_text())
    functions = {node.name: node for node in tree.body
                 if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    commands = {target.id for node in tree.body if isinstance(node, ast.Assign)
                and _names_a_driver(node.value, frozenset())
                for target in node.targets if isinstance(target, ast.Name)}
    for node in tree.body:  # `from test_cli_interrupt import CLI`
        source = Path(path).parent / f"{getattr(node, 'module', None)}.py"
        if isinstance(node, ast.ImportFrom) and node.level == 0 and source.is_file():
            theirs = _module(str(source))[1]
            commands |= {a.asname or a.name for a in node.names if a.name in theirs}
    return functions, frozenset(commands)


def _names_a_driver(node: ast.AST, commands: frozenset[str]) -> bool:
    """Whether the expression spells a driver command, or names a constant that does."""
    text = ast.unparse(node)
    return any(word in text for word in DRIVER_WORDS) or any(
        isinstance(sub, ast.Name) and sub.id in commands for sub in ast.walk(node))


def _called(node: ast.AST) -> list[tuple[str, str | None, ast.Call]]:
    """(name, owner, call) of every call in ``node``: ``ray.init()`` is ("init", "ray", ...)."""
    out = []
    for call in ast.walk(node):
        if isinstance(call, ast.Call):
            func = call.func
            if isinstance(func, ast.Name):
                out.append((func.id, None, call))
            elif isinstance(func, ast.Attribute):
                owner = func.value.id if isinstance(func.value, ast.Name) else None
                out.append((func.attr, owner, call))
    return out


def starts_what(path: str, names: list[str]) -> str | None:
    """What the module functions ``names`` start (following the module's own helpers), if
    anything: "ray", "a cluster", "a driver"."""
    functions, commands = _module(path)
    seen: set[str] = set()
    todo = [n for n in names if n in functions]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for called, owner, call in _called(functions[name]):
            if called in STARTS and (called not in OWNERS or owner in OWNERS[called]):
                # a process counts when it runs a driver (not `python -c ...`, not `git`)
                if STARTS[called] != "a driver" or _names_a_driver(call, commands):
                    return STARTS[called]
            if called in functions and called not in seen:
                todo.append(called)
    return None


def mark_slow_tests(items: list[pytest.Item]) -> None:
    """Mark ``slow`` every collected test that starts Ray or a process (module docstring)."""
    for item in items:
        if item.get_closest_marker("slow"):
            continue
        fixtures = set(getattr(item, "fixturenames", ()))
        why = "ray" if fixtures & RAY_FIXTURES else None
        function = getattr(item, "function", None)
        if why is None and function is not None:
            path = inspect.getsourcefile(function)
            why = starts_what(path, [function.__name__, *fixtures]) if path else None
        if why:
            item.add_marker(pytest.mark.slow(reason=f"starts {why}"))


# ------------------------------------------------------------ the fast tier's runtime guard


class _Current:
    test: str | None = None  # the node id of the running test (fast tier only)


def _refuse(what: str) -> None:
    pytest.skip(f"starts {what}: in `make test`, not in the fast tier (tests/tiers.py)")


def _guarded_init(init):
    def init_refused(*args, **kwargs):
        if _Current.test is not None:
            _refuse("Ray")
        return init(*args, **kwargs)

    init_refused.__wrapped__ = init
    return init_refused


class _RayInitGuard(importlib.abc.MetaPathFinder):
    """Wraps ``ray.init`` once ``ray`` is imported (without importing it first)."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "ray":
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec("ray")
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_and_guard(module):
            exec_module(module)
            module.init = _guarded_init(module.init)

        loader.exec_module = exec_and_guard
        sys.meta_path.remove(self)
        return spec


def _is_driver(args) -> bool:
    argv = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
    words = [os.fsdecode(a) if isinstance(a, (bytes, os.PathLike)) else str(a) for a in argv]
    first = Path(words[0]).name if words else ""
    return first in ("make", "kdci-ray") or any(w in a for a in words for w in DRIVER_WORDS)


def install_fast_tier_guard() -> None:
    """In the fast tier: a Ray start or a driver process skips the test that reaches it."""
    if "ray" in sys.modules:
        sys.modules["ray"].init = _guarded_init(sys.modules["ray"].init)
    else:
        sys.meta_path.insert(0, _RayInitGuard())
    popen_init = subprocess.Popen.__init__

    def popen_refused(self, args, *rest, **kwargs):
        if _Current.test is not None and _is_driver(args):
            line = args if isinstance(args, str) else " ".join(map(str, args))
            _refuse(f"a driver process ({line[:80]})")
        popen_init(self, args, *rest, **kwargs)

    subprocess.Popen.__init__ = popen_refused


def running(nodeid: str | None) -> None:
    _Current.test = nodeid
