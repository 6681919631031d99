"""Peak memory of one variant of ``kdci_overhead.py``'s KD step, in the fresh subprocess
``kdci_overhead.py --_memory VARIANT`` (see its docstring for the window measured), and the
median of several such runs.
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
from pathlib import Path

import torch
from kdci_step import Bench


def _proc_status() -> dict[str, float]:
    """``VmRSS`` / ``VmHWM`` / ``RssAnon`` / ``RssFile`` of this process, MB (Linux)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(line.split()[1]) / 1024.0  # kB
    return out


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux: ``echo 5 > /proc/self/clear_refs``), so the peak
    read afterwards is that of the window, not of imports and set-up."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_child(args: argparse.Namespace, device: torch.device) -> dict[str, float | None]:
    """Peak memory of one variant's window (see kdci_overhead.py's docstring), MB."""
    bench = Bench(args, args._memory, device, first_refresh=False)
    gc.collect()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = {"VmRSS": torch.cuda.memory_allocated() / 2**20}
        reset = True
    else:
        base = _proc_status() if Path("/proc/self/status").exists() else {}
        reset = _reset_peak_rss() and bool(base)

    def peak() -> float:
        if cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20
        if reset:
            return _proc_status()["VmHWM"]
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # since start

    first = None
    if bench.kdci is not None:
        bench.refresh()  # the first refresh: no KD step has run, so it scores refresh_x
        first = peak()
    steps = max(1, min(args.mem_steps, args.refresh_every))
    for _ in range(steps):
        bench.step()
    if bench.kdci is not None and bench.last_t is not None:
        for _ in range(args.refresh_every - steps):  # the rest of the period's logits (a no-op
            bench.kdci.observe(bench.last_t.clone())  # in source mode), then its refresh
        bench.refresh()
    bench.step()
    out: dict[str, float | None] = {"base_mb": base.get("VmRSS"), "peak_mb": peak(),
                                    "first_refresh_peak_mb": first, "peak_is_window": reset}
    if not cuda and base:
        now = _proc_status()
        out["base_anon_mb"], out["base_file_mb"] = base["RssAnon"], base["RssFile"]
        out["anon_added_mb"] = now["RssAnon"] - base["RssAnon"]  # at the end of the window
        out["file_added_mb"] = now["RssFile"] - base["RssFile"]  # library pages touched
    return out


def _median_runs(runs: list[dict]) -> dict:
    out = {}
    for key in runs[0]:
        values = [r[key] for r in runs
                  if isinstance(r[key], (int, float)) and not isinstance(r[key], bool)]
        out[key] = statistics.median(values) if values else runs[0][key]
    return out
