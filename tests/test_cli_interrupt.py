"""Ctrl-C on any command: one line saying what to run to continue, exit code 130, no traceback
and no crash, whenever it comes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml


def test_interrupting_the_dictionary_command_prints_one_line_and_exits_130(
        tiny_settings, tmp_path) -> None:
    config = tmp_path / "dict.yaml"
    # a pool no other test scores (its own seed), large enough to take a while
    config.write_text(yaml.safe_dump({**tiny_settings, "method": "dfnd", "kdci.enabled": True,
                                      "pool.size": 400_000, "pool.seed": 9013}))
    argv = ["dictionary", str(config)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # scored in-process
    proc = subprocess.Popen([sys.executable, "-m", "kdci_ray.cli", *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=terminal_sigint)
    try:
        first = proc.stdout.readline()  # the job's first line: the selection is under way
        assert first.startswith("[kdci-ray] dfnd: selecting"), first
        scoring = []  # until the scoring loop's first progress line
        while not scoring or "selection: scored" not in scoring[-1]:
            scoring.append(proc.stderr.readline())
            assert scoring[-1], "".join(scoring)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        err = "".join(scoring) + err
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().splitlines()[-1] == (
        f"kdci-ray: interrupted; nothing half-written was kept (run `kdci-ray dictionary "
        f"{config}` again to continue)"), err
    assert err.count("kdci-ray:") == 1, err  # the progress lines above it are the job's own
    assert "ready" not in out  # it did not finish before the signal


# ``kdci-ray`` with Ctrl-C raising KeyboardInterrupt, however pytest was started (a shell starts a
# background job with SIGINT ignored, which its children inherit)
CLI = ["-c", "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
             "runpy.run_module('kdci_ray.cli', run_name='__main__', alter_sys=True)"]


def terminal_sigint() -> None:
    """Run in a driver before exec: Ctrl-C's default action, as a terminal's foreground job has
    it, whatever this process passes on (a background job's SIGINT is ignored, and an ignored
    signal stays ignored across exec)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _grid(tmp_path, settings: dict) -> Path:
    config = tmp_path / "grid.yaml"
    config.write_text(yaml.safe_dump({**settings, "method": "dafl", "train.rounds": 40,
                                      "search": {"seed": [0, 1, 2]}}, sort_keys=False))
    return config


def _ctrl_c_when(tmp_path, argv: list[str], marker: str, after_s: float) -> tuple[int, str]:
    """Run ``kdci-ray ARGV``; ``after_s`` after ``marker`` appears in its output, Ctrl-C as a
    terminal sends it (to its whole process group). Returns the exit code and the output; every
    process it started is ended."""
    log = tmp_path / "out.log"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, *CLI, *argv], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, env={**env, "PYTHONUNBUFFERED": "1"},
                            start_new_session=True, preexec_fn=terminal_sigint)
    try:
        deadline = time.monotonic() + 120
        while marker not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.01)
        time.sleep(after_s)
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=120)
    finally:
        end_session(proc.pid)
    return code, log.read_text()


def end_session(sid: int) -> None:
    """End every process of session ``sid`` by PID (a command started with
    ``start_new_session``, and everything it started: Ray's daemons and workers keep it)."""
    pids = [pid for pid in _pids() if _session(pid) == sid]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while any(_session(pid) == sid for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _session(pid: int) -> int | None:
    """The session of a living process (None: gone, or a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[3])


def _kdci_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(("[kdci-ray]", "kdci-ray:"))]


def test_ctrl_c_while_ray_starts_exits_130_without_a_crash(tiny_settings, tmp_path) -> None:
    """Ctrl-C just after Ray logs its start, while ``ray.init`` still connects the driver: a
    KeyboardInterrupt there left a half-built core worker that crashed the process on exit
    (SIGSEGV). Ray's start-up now ends first, then it is shut down: one line, exit code 130."""
    config = _grid(tmp_path, tiny_settings)
    argv = ["sweep", str(config), "--output", str(tmp_path / "out")]
    code, output = _ctrl_c_when(tmp_path, argv, "Started a local Ray instance", 0.15)
    assert code == 130, output[-3000:]
    assert "Traceback" not in output and "Segmentation" not in output, output[-3000:]
    assert _kdci_lines(output)[-1].startswith("kdci-ray: interrupted;"), output[-3000:]


def test_ctrl_c_before_any_trial_started_names_only_kdci_rays_resume(
        tiny_settings, tmp_path) -> None:
    """Ctrl-C once Tune runs, its trials still pending: no "holds no trials" error (the report
    of a sweep without trials), no Tune ``Tuner.restore`` hint: kdci-ray's own line on the
    signal, its ``--resume`` at the end, exit code 130."""
    config = _grid(tmp_path, tiny_settings)
    out = tmp_path / "out"
    code, output = _ctrl_c_when(tmp_path, ["sweep", str(config), "--output", str(out)],
                                "View detailed results here", 0.0)
    assert code == 130, output[-3000:]
    assert "holds no trials" not in output and "Tuner.restore" not in output, output[-3000:]
    assert "Stop signal received" not in output, output[-3000:]
    lines = _kdci_lines(output)
    assert any(line.startswith("[kdci-ray] Ctrl-C: stopping the sweep") for line in lines)
    assert lines[-1].startswith("[kdci-ray] interrupted:"), output[-3000:]
    assert f"`kdci-ray sweep {out} --resume`" in lines[-1]


def test_ray_trains_ctrl_c_handler_does_not_outlive_its_fit() -> None:
    """Ray Train's ``fit`` installs a Ctrl-C handler that aborts its controller and leaves it
    behind: after the run, Ctrl-C would exit 0. ``ray_train.fit`` keeps the handler it found."""
    from kdci_ray.train.ray_train import sigint_handler_kept

    before = signal.getsignal(signal.SIGINT)
    with sigint_handler_kept():
        signal.signal(signal.SIGINT, lambda signum, frame: None)  # what Train's fit does
    assert signal.getsignal(signal.SIGINT) is before
