"""The numbers stay bit-identical through refactors: every DFKD method without and with KDCI
(plus KDCI, shift and ablation variants) and an SKDCGN experiment, run in-process, against the
digests recorded in ``tests/golden/fingerprints.json`` (``tools/fingerprints.py --write`` records
them after a deliberate numeric change)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("fingerprints_tool",
                                                  ROOT / "tools" / "fingerprints.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_run_matches_the_golden_fingerprints():
    tool = _tool()
    golden = json.loads(tool.GOLDEN.read_text())
    if golden["environment"] != tool.environment():
        pytest.skip(f"golden digests recorded in {golden['environment']}, this is "
                    f"{tool.environment()}: CPU bits depend on them")
    now = tool.fingerprints(log=lambda line: None)
    assert tool.differences(golden, now) == []


def test_a_changed_number_is_reported():
    tool = _tool()
    golden = {"runs": {"a": {"student": "1", "metrics": "2"}, "b": {"metrics": "3"}}}
    now = {"runs": {"a": {"student": "1", "metrics": "9"}, "c": {"metrics": "3"}}}
    assert tool.differences(golden, now) == ["a: metrics digest differs", "b: no longer run",
                                             "c: new"]
