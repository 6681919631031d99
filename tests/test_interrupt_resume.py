"""A real sweep survives interruption: the driver is stopped mid-way (SIGINT; SIGKILL is the kill
test's), `kdci-ray sweep DIR --resume` continues it, finished trials are not rerun, the
unfinished one continues from its last checkpoint (the latest it persisted, registered by the
driver or not), its logs show each round once, and the table covers every trial once. And a
trial whose worker fails once is restarted from its checkpoint and the failure recorded, by either
trainer (``run.trainer``)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_cli_interrupt import terminal_sigint

from kdci_ray.engine import check_inputs, plan_sweep, run_sweep
from kdci_ray.engine.sweep_dir import prepare_output
from kdci_ray.train.resume import RANK_FILE

ROUNDS = 24
GRID = {"method": "dafl", "train.rounds": ROUNDS, "train.eval_every": 1,
        "run.max_concurrent_trials": 1, "search": {"seed": [0, 1]}}


def _write_config(tmp_path: Path, settings: dict) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({**settings, **GRID}, sort_keys=False))
    return path


def _sweep(args: list[str], log: Path) -> subprocess.Popen:
    """``kdci-ray sweep`` as its own process group (so every process it starts can be ended)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "kdci_ray.cli", "sweep", *args],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True, preexec_fn=terminal_sigint)


def _reports(trial: Path) -> list[dict]:
    """The run's own report log (rank 0 appends it before each checkpoint)."""
    path = trial / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def _trials(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir() and (p / "config.yaml").is_file()) \
        if out.is_dir() else []


def _tune_saw_finished(out: Path, trial: Path) -> bool:
    """Whether the newest saved Tune experiment state in ``out`` has ``trial`` TERMINATED."""
    for state in sorted(out.glob("experiment_state-*.json"), reverse=True)[:1]:
        try:
            trials = [json.loads(t[0]) for t in json.loads(state.read_text())["trial_data"]]
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            return False  # being written right now
        return any(t.get("relative_logdir") == trial.name and t.get("status") == "TERMINATED"
                   for t in trials)
    return False


def _wait_until_midway(proc: subprocess.Popen, out: Path, log: Path,
                       timeout: float = 240) -> tuple[Path, Path]:
    """Until one trial has finished and the other has checkpointed a few rounds, not all."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"sweep ended early:\n{log.read_text()[-3000:]}"
        trials = _trials(out)
        # finished, and Tune's saved experiment state says so (a trial killed between writing
        # its student and Tune's snapshot is resumed from its last checkpoint, as it should)
        done = [t for t in trials if (t / "student.pt").is_file() and _tune_saw_finished(out, t)]
        going = [t for t in trials if t not in done and len(_reports(t)) >= 3]
        if done and going:
            return done[0], going[0]
        time.sleep(0.1)
    raise AssertionError(f"no mid-way point within {timeout} s:\n{log.read_text()[-3000:]}")


def _descendants(pid: int) -> set[int]:
    """Every living process below ``pid`` (from /proc): what the sweep started, Ray included."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _kill_all(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _end_group(proc: subprocess.Popen, started: set[int] | None = None) -> None:
    """End whatever the sweep left running: its process group and the processes it started
    (Ray's own daemons and workers outlive a SIGKILLed driver for up to a minute, and a worker
    left running would go on writing into the trial being resumed)."""
    _kill_all(started or set())
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{p}").exists() for p in (started or set())) \
            and time.monotonic() < deadline:
        time.sleep(0.1)


# SIGKILL: the kill test (tests/test_kill_resume.py) kills a sweep five times that way, with a
# trial that finished before the kills, and checks the same (each round once, nothing finished
# rerun, each continuation counted)
@pytest.mark.parametrize("sig", [signal.SIGINT], ids=["sigint"])
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(
        tiny_settings, tmp_path, sig) -> None:
    config = _write_config(tmp_path, tiny_settings)
    out = tmp_path / "sweep"
    log = tmp_path / "first.log"
    start, started = time.monotonic(), set()
    proc = _sweep([str(config), "--output", str(out)], log)
    try:
        finished, midway = _wait_until_midway(proc, out, log)
        started = _descendants(proc.pid)
        os.kill(proc.pid, sig)
        code = proc.wait(timeout=120)
    finally:
        _end_group(proc, started)
    rounds_before = max(r["round"] for r in _reports(midway))
    interrupted_at = time.monotonic() - start
    if sig == signal.SIGINT:
        assert code == 130, log.read_text()[-3000:]
        assert "--resume" in log.read_text()
    else:
        assert code == -signal.SIGKILL
    finished_reports = (finished / "result.json").read_text()
    finished_student = (finished / "student.pt").stat().st_mtime_ns

    log2 = tmp_path / "resume.log"
    resumed = _sweep([str(out), "--resume"], log2)
    try:
        code = resumed.wait(timeout=300)
    finally:
        _end_group(resumed)
    total = time.monotonic() - start
    assert code == 0, log2.read_text()[-3000:]

    # the finished trial was not run again
    assert (finished / "result.json").read_text() == finished_reports
    assert (finished / "student.pt").stat().st_mtime_ns == finished_student
    assert not (finished / "resumes.jsonl").exists()
    # the unfinished one continued from its last checkpoint before the interruption, not from 0
    resumes = [json.loads(x) for x in (midway / "resumes.jsonl").read_text().splitlines()]
    assert len(resumes) == 1
    resumed_at = resumes[0]["round"]
    assert 1 <= resumed_at <= rounds_before < ROUNDS
    # each round once in its log and in TensorBoard (what the first run logged after the
    # checkpoint it resumed from was dropped, and reported again)
    assert [r["round"] for r in _reports(midway)] == list(range(1, ROUNDS + 1))
    events = EventAccumulator(str(midway))
    events.Reload()
    steps = [e.step for e in events.Scalars("eval/acc")]
    assert steps == [int(r["step"]) for r in _reports(midway)], (rounds_before, resumed_at)

    # the table covers every trial exactly once
    table = pd.read_csv(out / "summary.csv")
    assert sorted(table["trial"]) == sorted(t.name for t in _trials(out))
    assert len(table) == 2 and table["trial"].is_unique
    assert table["finished"].all() and (table["rounds_done"] == ROUNDS).all()
    assert dict(zip(table["trial"], table["resumes"], strict=True)) == {
        finished.name: 0, midway.name: 1}
    assert (out / "report.md").is_file()
    print(f"[{signal.Signals(sig).name}] interrupted after {interrupted_at:.0f} s at round "
          f"{rounds_before}/{ROUNDS}, resumed from round {resumed_at}; first run + resume "
          f"{total:.0f} s")


def test_a_resumed_trial_takes_the_latest_checkpoint_it_persisted(tmp_path) -> None:
    """The trial persists its checkpoints before the driver registers them: a resumed trial
    takes the latest one in its directory that loads, over Tune's older one, but not a final
    one Tune did not register (its result would be lost) and not one cut short by a kill."""
    from kdci_ray.train.resume import newest_resume

    def checkpoint(index: int, rounds_done: int, torn: bool = False) -> None:
        directory = tmp_path / f"checkpoint_{index:06d}"
        directory.mkdir()
        path = directory / RANK_FILE.format(rank=0)
        torch.save({"round": rounds_done, "step": 2 * rounds_done}, path)
        if torn:
            path.write_bytes(path.read_bytes()[:40])

    given = {"round": 1, "step": 2}
    assert newest_resume(tmp_path, given, rounds=6) is given
    checkpoint(0, 1)
    checkpoint(1, 3)
    checkpoint(2, 2)
    checkpoint(3, 5, torn=True)
    checkpoint(4, 6)  # final
    assert newest_resume(tmp_path, given, rounds=6)["round"] == 3
    assert newest_resume(tmp_path, None, rounds=6)["round"] == 3
    assert newest_resume(tmp_path, {"round": 4, "step": 8}, rounds=6)["round"] == 4


def test_every_rank_of_a_restarted_worker_group_takes_the_same_unregistered_checkpoint(
        tmp_path) -> None:
    """A node lost just after its worker persisted a checkpoint, before Ray Train registered it
    (the cluster in a box): the restarted ranks continue from it, all from the same one, and
    pass over one where any rank's file is missing or cut short."""
    from kdci_ray.train.resume import newest_resume

    def checkpoint(index: int, rounds_done: int, ranks: tuple[int, ...] = (0, 1),
                   torn_rank: int | None = None) -> None:
        directory = tmp_path / f"checkpoint_2026-12-07_10-57-{index:02d}.000000"
        directory.mkdir()
        for rank in ranks:
            path = directory / RANK_FILE.format(rank=rank)
            torch.save({"round": rounds_done, "rank": rank}, path)
            if rank == torn_rank:
                path.write_bytes(path.read_bytes()[:40])

    checkpoint(1, 2)
    checkpoint(2, 3, torn_rank=1)  # rank 1's copy cut short by the kill
    checkpoint(3, 4, ranks=(0,))  # rank 1 never wrote its file
    for rank in (0, 1):
        state = newest_resume(tmp_path, None, rounds=10, rank=rank, world_size=2)
        assert (state["round"], state["rank"]) == (2, rank)
    assert newest_resume(tmp_path, {"round": 2, "rank": 0}, rounds=10, world_size=2)["round"] == 2


def test_tune_state_cut_short_by_a_kill_is_set_aside(tmp_path, capsys) -> None:
    """Tune writes ``tuner.pkl`` and its per-session state in place: a driver killed meanwhile
    leaves them cut short, and ``Tuner.restore`` fails on them or restores an empty sweep. The
    newest session whose files load is restored, newer ones are set aside; without one, a grid
    runs again as new, a sampled search is refused."""
    import pickle
    from types import SimpleNamespace

    from kdci_ray.engine.runner import restorable
    from kdci_ray.errors import ConfigError

    def session(stamp: str, state: bytes, search: bytes) -> None:
        (tmp_path / f"experiment_state-{stamp}.json").write_bytes(state)
        (tmp_path / f"basic-variant-state-{stamp}.json").write_bytes(search)

    good_state, good_search = json.dumps({"trial_data": []}).encode(), pickle.dumps({"n": 3})
    (tmp_path / "tuner.pkl").write_bytes(pickle.dumps({"param_space": {}}))
    session("2026-01-01_00-00-01", good_state, good_search)
    session("2026-01-01_00-00-02", good_state, b"")  # search state cut short
    session("2026-01-01_00-00-03", good_state[:7], good_search)  # experiment state cut short
    grid = SimpleNamespace(out_dir=tmp_path, parsed=SimpleNamespace(sampled=lambda: False))
    assert restorable(grid)
    assert sorted(p.name for p in tmp_path.iterdir() if "state-" in p.name) == [
        "basic-variant-state-2026-01-01_00-00-01.json",
        "basic-variant-state-2026-01-01_00-00-02.json.cut-short",
        "basic-variant-state-2026-01-01_00-00-03.json.cut-short",
        "experiment_state-2026-01-01_00-00-01.json",
        "experiment_state-2026-01-01_00-00-02.json.cut-short",
        "experiment_state-2026-01-01_00-00-03.json.cut-short"]

    (tmp_path / "tuner.pkl").write_bytes(b"\x80\x04")  # cut short: nothing can be restored
    sampled = SimpleNamespace(out_dir=tmp_path, parsed=SimpleNamespace(sampled=lambda: True))
    with pytest.raises(ConfigError, match="cut short .* start it anew with --overwrite"):
        restorable(sampled)
    assert not restorable(grid)
    assert "the grid runs again, each trial from its latest checkpoint" in capsys.readouterr().out


def test_readers_see_each_round_once_in_a_log_that_repeats_rounds(tmp_path) -> None:
    """A log written before continuations cut ``metrics.jsonl`` back repeats the rounds each
    restart reported again; the results code reads each round once, the later attempt's."""
    from kdci_ray.results.trials import trial_reports

    rounds = [1, 2, 3, 2, 3, 4, 1, 2, 3, 4, 5]
    (tmp_path / "metrics.jsonl").write_text("".join(
        json.dumps({"round": r, "eval/acc": i / 100}) + "\n" for i, r in enumerate(rounds)))
    reports = trial_reports(tmp_path)
    assert [r["round"] for r in reports] == [1, 2, 3, 4, 5]
    assert [r["eval/acc"] for r in reports] == [0.06, 0.07, 0.08, 0.09, 0.10]


def test_a_tune_state_naming_a_deleted_checkpoint_still_resumes(
        tiny_settings, ray_session, tmp_path) -> None:
    """A driver killed after Tune deleted checkpoints past ``num_to_keep`` but before it saved
    its state again leaves a state naming a deleted checkpoint; Tune then refused to restore the
    trial on every resume ("does not exist on storage anymore"). Made here by hand: a finished
    one-trial sweep whose state is set back to PENDING and whose latest checkpoint is deleted.
    The resume continues from the trial's latest checkpoint on disk and finishes it."""
    from kdci_ray.api import sweep

    config = tmp_path / "one.yaml"
    config.write_text(yaml.safe_dump({**tiny_settings, "method": "dafl", "train.rounds": 4,
                                      "train.eval_every": 1, "search": {"seed": [0]}},
                                     sort_keys=False))
    out = tmp_path / "sweep"
    assert sweep(config, output=out, log=lambda m: None).ok
    (trial,) = _trials(out)
    state_file = max(out.glob("experiment_state-*.json"))
    state = json.loads(state_file.read_text())
    trial_state = json.loads(state["trial_data"][0][0])
    trial_state["status"] = "PENDING"
    state["trial_data"][0][0] = json.dumps(trial_state)
    state_file.write_text(json.dumps(state))
    shutil.rmtree(max(trial.glob("checkpoint_*")))  # the final one, Tune's latest

    result = sweep(out, resume=True, log=lambda m: None)
    assert result.ok, (result.errors, result.unfinished)
    assert [r["round"] for r in _reports(trial)] == [1, 2, 3, 4]
    resumes = [json.loads(x) for x in (trial / "resumes.jsonl").read_text().splitlines()]
    assert [r["round"] for r in resumes] == [3]  # the latest checkpoint left on disk


@pytest.mark.parametrize("trainer", ["tune_trial", "ray_train"])
def test_a_trial_that_fails_once_is_restarted_from_its_checkpoint_and_recorded(
        tiny_settings, ray_session, tmp_path, trainer: str) -> None:
    """Ray Train restarts its worker group; Tune retries a ``tune_trial`` trial: both continue
    from the latest checkpoint, and both record the failure the same way. Checkpoints every 2
    rounds and a failure after round 3: the retry starts from round 2 and reports round 3 again;
    ``metrics.jsonl`` and TensorBoard show it once (the retry's), each step once and in order,
    with the trial's HParams session."""
    from tensorboard.plugins.hparams import api_pb2
    from test_tensorboard_hparams import BOOKKEEPING, _hparams, _start_values

    config = tmp_path / "fail.yaml"
    config.write_text(yaml.safe_dump({
        **tiny_settings, "method": "dafl", "train.rounds": 4, "train.eval_every": 1,
        "run.checkpoint_every": 2, "run.inject_failure_round": 3, "run.trainer": trainer,
        "search": {"train.kd_steps": [2]}}, sort_keys=False))
    out = tmp_path / "sweep"
    plan = plan_sweep(config, output=str(out))
    check_inputs(plan, log=lambda m: None)
    prepare_output(plan, overwrite=False)
    outcome = run_sweep(plan)
    assert outcome.errors == [] and not outcome.interrupted

    (trial,) = _trials(out)
    failures = [json.loads(x) for x in (trial / "failures.jsonl").read_text().splitlines()]
    assert len(failures) == 1 and "InjectedFailure" in failures[0]["error"]
    resumes = [json.loads(x) for x in (trial / "resumes.jsonl").read_text().splitlines()]
    assert [r["round"] for r in resumes] == [2]  # restarted from round 2's checkpoint
    reports = _reports(trial)
    assert [r["round"] for r in reports] == [1, 2, 3, 4]  # round 3 once: the retry's
    row = pd.read_csv(out / "summary.csv").iloc[0]
    assert row["finished"] and row["rounds_done"] == 4
    assert row["failures"] == 1 and row["resumes"] == 1

    assert len(list(trial.glob("events.out.tfevents.*"))) == 2  # one per attempt
    events = EventAccumulator(str(trial))
    events.Reload()
    steps = [e.step for e in events.Scalars("eval/acc")]
    assert steps == sorted(set(steps)) == [int(r["step"]) for r in reports]
    assert events.Scalars("eval/acc")[-1].value == pytest.approx(reports[-1]["eval/acc"])
    tags = set(events.Tags()["scalars"])
    assert {"eval/acc", "train/loss", "lr", "time/elapsed_s"} <= tags
    assert not tags & BOOKKEEPING
    hp = _hparams(events)
    assert _start_values(hp["session_start_info"]) == {
        "method": "dafl", "kdci.enabled": False, "kdci.k": 4.0, "seed": 0.0,
        "train.kd_steps": 2.0}
    assert [m.name.tag for m in hp["experiment"].experiment.metric_infos] == ["eval/acc"]
    assert hp["session_end_info"].session_end_info.status == api_pb2.STATUS_SUCCESS
