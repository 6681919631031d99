"""``kdci_ray.sweep``: a sweep from a Python script, checked exactly as ``kdci-ray sweep``.

    import kdci_ray

    result = kdci_ray.sweep("tune_configs/quickstart.yaml", overrides={"train.rounds": 40},
                            output="results/mine", smoke=True)
    print(result.summary[["method", "kdci", "seed", "acc"]])

The command line is a thin layer over this function: the same plan (every grid point resolved,
``--only`` and smoke mode applied), the same output-directory rules and record, the same
pre-trial checks, one Ray layer, the same report. Every problem is a ``ConfigError`` raised
before a trial starts; so is a second writer: the run holds the output directory's lock
(``kdci_ray.engine.lock``) from its checks to its report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd


@dataclass
class SweepResult:
    """What a sweep leaves: its directory, the per-trial summary (``summary.csv``'s rows), the
    summary Markdown, Tune's ``ResultGrid``, and the trials that failed, stopped early or were
    left unfinished."""

    directory: Path
    summary: pd.DataFrame
    table: str
    result_grid: Any = None
    errors: list[str] = field(default_factory=list)
    stopped: dict[str, str] = field(default_factory=dict)
    unfinished: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every trial finished."""
        return not (self.errors or self.stopped or self.unfinished)


def _overrides(overrides: dict[str, Any] | list[str] | None) -> dict[str, Any] | list[str]:
    if overrides is None:
        return []
    if isinstance(overrides, dict | list):
        return overrides
    raise TypeError(f"overrides must be a dict of dotted keys or a list of 'key=value' "
                    f"strings, got {type(overrides).__name__}")


def sweep(config: str | Path | dict[str, Any], overrides: dict[str, Any] | list[str] | None = None,
          output: str | Path | None = None, smoke: bool = False, resume: bool = False,
          overwrite: bool = False, only: list[str] | None = None, num_samples: int = 1,
          callbacks: list | None = None, search_alg: Any = None, scheduler: Any = None,
          metric: str | None = None, mode: str | None = None, kind: str | None = None,
          single: bool = False, log=print) -> SweepResult:
    """Run an experiment's search on Ray Tune and return its results.

    ``config``: an experiment YAML, a dict with the same content (``search`` included), or a
    sweep directory to resume. ``overrides``: dotted keys that win over the file and the grid.
    ``output``: the sweep directory (default ``results/<stem>/``; ``overwrite`` replaces an
    earlier sweep there, ``resume`` continues an interrupted one). ``only``: ``KEY=VALUE``
    filters as ``--only``. ``num_samples``: Tune samples every grid point this many times
    (sampled keys drawn anew each time). ``callbacks``, ``search_alg``, ``scheduler``,
    ``metric``/``mode``: passed to Tune (``metric`` defaults to ``eval/acc``, ``max``, with a
    search algorithm or scheduler); a scheduler that stops trials early is refused where the
    trials drive Ray Train worker groups. ``kind`` forces an experiment kind (``skdcgn``).
    ``log`` hears progress lines. Raises ``ConfigError`` (``kdci_ray.errors``) on bad input.
    """
    from kdci_ray.engine.plan import check_sweep_arguments

    check_sweep_arguments(config=config, overrides=overrides, output=output, smoke=smoke,
                          resume=resume, overwrite=overwrite, only=only,
                          num_samples=num_samples, kind=kind, single=single)
    from kdci_ray.engine import (
        check_inputs,
        check_output,
        check_resources,
        init_ray,
        plan_sweep,
        prepare_output,
        run_sweep,
        sweep_lock,
    )
    from kdci_ray.engine.runner import check_tuning, shutdown_ray
    from kdci_ray.results import summary
    from kdci_ray.search.only import describe, parse_only
    from kdci_ray.train.runtime import limit_threads

    limit_threads()
    plan = plan_sweep(config, _overrides(overrides), None if output is None else str(output),
                      smoke, single=single, only=only, num_samples=num_samples, kind=kind)
    if only:
        log(describe(parse_only(only, plan.kind.schema), len(plan.configs), plan.grid_size))
    check_tuning(plan, scheduler, search_alg)
    with sweep_lock(plan.out_dir, log=log):  # one writer: held from the checks to the report
        check_output(plan, overwrite, resume=resume)
        check_inputs(plan, log)
        started = init_ray()
        try:
            check_resources(plan)  # a trial the cluster can never place: refused, nothing written
            prepare_output(plan, overwrite, resume=resume)
            log(f"{plan.trials} trial(s) -> {plan.out_dir}" + (" (resumed)" if resume else ""))
            outcome = run_sweep(plan, resume=resume, callbacks=callbacks, search_alg=search_alg,
                                scheduler=scheduler, metric=metric, mode=mode)
        finally:
            if started:
                shutdown_ray()
    return SweepResult(plan.out_dir, summary(plan.out_dir), outcome.table, outcome.result_grid,
                       outcome.errors, outcome.stopped, outcome.unfinished)
