#!/usr/bin/env bash
# Create .venv and install yollava with its test tools and the web page (gradio; the default test run drives
# the page through gradio's client), idempotent, about 2-3 minutes on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv_with_torch.sh .venv
.venv/bin/python -m pip install --quiet -e '.[dev,web]'
echo "installed: $(.venv/bin/python -c 'import torch, transformers, gradio; print("torch", torch.__version__, "transformers", transformers.__version__, "gradio", gradio.__version__)')"
