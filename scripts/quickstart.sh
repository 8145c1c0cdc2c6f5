#!/usr/bin/env bash
# Install yollava and run the main job offline: train a concept on generated photos, chat with it, score it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1
.venv/bin/yollava demo --out demo
