"""The Ray side of each experiment kind: what the one sweep engine does for a kind.

A kind (``kdci_ray.experiments``) is its schema, trial and result row. Here each kind gets what
running it as a sweep takes, the same hooks for every kind: its pre-trial steps (``check_inputs``:
read every input once, do the work the trials share, before Ray starts a trial), the placement
check once Ray is up (``check_resources``), what one trial asks Tune for, how many run at once,
and how Tune treats its trials (``TuneOptions``). ``kind_named`` gives the kind with these hooks
(``engine.dfkd.DFKDSweep``, ``engine.skdcgn.SKDCGNSweep``); a plan holds it (``plan.kind``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kdci_ray.experiments.kinds import (
    DEFAULT_KIND,
    KIND_KEY,
    KIND_NAMES,
    ExperimentKind,
    unknown_kind,
)

if TYPE_CHECKING:
    from kdci_ray.engine.plan import SweepPlan

__all__ = ["DEFAULT_KIND", "KIND_KEY", "KIND_NAMES", "ExperimentKind", "SweepKind", "TuneOptions",
           "kind_named"]


@dataclass(frozen=True)
class TuneOptions:
    """How Tune treats a kind's trials: its own retries (``max_failures``), whether one trial
    process serves the next (``reuse_actors``), and whether a scheduler may stop a trial early."""

    max_failures: int = 0
    reuse_actors: bool = True
    early_stop_ok: bool = True
    why_no_early_stop: str = ""


class SweepKind(ExperimentKind):
    """An experiment kind as the engine runs it: the kind's own hooks plus the Ray side
    (defaults: nothing to do, one CPU per trial, as many trials as fit)."""

    def check_inputs(self, plan: SweepPlan, log) -> None:
        """Before Ray starts a trial: read every input once, do the work the trials share."""

    def check_resources(self, plan: SweepPlan) -> None:
        """Ray is up: refuse a trial the cluster can never place."""

    def trial_resources(self, plan: SweepPlan) -> dict[str, float]:
        """What one trial asks Tune for."""
        return {"CPU": 1.0}

    def max_concurrent(self, plan: SweepPlan) -> int:
        """Trials at once (0: as many as the cluster's resources allow)."""
        return 0

    def tune_options(self, plan: SweepPlan) -> TuneOptions:
        return TuneOptions()


def kind_named(name: str, where: str = "") -> SweepKind:
    """The kind called ``name`` with its Ray side; an unknown one is an error naming the known
    ones."""
    from kdci_ray.engine.dfkd import DFKDSweep
    from kdci_ray.engine.skdcgn import SKDCGNSweep

    kinds = {k.name: k for k in (DFKDSweep(), SKDCGNSweep())}
    if name not in kinds:
        raise unknown_kind(name, where)
    return kinds[name]
