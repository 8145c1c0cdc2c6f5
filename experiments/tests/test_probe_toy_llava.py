"""experiments/probe_toy_llava.py end to end on a few scenes (not in the default run: ``python -m pytest experiments``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from yollava.toyworld.toy_llava import ToyLlavaArch, load_toy_base

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("task", ["introduced", "attribute"])
def test_probe_trains_scores_and_saves_a_loadable_model(tmp_path, task):
    saved = tmp_path / "probed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "probe_toy_llava.py"), "--task", task, "--scenes", "40",
         "--eval-items", "16", "--steps", "2", "--save", str(saved)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False, env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert records[0]["step"] == 0 and records[-1]["step"] == 2 and "eval" in records[-1]
    assert ("yes_rate" in records[-1]["eval"]) == (task != "attribute")
    assert load_toy_base(saved).model.config.text_config.hidden_size == ToyLlavaArch().hidden_size
