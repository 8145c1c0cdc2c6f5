#!/usr/bin/env bash
# Create .venv-laion: yollava with the `laion` extra (clip-retrieval). clip-retrieval pins
# transformers<5, datasets 4 and numpy 1, so it lives in its own venv; yollava runs on both stacks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv_with_torch.sh .venv-laion
.venv-laion/bin/python -m pip install --quiet -e '.[laion,dev]'
echo "installed: $(.venv-laion/bin/python -c 'import transformers, clip_retrieval; print("transformers", transformers.__version__, "+ clip-retrieval")')"
