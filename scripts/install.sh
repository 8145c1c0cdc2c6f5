#!/usr/bin/env bash
# Create .venv and install yollava with its test tools (idempotent; about 2-3 minutes on a fresh machine).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv_with_torch.sh .venv
.venv/bin/python -m pip install --quiet -e '.[dev]'
echo "installed: $(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')"
