"""The one sweep engine, for every experiment kind (``kinds``: DFKD, SKDCGN).

``plan_sweep`` reads and checks an experiment without Ray (``plan``); ``sweep_lock`` makes the
run the directory's one writer (``lock``); ``check_output`` / ``prepare_output`` decide and
record the sweep directory (``sweep_dir``; what ``--overwrite`` may remove: ``sweep_files``);
``check_inputs`` does the kind's shared work before any trial; ``run_sweep`` is the thin Ray
layer (``runner``): Ray started or joined, the cluster checked once, a Tune experiment of
function trials, then the results report (``kdci_ray.results``). ``kdci_ray.sweep``
(``kdci_ray.api``) runs these steps.
"""

from kdci_ray.engine.lock import SweepBusy, locked_report, sweep_lock
from kdci_ray.engine.plan import SweepPlan, check_inputs, plan_sweep, smoke_seed_filter
from kdci_ray.engine.runner import (
    LOCAL_RAY_ENV,
    SweepOutcome,
    check_resources,
    init_ray,
    run_sweep,
)
from kdci_ray.engine.sweep_dir import check_output, prepare_output

__all__ = ["LOCAL_RAY_ENV", "SweepBusy", "SweepOutcome", "SweepPlan", "check_inputs",
           "check_output", "check_resources", "init_ray", "locked_report", "plan_sweep",
           "prepare_output", "run_sweep", "smoke_seed_filter", "sweep_lock"]
