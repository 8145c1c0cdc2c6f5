#!/usr/bin/env bash
# Create .venv-laion: yollava with the `laion` extra (clip-retrieval). clip-retrieval pins
# transformers<5, datasets 4 and numpy 1, so it lives in its own venv; yollava runs on both stacks.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [[ ! -x .venv-laion/bin/python ]]; then
  # torch (CUDA build, which runs on the CPU too) and its libraries take about 6 GB
  free_mb=$(df -Pm . | awk 'NR==2 {print $4}')
  if (( free_mb < 6500 )); then
    echo "error: .venv-laion needs about 6.5 GB of free disk, $(pwd) has ${free_mb} MB; free some space and re-run $0" >&2
    exit 1
  fi
  "$PYTHON" -m venv .venv-laion
fi
.venv-laion/bin/python -m pip install --quiet --upgrade pip
case "$(uname -m)" in
  aarch64|arm64) TORCH=(torch==2.9.1 torchvision==0.24.1) ;;
  *) TORCH=(torch==2.14.1 torchvision==0.29.1) ;;
esac
.venv-laion/bin/python -m pip install --quiet "${TORCH[@]}"
.venv-laion/bin/python -m pip install --quiet -e '.[laion,dev]'
echo "installed: $(.venv-laion/bin/python -c 'import transformers, clip_retrieval; print("transformers", transformers.__version__, "+ clip-retrieval")')"
