"""A sweep's directory: what it records (``sweep.yaml``) and what may be written into it.

A sweep writes into a new directory; ``--overwrite`` replaces an earlier sweep there and
``--resume`` continues the same sweep; anything else (a different sweep, a directory that is not
a sweep) is refused before anything is written.

``sweep.yaml`` records the experiment as launched (name, settings, overrides, search, --only)
and a ``digest`` of exactly that content, written at launch. A resume is allowed only if

- every started trial's saved ``config.yaml`` equals what the sweep to resume resolves to for
  that trial (its ``params.json``: the trial's Tune parameters), so finished and resumed trials
  in one table ran the same experiment, and
- the sweep to resume still matches the digest, which also catches an edit that no started
  trial shows yet (a grid value of a trial still pending).

A hand-edited or unreadable ``sweep.yaml`` is not trusted: resuming with the experiment YAML
(``CONFIG --output DIR --resume``) checks that experiment against the trials (and the digest,
when it is still readable) and then writes the record again.

The caller holds the directory's lock (``lock.sweep_lock``) around these checks and the run, so
they hold for the whole run; its lock file does not count as content. ``--overwrite`` removes
only what a sweep writes (``sweep_files``) and refuses, before deleting anything, a directory
that holds anything else.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from kdci_ray.atomic import atomic_write_text
from kdci_ray.config.cases import is_case_key
from kdci_ray.config.files import read_yaml
from kdci_ray.engine.lock import LOCK_FILE
from kdci_ray.engine.sweep_environment import check_resume_environment, write_environment
from kdci_ray.engine.sweep_files import foreign_problem, remove_sweep_entries
from kdci_ray.errors import ConfigError
from kdci_ray.results.record import (
    DIGEST,
    RECORD_KEYS,
    SWEEP_FILE,
    BadRecord,
    check_writable,
    load_record,
    read_record,
)

if TYPE_CHECKING:
    from kdci_ray.engine.plan import SweepPlan

__all__ = ["DIGEST", "RECORD_KEYS", "SWEEP_FILE", "BadRecord", "check_output", "check_writable",
           "load_record", "prepare_output", "read_record", "record_digest", "sweep_record",
           "verify_trials", "write_record"]

_HEADER = ("# kdci-ray sweep record, written at launch. `--resume` checks every started trial\n"
           "# and the digest against it: do not edit it (start a new sweep instead).\n")
_MAX_DIFFS = 3
_UNSET = "<unset>"


def sweep_record(plan: SweepPlan) -> dict[str, Any]:
    """What ``sweep.yaml`` holds: the experiment as launched (it identifies the sweep)."""
    record: dict[str, Any] = {"name": plan.name}
    if plan.kind.name != "dfkd":  # a distillation record reads as it did before kinds
        record["kind"] = plan.kind.name
    record.update(settings=plan.settings, overrides=plan.overrides, search=plan.search)
    if plan.num_samples != 1:
        record["num_samples"] = plan.num_samples
    if plan.only:
        record["only"] = plan.only
    return record


def _as_read(data: Any) -> Any:
    """``data`` as it reads back from YAML (what ``sweep.yaml`` and ``config.yaml`` hold)."""
    return yaml.safe_load(yaml.safe_dump(data, sort_keys=False))


def _body(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != DIGEST}


def record_digest(record: dict[str, Any]) -> str:
    """``sha256:<hex>`` of a record's content (its digest left out; key order ignored)."""
    text = json.dumps(_as_read(_body(record)), sort_keys=True, default=repr)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _has_tune_state(out: Path) -> bool:
    return any(out.glob("experiment_state-*.json"))


def _trial_dirs(out: Path) -> list[Path]:
    """The directories of started trials: those holding a saved ``config.yaml``."""
    return sorted(p for p in out.iterdir() if p.is_dir() and (p / "config.yaml").is_file())


def _looks_like_sweep(out: Path) -> bool:
    return _has_tune_state(out) or bool(_trial_dirs(out))


def _content(out: Path) -> list[str]:
    """The names in ``out`` (none while it is not a directory), its writer's lock file left
    out."""
    return [p.name for p in out.iterdir() if p.name != LOCK_FILE] if out.is_dir() else []


def _check_overwrite(out: Path) -> None:
    problem = foreign_problem(out)
    if problem:
        raise ConfigError(problem)


def check_output(plan: SweepPlan, overwrite: bool, resume: bool = False) -> None:
    """What ``prepare_output`` will do is allowed (raises otherwise; writes nothing but a
    probe file, removed at once)."""
    out = plan.out_dir
    if resume and overwrite:
        raise ConfigError("--resume continues a sweep and --overwrite replaces it: pass one")
    check_writable(out, "choose another --output, or make it writable")
    occupied = bool(_content(out))
    if resume:
        _check_resume(plan, occupied)
        return
    if not occupied:
        return
    try:
        recorded = load_record(out)
    except BadRecord as exc:
        _check_replace_bad_record(out, exc, overwrite)
        return
    if recorded is None and _looks_like_sweep(out):  # a sweep whose record was deleted
        _check_replace_bad_record(out, BadRecord(out / SWEEP_FILE, "it was deleted"), overwrite)
        return
    if recorded is None:
        raise ConfigError(
            f"refusing to write into {out}: it exists, is not empty and is not a kdci-ray "
            f"sweep directory (no {SWEEP_FILE}); choose another --output"
        )
    if overwrite:
        _check_overwrite(out)
    else:
        same = _body(recorded) == _as_read(sweep_record(plan))
        what = "the same sweep" if same else f"a different sweep ('{recorded.get('name')}')"
        hint = "pass --resume to continue it, --overwrite to replace it" if same else \
            "pass --overwrite to replace it"
        raise ConfigError(
            f"output directory {out} already holds {what}; {hint}, or choose another "
            f"directory with --output"
        )


def _check_replace_bad_record(out: Path, exc: BadRecord, overwrite: bool) -> None:
    """A new sweep into a directory whose ``sweep.yaml`` is not a record: ``--overwrite`` may
    replace it if the directory is a sweep's (or holds nothing else); else refused."""
    lone = _content(out) == [SWEEP_FILE]
    if overwrite and (lone or _looks_like_sweep(out)):
        _check_overwrite(out)
        return
    if lone or _looks_like_sweep(out):
        raise ConfigError(f"{exc}; pass --resume to resume the sweep there with this experiment "
                          f"(each started trial is checked against it), --overwrite to start "
                          f"again, or choose another --output")
    raise ConfigError(f"{exc}, and {out} holds no Ray Tune experiment: it may not be a kdci-ray "
                      f"sweep directory at all; choose another --output")


def _check_resume(plan: SweepPlan, occupied: bool) -> None:
    out = plan.out_dir
    broken = False
    try:
        recorded = load_record(out) if occupied else None
    except BadRecord:  # the trials are checked against the sweep to resume instead
        recorded, broken = None, True
    if recorded is None and occupied and _looks_like_sweep(out):  # its record was deleted
        broken = True
    if recorded is None and not broken:
        fix = "choose another --output" if occupied else \
            "run without --resume to start the sweep there"
        raise ConfigError(f"nothing to resume in {out}: it holds no kdci-ray sweep "
                          f"({SWEEP_FILE}); {fix}")
    ours = _as_read(sweep_record(plan))
    ours_digest = record_digest(ours)
    stored = recorded.get(DIGEST) if recorded is not None else None
    as_recorded = recorded is not None and _body(recorded) == ours
    if recorded is not None and not as_recorded and stored != ours_digest:
        edited = stored is not None and stored != record_digest(recorded)
        if edited:
            raise ConfigError(
                f"{out / SWEEP_FILE} was changed after the sweep started, and the experiment "
                f"given is not the one launched there either; restore {SWEEP_FILE} (or pass the "
                f"experiment YAML it was launched from), or start a new sweep with --output "
                f"elsewhere"
            )
        raise ConfigError(
            f"{out} holds a different sweep ('{recorded.get('name')}', launched with other "
            f"settings, grid or overrides) than the one given; resume it with "
            f"`kdci-ray sweep {out} --resume`, or choose another --output"
        )
    if not _has_tune_state(out):
        raise ConfigError(
            f"{out} holds the sweep but no Tune experiment state (it was stopped before its "
            f"first trial started); run it again with --overwrite"
        )
    verify_trials(plan, from_record=as_recorded)
    if stored is not None and stored != ours_digest:
        raise ConfigError(
            f"{out / SWEEP_FILE} was changed after the sweep started (it no longer matches the "
            f"digest written at launch, though no started trial shows the change yet); restore "
            f"it, or start a new sweep with --output elsewhere"
        )
    check_resume_environment(out)


def verify_trials(plan: SweepPlan, from_record: bool = True) -> None:
    """Every started trial in ``plan.out_dir`` saved the config the plan resolves to for its
    parameters; raises naming the first trial that did not and the first differing keys
    (``from_record``: the plan is what ``sweep.yaml`` holds, which words the advice)."""
    out = plan.out_dir
    lookup = plan.parsed.cases()
    source = f"{out / SWEEP_FILE}" if from_record else "the experiment given"
    fix = ("sweep.yaml was changed after the sweep started; restore it, or start a new sweep "
           "with --output elsewhere") if from_record else (
        "the sweep there was started with other settings; resume it with the experiment YAML "
        "it was launched from, or start a new sweep with --output elsewhere (or --overwrite to "
        "replace it)")
    for trial_dir in _trial_dirs(out):
        saved = read_yaml(trial_dir / "config.yaml")
        if not isinstance(saved, dict):
            raise ConfigError(f"trial {trial_dir.name}: its config.yaml holds no config; it "
                              f"cannot be checked, so {out} cannot be resumed: start a new "
                              f"sweep with --output elsewhere")
        params = _trial_params(trial_dir, saved, plan.search, lookup)
        try:
            expected = _as_read(plan.kind.schema.to_flat(plan.kind.resolve(
                plan.settings, plan.parsed.layer(params), plan.overrides)))
        except ConfigError as exc:
            raise ConfigError(f"trial {trial_dir.name} in {out}: its parameters {params} do not "
                              f"resolve under {source} ({exc}); {fix}") from None
        saved = _normalised(plan, saved)
        diffs = [k for k in dict.fromkeys([*saved, *expected])
                 if saved.get(k, _UNSET) != expected.get(k, _UNSET)]
        if diffs:
            shown = diffs[:_MAX_DIFFS]
            more = f" (and {len(diffs) - len(shown)} more)" if len(diffs) > len(shown) else ""
            was = ", ".join(f"{k}={saved.get(k, _UNSET)!r}" for k in shown)
            now = ", ".join(f"{k}={expected.get(k, _UNSET)!r}" for k in shown)
            raise ConfigError(f"trial {trial_dir.name} in {out} ran with {was}{more} (its "
                              f"config.yaml), but {source} now resolves it to {now}; {fix}")


def _normalised(plan: SweepPlan, saved: dict[str, Any]) -> dict[str, Any]:
    """A trial's saved config as this version resolves it (an older one saved ``auto`` and
    ``0`` where the resolved trainer and K are saved now); as saved where it no longer
    resolves (the comparison then names the keys)."""
    try:
        return _as_read(plan.kind.schema.to_flat(plan.kind.resolve(saved)))
    except ConfigError:
        return saved


def _trial_params(trial_dir: Path, saved: dict[str, Any], search: dict[str, Any],
                  lookup: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """The trial's Tune parameters: ``params.json``; where Tune had not written it yet (an
    interruption right after the trial started), the searched values read off its config."""
    try:
        params = json.loads((trial_dir / "params.json").read_text())
        if isinstance(params, dict):
            return params
    except (OSError, ValueError):
        pass
    params = {key: saved[key] for key in search if not is_case_key(key) and key in saved}
    for key, cases in lookup.items():
        for name, case in cases.items():
            if all(saved.get(k, _UNSET) == v for k, v in _as_read(case).items() if k != "name"):
                params[key] = name
                break
    return params


def prepare_output(plan: SweepPlan, overwrite: bool, resume: bool = False) -> None:
    """A sweep writes into a new directory; ``overwrite`` replaces an earlier sweep's results
    (what a sweep wrote there, nothing else); ``resume`` continues the same sweep there
    (anything else there is refused, untouched). A resumed sweep whose record was unreadable or
    edited gets its record written again."""
    check_output(plan, overwrite, resume)
    out = plan.out_dir
    if resume:
        recorded = read_record(out)
        if recorded is None or _body(recorded) != _as_read(sweep_record(plan)):
            write_record(plan)
        write_environment(out, resume=True)
        return
    if out.is_dir():
        remove_sweep_entries(out)
    out.mkdir(parents=True, exist_ok=True)
    write_record(plan)
    write_environment(out)


def write_record(plan: SweepPlan) -> Path:
    """``sweep.yaml``: the sweep's record and its digest."""
    record = sweep_record(plan)
    record[DIGEST] = record_digest(record)
    return atomic_write_text(plan.out_dir / SWEEP_FILE,
                             _HEADER + yaml.safe_dump(record, sort_keys=False))
