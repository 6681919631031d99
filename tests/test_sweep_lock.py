"""One writer per sweep directory (issue 23): a run holds its directory's lock from its checks to
its report; a second writer (two ``--overwrite`` sweeps started together or later, a ``--resume``
of the running sweep) is refused before Ray starts, naming the owner; ``kdci-ray report`` on a
running sweep shows the table and writes nothing; Ctrl-C and a refusal release the lock; a lock
left by a killed run is taken over with a message; ``--overwrite`` removes only what a sweep
writes and refuses a directory holding anything else."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from kdci_ray.cli import main
from kdci_ray.engine import locked_report, plan_sweep, prepare_output, sweep_lock
from kdci_ray.engine.lock import LOCK_FILE
from kdci_ray.engine.sweep_dir import read_record
from kdci_ray.engine.sweep_files import foreign_entries
from kdci_ray.environment import ENVIRONMENT_FILE

GRID = {"search": {"method": ["dafl", "deepinv"], "kdci.enabled": [False, True], "seed": [0, 1]}}
ROUNDS = 40  # long enough that the winner is still training while the checks run

HOLD = """import sys, time
from kdci_ray.engine.lock import sweep_lock
with sweep_lock(sys.argv[1], command="kdci-ray sweep held-by-a-test"):
    print("held", flush=True)
    time.sleep(600)
"""


def _grid_file(out: Path) -> Path:
    return out.parent / "grid.yaml"


def _argv(settings: dict, out: Path, method: str, *extra: str) -> list[str]:
    """A quickstart-like grid (methods x KDCI x seeds) with the tiny settings, one method, seed
    0: two trials."""
    grid = _grid_file(out)
    if not grid.is_file():
        grid.parent.mkdir(parents=True, exist_ok=True)
        grid.write_text(yaml.safe_dump(GRID))
    over = [f"{k}={v}" for k, v in {**settings, "train.rounds": ROUNDS}.items()]
    return ["sweep", str(grid), *over, "--output", str(out), "--only", f"method={method}",
            "--only", "seed=0", *extra]


def _start(argv: list[str], log: Path) -> subprocess.Popen:
    """``kdci-ray ARGV`` in its own process group, on a local Ray of its own."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONUNBUFFERED"] = "1"
    return subprocess.Popen([sys.executable, "-m", "kdci_ray.cli", *argv], env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _descendants(pid: int) -> set[int]:
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


def _stop(proc: subprocess.Popen) -> None:
    """End a sweep this test started, and whatever it started, if it still runs."""
    if proc.poll() is None:
        for pid in [*_descendants(proc.pid), proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    proc.wait(timeout=30)


def _first_to_exit(procs: dict[str, subprocess.Popen], timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                return name
        time.sleep(0.05)
    raise AssertionError(f"neither sweep ended within {timeout} s")


def _wait_for(path_glob: tuple[Path, str], proc: subprocess.Popen, log: Path,
              timeout: float = 180) -> None:
    directory, pattern = path_glob
    deadline = time.monotonic() + timeout
    while not any(directory.glob(pattern)):
        assert proc.poll() is None, f"the sweep ended early:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {pattern} within {timeout} s"
        time.sleep(0.05)


def test_one_writer_per_sweep_directory(tiny_settings, tmp_path, capsys) -> None:
    out = tmp_path / "sweep"
    logs = {m: tmp_path / f"{m}.log" for m in ("dafl", "deepinv")}
    # issue 23, item 2: two --overwrite sweeps into one directory, started together
    procs = {m: _start(_argv(tiny_settings, out, m, "--overwrite"), logs[m]) for m in logs}
    try:
        loser = _first_to_exit(procs)
        (winner,) = [m for m in procs if m != loser]
        owner = procs[winner].pid
        said = logs[loser].read_text()
        assert procs[loser].returncode == 2, said[-3000:]
        grid = _grid_file(out)
        assert f"kdci-ray: error: {out} is being written by `kdci-ray sweep {grid}" in said
        assert f"--only method={winner}" in said, said
        assert f"(PID {owner} on host {socket.gethostname()}, since " in said, said
        assert "wait for it to finish, or stop it" in said
        assert "local Ray instance" not in said  # refused before Ray started

        _wait_for((out, "*/config.yaml"), procs[winner], logs[winner])
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == owner
        # item 1: --resume of the running sweep; item 2 again: the other --overwrite 14 s later;
        # and the same sweep without a flag: each refused, naming the owner
        for argv in (["sweep", str(out), "--resume"],
                     _argv(tiny_settings, out, loser, "--overwrite"),
                     _argv(tiny_settings, out, winner)):
            code = main(argv)
            err = capsys.readouterr().err
            assert code == 2 and "is being written by `kdci-ray sweep" in err, err
            assert f"(PID {owner} on host" in err and err.count("\n") == 1, err
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == owner  # refusals kept it

        # kdci-ray report on the running sweep: its table so far, nothing written
        lines: list[str] = []
        table = locked_report(out, log=lines.append)
        assert len(lines) == 1 and "being written by `kdci-ray sweep" in lines[0], lines
        assert "nothing was written" in lines[0] and table.startswith("## ")
        assert not (out / "summary.csv").exists()

        # Ctrl-C: the winner stops and releases the lock
        procs[winner].send_signal(signal.SIGINT)
        assert procs[winner].wait(timeout=120) == 130, logs[winner].read_text()[-3000:]
    finally:
        for proc in procs.values():
            _stop(proc)
    assert not (out / LOCK_FILE).exists()
    lines = []
    with sweep_lock(out, log=lines.append):
        pass
    assert lines == []  # released cleanly: nothing to take over

    # one writer's trials, each written once (one event file, no repeated round)
    trials = sorted(p for p in out.iterdir() if (p / "config.yaml").is_file())
    assert [t.name.split("_")[0] for t in trials] == [winner, winner], trials
    assert f"method={winner}" in read_record(out)["only"]
    for trial in trials:
        assert len(list(trial.glob("events.out.tfevents.*"))) <= 1, trial
        metrics = trial / "metrics.jsonl"
        rounds = [json.loads(x)["round"] for x in metrics.read_text().splitlines()] \
            if metrics.is_file() else []
        assert rounds == list(range(1, len(rounds) + 1)), (trial.name, rounds)
    # everything a real sweep left is on the list --overwrite may remove
    assert foreign_entries(out) == []


def _experiment(tmp_path: Path, settings: dict) -> Path:
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({**settings, "method": "dafl"}, sort_keys=False))
    return config


def test_a_lock_left_by_a_killed_run_is_taken_over_with_a_message(tiny_settings, tmp_path,
                                                                   capsys) -> None:
    out = tmp_path / "sweep"
    prepare_output(plan_sweep(_experiment(tmp_path, tiny_settings), output=str(out)),
                   overwrite=False)  # a recorded sweep whose first trial never started
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        code = main(["sweep", str(out), "--resume"])
        err = capsys.readouterr().err
        assert code == 2 and f"`kdci-ray sweep held-by-a-test` (PID {holder.pid} on host" in err
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    code = main(["sweep", str(out), "--resume"])
    said = capsys.readouterr()
    assert code == 2 and "no Tune experiment state" in said.err, said.err  # its own refusal
    assert said.out.count("taking over the lock") == 1, said.out
    assert f"{out}: taking over the lock of `kdci-ray sweep held-by-a-test` (PID {holder.pid} " \
           f"on host {socket.gethostname()}, since " in said.out
    assert "which ended without releasing it" in said.out
    # the refused sweep released the lock: the next one finds it free, nothing to take over
    assert sorted(p.name for p in out.iterdir()) == [ENVIRONMENT_FILE, "sweep.yaml"]
    code = main(["sweep", str(out), "--resume"])
    said = capsys.readouterr()
    assert code == 2 and "no Tune experiment state" in said.err
    assert "taking over" not in said.out


def test_a_refused_sweep_into_a_new_directory_leaves_nothing(tiny_settings, tmp_path,
                                                             capsys) -> None:
    out = tmp_path / "new" / "deeper" / "sweep"
    code = main(["sweep", str(_experiment(tmp_path, tiny_settings)), "--output", str(out),
                 "--resume"])
    assert code == 2 and "nothing to resume" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    with sweep_lock(out) as lock:  # and the lock is free (created, then removed again)
        assert lock == out / LOCK_FILE and lock.is_file()
    assert not (tmp_path / "new").exists()


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(directory.rglob("*"))}


def test_overwrite_removes_only_what_a_sweep_wrote(tiny_settings, tmp_path, capsys) -> None:
    """Item 3: a user's notes and plots in a sweep directory: --overwrite refuses, naming them,
    and deletes nothing; without them, it removes the sweep's files and keeps the lock."""
    config = _experiment(tmp_path, tiny_settings)
    out = tmp_path / "sweep"
    plan = plan_sweep(config, output=str(out))
    prepare_output(plan, overwrite=False)
    (out / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")
    (out / "tuner.pkl").write_bytes(b"tune")
    trial = out / "dafl_vanilla_seed0_00000"
    (trial / "checkpoint_000001").mkdir(parents=True)
    (trial / "config.yaml").write_text("method: dafl\n")
    (out / "summary.csv").write_text("trial\n")
    (out / "acc_vs_kdci.k.png").write_bytes(b"png")
    (out / "notes.txt").write_text("what I saw")
    (out / "my_plot.png").write_bytes(b"mine")
    (out / "analysis").mkdir()
    (out / "analysis" / "table.csv").write_text("mine too")
    before = _snapshot(out)

    code = main(["sweep", str(config), "--output", str(out), "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{out} holds files no sweep writes: analysis, my_plot.png, notes.txt; " in err
    assert "move them out, or choose another --output" in err and err.count("\n") == 1
    assert _snapshot(out) == before

    for mine in ("notes.txt", "my_plot.png"):
        (out / mine).unlink()
    (out / "analysis" / "table.csv").unlink()
    (out / "analysis").rmdir()
    with sweep_lock(out):
        prepare_output(plan, overwrite=True)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE, ENVIRONMENT_FILE,
                                                          "sweep.yaml"]
    assert read_record(out)["name"] == plan.name
