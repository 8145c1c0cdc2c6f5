#!/usr/bin/env bash
# Install yollava and run the main job offline: generate a small toy world, train its concept <ozzy>
# on the pretrained toy LLaVA (hard negatives mined from the world's pool), chat with it, score it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1
.venv/bin/yollava demo --out demo
