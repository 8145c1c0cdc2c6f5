"""The published benchmark files and the real 13B base: skipped offline, run with -m network / -m "network and gpu".

    pytest -m network tests/test_eval_published.py            # the real QA files parse, 400 text questions, "A" bias
    YOLLAVA_DATA=/path/to/yollava-data pytest -m "network and gpu" tests/test_eval_published.py   # vanilla 13B on two subjects
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import pytest
import torch

from yollava.config import DEFAULT_MODEL

VISUAL_QA_URL = "https://raw.githubusercontent.com/WisconsinAIVision/YoLLaVA/main/yollava-data/yollava-visual-qa.json"
TEXT_QA_URL = "https://raw.githubusercontent.com/Hoar012/RAP-MLLM/main/eval/yollava-text-only-qa.json"


def download(url: str, path: Path) -> Path:
    with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 (fixed https URLs)
        path.write_bytes(response.read())
    return path


@pytest.mark.network
def test_published_qa_files_read_and_the_text_file_is_biased_towards_A(tmp_path):
    from yollava.evaluate.qa_files import QAKind, read_qa_file

    text = read_qa_file(download(TEXT_QA_URL, tmp_path / "text.json"))
    questions = [q for qs in text.questions.values() for q in qs]
    assert text.kind == QAKind.text and len(text.questions) == 40 and len(questions) == 400
    # the caveat every-order scoring exists for (DESIGN.md: "A" correct in 390 of 400)
    assert sum(q.correct == "A" for q in questions) >= 380
    assert all("<" not in q.asked("<bo>")[0].replace("<bo>", "") for q in questions)
    visual_path = download(VISUAL_QA_URL, tmp_path / "visual.json")
    raw = json.loads(visual_path.read_text())
    # image paths are resolved against --data by their <split>/<subject>/<file> tail: fake the layout
    for subject, entries in raw.items():
        for key in entries:
            target = tmp_path / "data" / Path(*Path(key).parts[-3:])
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
    from yollava.evaluate.layout import open_benchmark

    visual = read_qa_file(visual_path, open_benchmark(tmp_path / "data"))
    assert visual.kind == QAKind.visual and len(visual.questions) >= 30
    assert all(q.image and Path(q.image).is_file() for qs in visual.questions.values() for q in qs)


@pytest.mark.network
def test_llava_tokenizer_gives_option_letters_single_distinct_tokens():
    from transformers import AutoProcessor

    from yollava.evaluate.scoring import first_answer_tokens
    from yollava.methods.personalization import Personalization
    from yollava.prompts import ChatFormat

    class TokenizerOnly:
        def __init__(self, processor):
            self.tokenizer = processor.tokenizer
            self.image_token_id = processor.tokenizer.convert_tokens_to_ids("<image>")
            self.num_image_tokens = 576

    base = TokenizerOnly(AutoProcessor.from_pretrained(DEFAULT_MODEL))
    ids = first_answer_tokens(base, ChatFormat.load("llava_v1"), Personalization("vanilla", "bo", "<bo>"), "Q?\nA. x\nB. y", ["A", "B", "Yes", "No"])
    assert base.tokenizer.convert_ids_to_tokens(ids) == ["▁A", "▁B", "▁Yes", "▁No"]


@pytest.mark.network
@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.skipif("YOLLAVA_DATA" not in os.environ, reason="set YOLLAVA_DATA to the published yollava-data folder")
def test_vanilla_13b_says_no_to_a_name_it_does_not_know(tmp_path):
    """The paper's vanilla LLaVA row: 0.000 positive / 1.000 negative. Two subjects, recognition only."""
    from yollava.config import load_config
    from yollava.evaluate.harness import plan_evaluation, run_evaluation
    from yollava.models import load_base

    data = Path(os.environ["YOLLAVA_DATA"])
    plan = plan_evaluation(data, ["bo", "mam"], ["recognition"], ["vanilla"], store=tmp_path, generation=False)
    base = load_base(load_config().model)
    records = run_evaluation(plan, base)
    for record in records:
        assert record["metrics"]["positive"] <= 0.2 and record["metrics"]["negative"] >= 0.9, record["metrics"]
