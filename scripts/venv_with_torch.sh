#!/usr/bin/env bash
# Usage: bash scripts/venv_with_torch.sh VENV — create VENV (if missing) with pip upgraded and the pinned torch.
# Shared by install.sh and install_laion.sh. torch is pinned with a matching torchvision: open_clip needs
# torchvision, and the CPU-only torch wheel breaks it (see ../shared/NOTES.md). The CUDA build runs fine
# on CPU-only machines, but it and its libraries take about 6 GB, so a fuller disk stops here.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:?usage: $0 VENV}
PYTHON=${PYTHON:-python3}
if [[ ! -x "$VENV/bin/python" ]]; then
  free_mb=$(df -Pm . | awk 'NR==2 {print $4}')
  if (( free_mb < 6500 )); then
    echo "error: $VENV needs about 6.5 GB of free disk, $(pwd) has ${free_mb} MB; free some space and re-run" >&2
    exit 1
  fi
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
case "$(uname -m)" in
  aarch64|arm64) TORCH=(torch==2.9.1 torchvision==0.24.1) ;;
  *) TORCH=(torch==2.14.1 torchvision==0.29.1) ;;
esac
"$VENV/bin/python" -m pip install --quiet "${TORCH[@]}"
