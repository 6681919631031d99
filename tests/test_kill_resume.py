"""The kill test: a smoke sweep stopped ten times at random moments, by SIGINT (Ctrl-C) and by
SIGKILL, and continued each time with ``kdci-ray sweep DIR --resume``, ends as if it had run
once: every trial once in the table and finished (one of them, short, finishes early and is
never run again after a kill, SIGKILL included), each round once in ``metrics.jsonl``, each
TensorBoard step once and in order, and every continuation counted (``resumes.jsonl`` and the
table's ``resumes``: one per attempt after a trial's first, and each attempt opens one event
file), and the most interrupted trial's student bit for bit the uninterrupted run's.

The moments come from a seeded RNG: half wait for a random number of this run's reports (real
progress, the same on a fast machine and a slow one) and then a fraction of a round, the others
land at a random point between Ray's start and the trials' first report (the trials starting,
finding their checkpoints, opening their logs). Every process a run started is
ended by PID before the next one starts (a SIGKILLed driver leaves Ray's agents and, for a
moment, its trial workers behind).
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_cli_interrupt import CLI, end_session, terminal_sigint
from test_interrupt_resume import _tune_saw_finished

SEED = int(os.environ.get("KDCI_KILL_SEED", 23))  # another seed: other moments, same checks
KILLS = 10
EARLY = 5  # kills at a random point of start-up (the others after real progress)
ROUNDS = 40  # more than the runs before the last can do (kills land mid-sweep, never after)
SHORT = 4  # the rounds of seed 0's trial: it finishes early, and the kills after must not rerun it
KD_STEPS = 2
SEEDS = [0, 1, 2]
BAD_OUTPUT = ("Traceback", "Segmentation fault", "Tuner.restore", "holds no trials")


def _start(argv: list[str], log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.Popen([sys.executable, *CLI, "sweep", *argv], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, env={**env, "PYTHONUNBUFFERED": "1"},
                            start_new_session=True, preexec_fn=terminal_sigint)


def _reports(trial: Path) -> list[dict]:
    path = trial / "metrics.jsonl"
    out = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # being written
    return out


def _trials(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if (p / "config.yaml").is_file()) if out.is_dir() \
        else []


def _new_reports(out: Path, since: float) -> int:
    """Reports the trials wrote in this run (after ``since``)."""
    return sum(r.get("time", 0) > since for trial in _trials(out) for r in _reports(trial))


def _wait_for(proc: subprocess.Popen, ready, timeout: float = 150) -> bool:
    """Until ``ready()``; False when the sweep ended first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.02)
    return True


def _interrupt(proc: subprocess.Popen, sig: int, log: Path) -> int:
    """Send ``sig`` to the driver (SIGINT as a terminal does: to its process group), wait for
    it, end whatever it left running; its exit code."""
    try:
        if proc.poll() is None:
            if sig == signal.SIGINT:
                os.killpg(proc.pid, sig)
            else:
                os.kill(proc.pid, sig)
        code = proc.wait(timeout=150)
    finally:
        end_session(proc.pid)
    text = log.read_text()
    assert not [bad for bad in BAD_OUTPUT if bad in text], text[-4000:]
    return code


def _seed(trial: Path) -> int:
    return int(yaml.safe_load((trial / "config.yaml").read_text())["seed"])


def _finished_as_tune_saw_it(out: Path, known: dict) -> dict[str, tuple[str, int]]:
    """The trials not in ``known`` that have their student and that Tune's newest saved
    experiment state calls TERMINATED (those a resume must not rerun): their ``result.json``
    text and ``student.pt`` mtime."""
    found = {}
    for trial in _trials(out):
        if trial.name not in known and (trial / "student.pt").is_file() \
                and _tune_saw_finished(out, trial):
            found[trial.name] = ((trial / "result.json").read_text(),
                                 (trial / "student.pt").stat().st_mtime_ns)
    return found


def _scalars(trial: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(trial))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def _assert_as_uninterrupted(settings: dict, trial: Path) -> None:
    """The trial's student and last report are the uninterrupted run's, bit for bit (CPU)."""
    from kdci_ray.experiments.dfkd import resolve
    from kdci_ray.train.loop import Collect, distill

    seed = yaml.safe_load((trial / "config.yaml").read_text())["seed"]
    whole = Collect()
    final = distill(resolve(settings, {"seed": seed}), whole)
    student = torch.load(trial / "student.pt", weights_only=False)["state_dict"]
    expected = whole.state["state_dict"]
    assert student.keys() == expected.keys(), trial.name
    assert all(torch.equal(student[k], expected[k]) for k in student), trial.name
    assert _reports(trial)[-1]["eval/acc"] == final["eval/acc"], trial.name


def test_a_sweep_killed_ten_times_ends_as_if_run_once(tiny_settings, tmp_path) -> None:
    rng = random.Random(SEED)
    signals = [signal.SIGINT] * (KILLS // 2) + [signal.SIGKILL] * (KILLS - KILLS // 2)
    rng.shuffle(signals)
    early = set(rng.sample(range(1, KILLS), EARLY))  # the first run must record the sweep
    settings = {**tiny_settings, "method": "dafl", "train.rounds": ROUNDS,
                "train.kd_steps": KD_STEPS, "train.eval_every": 1}
    config = tmp_path / "grid.yaml"
    trials = [{"name": f"s{seed}", "seed": seed, "train.rounds": SHORT if seed == 0 else ROUNDS}
              for seed in SEEDS]
    config.write_text(yaml.safe_dump({**settings, "run.max_concurrent_trials": 2,
                                      "search": {"cases": trials}}, sort_keys=False))
    out = tmp_path / "sweep"
    start, moments, proc = time.monotonic(), [], None
    finished_before: dict[str, tuple[str, int]] = {}  # finished before a kill: never rerun
    try:
        for i, sig in enumerate(signals):
            log = tmp_path / f"run{i}.log"
            begun = time.time()
            proc = _start([str(config), "--output", str(out)] if i == 0
                          else [str(out), "--resume"], log)
            if i in early:  # after Ray's start, before the trials' first report
                going = _wait_for(proc, lambda log=log: "Started a local Ray" in log.read_text())
                until = time.monotonic() + rng.uniform(0.0, 5.0)
                going = going and _wait_for(proc, lambda begun=begun, until=until: (
                    time.monotonic() > until or _new_reports(out, begun) > 0))
                delay = 0.0
            else:  # after some of this run's reports: mid-trial, or between trials
                reports = rng.randint(1, 10)
                going = _wait_for(proc, lambda begun=begun, reports=reports:
                                  _new_reports(out, begun) >= reports)
                delay = rng.uniform(0.0, 0.4)
            assert going, f"the sweep ended after {i} kills (raise ROUNDS?):\n{log.read_text()}"
            time.sleep(delay)
            moments.append(f"{signal.Signals(sig).name}@{time.time() - begun:.1f}s")
            finished_before.update(_finished_as_tune_saw_it(out, finished_before))
            code = _interrupt(proc, sig, log)
            expected = 130 if sig == signal.SIGINT else -signal.SIGKILL
            assert code == expected, (moments, log.read_text()[-4000:])

        log = tmp_path / "final.log"
        proc = _start([str(out), "--resume"], log)
        code = proc.wait(timeout=240)
        assert code == 0, log.read_text()[-4000:]
    finally:
        if proc is not None:
            end_session(proc.pid)
    elapsed = time.monotonic() - start

    trials = _trials(out)
    table = pd.read_csv(out / "summary.csv")
    assert len(trials) == len(SEEDS) and sorted(table["trial"]) == [t.name for t in trials]
    assert table["trial"].is_unique and sorted(table["seed"]) == SEEDS
    rounds = {t.name: SHORT if _seed(t) == 0 else ROUNDS for t in trials}
    assert table["finished"].all()
    assert dict(zip(table["trial"], table["rounds_done"], strict=True)) == rounds
    # a trial Tune had recorded as finished before a kill was not run again by a later run
    assert finished_before, f"seed 0's {SHORT}-round trial never finished before a kill"
    for name, (result, student) in finished_before.items():
        assert (out / name / "result.json").read_text() == result, name
        assert (out / name / "student.pt").stat().st_mtime_ns == student, name
    resumes_column = dict(zip(table["trial"], table["resumes"], strict=True))
    continuations = 0
    for trial in trials:
        reports = _reports(trial)
        assert [r["round"] for r in reports] == list(range(1, rounds[trial.name] + 1)), trial.name
        scalars = _scalars(trial)
        for tag, points in scalars.items():
            steps = [step for step, _ in points]
            assert all(a < b for a, b in zip(steps, steps[1:], strict=False)), (trial.name, tag)
        steps = [KD_STEPS * r for r in range(1, rounds[trial.name] + 1)]
        assert [s for s, _ in scalars["eval/acc"]] == steps, trial.name
        for (_, shown), report in zip(scalars["eval/acc"], reports, strict=True):
            assert math.isclose(shown, report["eval/acc"], rel_tol=1e-6), trial.name
        records = [json.loads(x) for x in (trial / "resumes.jsonl").read_text().splitlines()] \
            if (trial / "resumes.jsonl").is_file() else []
        attempts = len(list(trial.glob("events.out.tfevents.*")))
        assert len(records) == attempts - 1 == resumes_column[trial.name], trial.name
        assert all(0 <= r["round"] <= rounds[trial.name] for r in records), records
        continuations += len(records)
    assert continuations >= 1
    most = max(trials, key=lambda t: resumes_column[t.name])
    _assert_as_uninterrupted({**settings, "train.rounds": rounds[most.name]}, most)
    print(f"{KILLS} kills ({', '.join(moments)}), {continuations} continuations, "
          f"{len(finished_before)} trial(s) finished before a kill; {elapsed:.0f} s in all")
