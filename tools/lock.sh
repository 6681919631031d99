#!/usr/bin/env bash
# Write the lock files from pyproject.toml (`make lock`; UPGRADE=1 make lock takes newer releases,
# otherwise every version already locked is kept). Each pins every package with its hashes, for
# Python 3.11:
#   requirements/cpu-dev.lock   CPU Linux x86_64: runtime + the dev extra (make dev, make test)
#   requirements/cpu.lock       the same versions, runtime only (make venv, make demo)
#   requirements/gpu-cu13.lock  x86_64 manylinux: runtime + the gpu extra (cuML, CuPy), torch's
#                               CUDA 13 build from PyPI; every package it shares with the CPU
#                               locks at the CPU version, except those in GPU_OWN
# The CPU locks take PyTorch's CPU build of torch (2.13.0+cpu) from TORCH_CPU_WHEELS: a folder
# or index page holding it (default /opt/wheels, where the development machines keep it).
# uv resolves for the target platform whatever this machine is; UV=/path/to/uv picks a uv, else
# a pinned one is installed once into a scratch venv.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.8
TORCH_CPU=torch==2.13.0+cpu  # keep in step with pyproject.toml's torch pin
TORCH_CPU_WHEELS=${TORCH_CPU_WHEELS:-/opt/wheels}
# packages the GPU lock resolves on its own: torch (the CUDA build), pandas (cuDF needs <3.1)
GPU_OWN="torch pandas"

if [ -z "${UV:-}" ]; then
  scratch="${TMPDIR:-/tmp}/kdci-ray-uv-$UV_VERSION"
  if [ ! -x "$scratch/bin/uv" ]; then
    python3 -m venv "$scratch"
    "$scratch/bin/pip" install -q --disable-pip-version-check "uv==$UV_VERSION"
  fi
  UV="$scratch/bin/uv"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
common=(--python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes
        --no-header --quiet)
[ "${UPGRADE:-0}" = 1 ] && common+=(--upgrade)
mkdir -p requirements
echo "$TORCH_CPU" > "$work/torch-cpu.txt"

# $1: the lock file, $2: what it is for (its header); the lock itself is on stdin
write_lock() {
  {
    echo "# $2"
    echo "# Written by \`make lock\` (tools/lock.sh) from pyproject.toml: do not edit by hand."
    sed '/^    #   -c /d'  # the script's own constraint files: not why a package is here
  } > "$1.new"
  mv "$1.new" "$1"
}

compile() {  # $1: output lock, rest: uv pip compile arguments
  local out=$1
  shift
  # uv keeps the versions of the existing output file (unless --upgrade): start from it
  if [ -f "$out" ]; then cp "$out" "$work/out.txt"; else : > "$work/out.txt"; fi
  "$UV" pip compile pyproject.toml "${common[@]}" "$@" -o "$work/out.txt"
  cat "$work/out.txt"
}

compile requirements/cpu-dev.lock --extra dev -c "$work/torch-cpu.txt" \
    --find-links "$TORCH_CPU_WHEELS" |
  write_lock requirements/cpu-dev.lock \
    "CPU Linux x86_64, Python 3.11: kdci_ray with the dev extra (make dev / make test)."

compile requirements/cpu.lock -c "$work/torch-cpu.txt" -c requirements/cpu-dev.lock \
    --find-links "$TORCH_CPU_WHEELS" |
  write_lock requirements/cpu.lock \
    "CPU Linux x86_64, Python 3.11: kdci_ray's runtime dependencies (make venv / make demo)."

# the CPU versions as plain pins, less the packages the GPU lock resolves on its own
grep -E '^[A-Za-z0-9]' requirements/cpu-dev.lock | sed 's/ .*//' |
  grep -viE "^($(echo "$GPU_OWN" | tr ' ' '|'))==" > "$work/shared.txt"
compile requirements/gpu-cu13.lock --extra gpu -c "$work/shared.txt" |
  write_lock requirements/gpu-cu13.lock \
    "GPU nodes (CUDA 13, x86_64 manylinux, Python 3.11): kdci_ray with the gpu extra (make venv LOCK=requirements/gpu-cu13.lock)."

echo "wrote requirements/cpu-dev.lock, requirements/cpu.lock, requirements/gpu-cu13.lock"
