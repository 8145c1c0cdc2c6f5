#!/usr/bin/env bash
# Create .venv and install yollava with its test tools (idempotent; about 2-3 minutes on a fresh machine).
# torch is pinned with a matching torchvision: open_clip needs torchvision, and the CPU-only torch wheel
# breaks it (see ../shared/NOTES.md). The CUDA build runs fine on CPU-only machines.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  # torch (CUDA build, which runs on the CPU too) and its libraries take about 6 GB
  free_mb=$(df -Pm . | awk 'NR==2 {print $4}')
  if (( free_mb < 6500 )); then
    echo "error: .venv needs about 6.5 GB of free disk, $(pwd) has ${free_mb} MB; free some space and re-run $0" >&2
    exit 1
  fi
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
case "$(uname -m)" in
  aarch64|arm64) TORCH=(torch==2.9.1 torchvision==0.24.1) ;;
  *) TORCH=(torch==2.14.1 torchvision==0.29.1) ;;
esac
.venv/bin/python -m pip install --quiet "${TORCH[@]}"
.venv/bin/python -m pip install --quiet -e '.[dev]'
echo "installed: $(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')"
