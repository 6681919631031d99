"""Every file in ``tune_configs/`` is headed by the command that runs it and its measured (or
estimated) cost, and plans without error (keys, cases, kinds; no data read)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdci_ray.engine import plan_sweep

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "tune_configs").glob("*.yaml"))


def test_there_are_configs() -> None:
    assert len(CONFIGS) >= 10


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_each_config_names_its_command_and_cost_and_plans(path: Path) -> None:
    lines = path.read_text().splitlines()
    assert lines[0].startswith(f"# kdci-ray sweep tune_configs/{path.name}"), lines[0]
    header = [line for line in lines if line.startswith("#")]
    assert any("Cost" in line for line in header), f"{path.name}: no cost in its header"
    assert not any("TBD" in line for line in header), f"{path.name}: cost not measured yet"
    assert plan_sweep(path).configs
