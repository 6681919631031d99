"""``tools/gpu_check.py --device cpu`` runs in the suite, so the GPU check cannot rot: every path
a CPU can run passes, the GPU-only ones say SKIP with their reason, and the JSON holds them."""

from __future__ import annotations

import json
import subprocess
import sys

GPU_ONLY = {"cuml", "cuml-tests", "kd-step-syncs"}


def test_gpu_check_runs_every_cpu_path(repo_root, tmp_path) -> None:
    out = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, "tools/gpu_check.py", "--device", "cpu", "--json",
                           str(out)], cwd=repo_root, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    lines = {line["name"]: line for line in report["lines"]}
    methods = ("dafl", "deepinv", "fast", "cmi", "mosaickd", "dfnd")
    expected = ({"torch", "teacher", "dictionary-k128", "two-workers-one-gpu",
                 "ddp-torchrun+kdci", "ray-train+kdci", "dictionary-prebuild-actor",
                 "skdcgn-smoke", "speed/amp-bf16", "speed/tf32", "speed/channels-last"}
                | {f"kd/{m}{k}" for m in methods for k in ("", "+kdci")}
                | {f"resume/{m}+kdci" for m in methods}
                | {"label-shift/dfnd", "label-shift/fast"})
    assert expected | GPU_ONLY == set(lines)
    assert {name for name, line in lines.items() if line["status"] == "SKIP"} == GPU_ONLY
    assert all(lines[name]["status"] == "PASS" for name in expected)
    assert all("GPU" in lines[name]["detail"] for name in GPU_ONLY)  # the reason is given
    assert all("bit-identical" in lines[f"resume/{m}+kdci"]["detail"] for m in methods)
    printed = [row for row in done.stdout.splitlines() if row[:4] in ("PASS", "SKIP", "FAIL")]
    assert len(printed) == len(lines)  # one line per path
