"""The evaluation harness on the tiny model: every task, every method, prompts, token counts, the "always A" model, records and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from rich.console import Console

from test_eval_files import TEXT, VISUAL, published_layout, write
from yollava.concept import attach, attached, init_concept
from yollava.config import ConceptConfig
from yollava.evaluate.harness import plan_evaluation, run_evaluation
from yollava.evaluate.layout import open_benchmark
from yollava.evaluate.multiple_choice import letter_prompt, score_multiple_choice
from yollava.evaluate.qa_files import Question
from yollava.evaluate.recognition import evaluate_concept
from yollava.evaluate.report import build_table, load_records, render_markdown, write_report
from yollava.forward import FeatureCache
from yollava.methods import METHODS, MethodContext, MethodInputs, Personalization, build_query, tokens_per_query
from yollava.methods.personalization import evaluation_template
from yollava.methods.soft_prompt import concept_personalization
from yollava.prompts import ChatFormat, Turn, encode, render
from yollava.storage import AUTO_DESCRIPTION

QUIET = Console(quiet=True)


@pytest.fixture
def fmt() -> ChatFormat:
    return ChatFormat.load("llava_v1")


@pytest.fixture
def dataset(tmp_path) -> Path:
    root = published_layout(tmp_path / "yollava-data")
    write(root / "yollava-visual-qa.json", VISUAL)
    write(root / "yollava-text-only-qa.json", TEXT)
    write(root / "descriptions.json", {"bo": "<sks> is a small orange dog", "mam": "a grey cat", "shiba-gray": "a grey plush toy"})
    return root


def train_tiny_concept(base, store: Path, name: str) -> None:
    """A concept file on the tiny base (random rows: the mechanics, not learning)."""
    from yollava.concept import save_concept

    params = init_concept(base, name, ConceptConfig())
    with attached(base, params):
        save_concept(params, base, store, extra={"training": {"seconds": 12.5, "best_epoch": 1, "positives": []}})


def always_says(base, text: str) -> None:
    """Make the real model prefer ``text``'s first token above everything (a hook on its output head)."""
    token = base.tokenizer(f" {text}", add_special_tokens=False)["input_ids"][0]
    head = base.model.get_output_embeddings()

    def hook(module, inputs, output):
        bonus = torch.zeros(output.shape[-1], dtype=output.dtype, device=output.device)
        bonus[token] = 1e4
        return output + bonus

    head.register_forward_hook(hook)


def test_soft_prompt_query_is_the_training_prompt(tiny_base, fmt):
    params = init_concept(tiny_base, "bo", ConceptConfig())
    attach(tiny_base, params)
    person = concept_personalization(params.tokens)
    query = build_query(tiny_base, fmt, person, "Is <bo> here?", scene="x.png")
    trained = encode(tiny_base.tokenizer, render(fmt, [Turn("Is <bo> here?", None, images=1)], tiny_base.tokenizer.eos_token, params.tokens.soft_prompt),
                     tiny_base.image_token_id, tiny_base.num_image_tokens)
    assert query.ids == trained.input_ids and [r.path for r in query.images] == ["x.png"]
    # personalization tokens: the soft prompt "<bo> is <bo_1>...<bo_16>." (the separating space may merge into the next word)
    soft = tiny_base.tokenizer(params.tokens.soft_prompt, add_special_tokens=False)["input_ids"]
    assert 19 <= len(soft) <= tokens_per_query(tiny_base, fmt, person) <= len(soft) + 1


def test_in_context_prompt_is_pvit_format(tiny_base, fmt):
    person = Personalization("in-context", "bo", "<bo>", references=("r0.png", "r1.png"))
    assert person.user_text(fmt, "Is <bo> here?", scene=True) == "<image>\nThis is <bo>.\n<image>\nThis is <bo>.\n<image>\nIs <bo> here?"
    # the method's own: PVIT's demo prompt (personalize-llava/llava/serve/cli_personalize.py)
    template = evaluation_template()["in_context"]
    pvit = Personalization("in-context", "bo", "<bo>", references=("r0.png",), reference_text=template["reference"], scene_text=template["scene"])
    assert pvit.user_text(fmt, "Is <bo> here?", scene=True) == (
        "<image>\nThis is <bo>.\n<image>\nAnswer the following question based on the image:\nIs <bo> here?")
    assert pvit.user_text(fmt, "What colour is <bo>?", scene=False) == "<image>\nThis is <bo>.\nWhat colour is <bo>?"
    assert pvit.bare().user_text(fmt, "Is <bo> here?", scene=True) == "<image>\nIs <bo> here?"
    assert person.user_text(fmt, "What colour is <bo>?", scene=False) == "<image>\nThis is <bo>.\n<image>\nThis is <bo>.\nWhat colour is <bo>?"
    query = build_query(tiny_base, fmt, person, "Is <bo> here?", scene="s.png")
    assert [r.path for r in query.images] == ["r0.png", "r1.png", "s.png"]
    assert query.ids.count(tiny_base.image_token_id) == 3 * tiny_base.num_image_tokens
    block = len(tiny_base.tokenizer("\nThis is <bo>.\n", add_special_tokens=False)["input_ids"])
    assert tiny_base.num_image_tokens * 2 < tokens_per_query(tiny_base, fmt, person) <= 2 * (tiny_base.num_image_tokens + block + 1)


def test_a_model_that_always_says_A_scores_half_on_text_qa(tiny_base, fmt):
    """Like the published file ("A" correct in 390 of 400), 39 of 40 questions here have A correct:
    asked in the file's order only, a model that always says "A" would score 0.975."""
    options = [("Dog", "Cat"), ("Brown", "Grey"), ("Yes", "No"), ("Corgi", "Shiba inu")]
    questions = [Question("bo", str(i), f"Question {i} about sks?", (("A", a), ("B", b)) if i else (("A", b), ("B", a)), "A" if i else "B")
                 for i, (a, b) in enumerate(options * 10)]
    always_says(tiny_base, "A")
    person = Personalization("vanilla", "bo", "<bo>")
    result = score_multiple_choice(tiny_base, fmt, person, questions, FeatureCache(tiny_base))
    assert result.first_letter_rate == 1.0
    file_order = sum(q["orders"][0]["correct"] for q in result.per_question) / len(questions)
    assert file_order == pytest.approx(0.975)
    assert result.letter == pytest.approx(0.5)
    assert result.n_questions == 40 and result.n_prompts == 80


def test_multiple_choice_prompt_lists_every_order(tiny_base, fmt):
    prompt = letter_prompt("What is <bo>'s breed?", ["Corgi", "Shiba inu"])
    assert prompt == "What is <bo>'s breed?\nA. Corgi\nB. Shiba inu\nAnswer with the option's letter from the given choices directly."
    question = Question("bo", "1", "What is sks's breed?", (("A", "Corgi"), ("B", "Shiba inu")), "B")
    result = score_multiple_choice(tiny_base, fmt, Personalization("vanilla", "bo", "<bo>"), [question], FeatureCache(tiny_base))
    orders = result.per_question[0]["orders"]
    assert [o["order"] for o in orders] == [["Corgi", "Shiba inu"], ["Shiba inu", "Corgi"]]
    # the same model, the same letter in both orders: one right, one wrong
    assert result.per_question[0]["question"] == "What is <bo>'s breed?"
    assert set(result.per_question[0]["option_logliks"]) == {"Corgi", "Shiba inu"}


def test_generated_answers_that_are_not_yes_or_no_count_wrong(tiny_base, fmt, dataset):
    """The random tiny model rarely says a coherent yes/no: those answers are scored wrong, never dropped."""
    positives, negatives = open_benchmark(dataset).test_split("bo")
    result = evaluate_concept(tiny_base, Personalization("vanilla", "bo", "<bo>"), positives, negatives, FeatureCache(tiny_base), fmt, generation=True)
    verdicts = [r["verdict"] for r in result.per_image]
    correct = sum(v == ("yes" if r["label"] else "no") for v, r in zip(verdicts, result.per_image))
    assert result.generation["other"] == verdicts.count("other")
    assert result.generation["positive"] * len(positives) + result.generation["negative"] * len(negatives) == pytest.approx(correct)
    always_says(tiny_base, "Yes")
    forced = evaluate_concept(tiny_base, Personalization("vanilla", "bo", "<bo>"), positives, negatives, FeatureCache(tiny_base), fmt, generation=True)
    assert forced.positive == 1.0 and forced.negative == 0.0 and forced.yes_rate == 1.0


def test_every_method_and_task_through_the_harness(tiny_base, dataset, tmp_path):
    store = tmp_path / "concepts"
    train_tiny_concept(tiny_base, store, "bo")
    # the random tiny model talks until the cap: 4 tokens keep the test short
    plan = plan_evaluation(dataset, ["bo"], ["all"], ["all"], store=store, refs=2, generation=True, max_new_tokens=4)
    assert plan.concept_base == "tiny" and plan.methods == list(METHODS)
    features = FeatureCache(tiny_base)
    records = run_evaluation(plan, tiny_base, QUIET, features=features)
    assert len(records) == 6 * 4
    # every image's features once, for every task and method (6 test photos, bo's 3 training photos)
    assert features.computed == len(features) == 9
    by = {(r["method"], r["concept"], r["task"]): r for r in records}
    for r in records:
        assert {"task", "method", "concept", "accuracy", "n_questions", "tokens_per_query"} <= set(r)
        assert 0.0 <= r["accuracy"] <= 1.0 and r["model"]["id"] == "tiny"
    assert by[("soft-prompt", "bo", "recognition")]["n_questions"] == 2 + 4
    assert by[("soft-prompt", "bo", "recognition")]["train_seconds"] == 12.5
    assert by[("vanilla", "bo", "recognition")]["train_seconds"] is None
    assert by[("soft-prompt", "bo", "visual-qa")]["n_questions"] == 2 and by[("soft-prompt", "bo", "text-qa")]["n_questions"] == 3
    assert by[("vanilla", "bo", "text-qa")]["tokens_per_query"] == 0
    assert by[("soft-prompt", "bo", "caption")]["metrics"]["n_negative"] == 2  # one photo of each other subject
    assert by[("description", "bo", "recognition")]["prefix"] == "<bo> is a small orange dog."
    refs = by[("in-context", "bo", "recognition")]
    assert [Path(p).name for p in refs["references"]] == ["0.png", "1.png"] and refs["refs"] == 2
    assert refs["tokens_per_query"] > 2 * tiny_base.num_image_tokens
    # untrained methods spell <bo> as plain text after the concept bo was attached and detached
    assert by[("vanilla", "bo", "recognition")]["identifier"] == "<bo>"
    text_items = by[("soft-prompt", "bo", "text-qa")]["items"]
    assert text_items[2]["question"] == "Does <bo> has whiskers?"
    # auto descriptions: generated once per subject, cached next to the concept, reused
    cache = json.loads((store / "bo" / AUTO_DESCRIPTION).read_text())
    assert len(cache["captions"]) == 3 and by[("auto-short", "bo", "recognition")]["method_info"]["summary"] == cache["summary"]
    assert by[("auto-long", "bo", "recognition")]["prefix"].startswith("Photos of <bo>: ")


def test_each_photos_prefix_is_computed_once_for_every_concept_method_and_task(tiny_base, dataset, tmp_path):
    """On the run's PrefixCache (what `yollava eval` passes) a test photo's prefix (system text, USER:, the
    image) is computed once for both concepts, three methods and three image tasks, and the scores are
    those of the full forward (a FeatureCache run)."""
    from yollava.forward import PrefixCache

    store = tmp_path / "concepts"
    for name in ("bo", "mam"):
        train_tiny_concept(tiny_base, store, name)
    plan = plan_evaluation(dataset, ["bo", "mam"], ["recognition", "visual-qa", "text-qa", "caption"], ["soft-prompt", "vanilla", "description"],
                           store=store, generation=True, max_new_tokens=3)
    cache = PrefixCache(tiny_base)
    cached = run_evaluation(plan, tiny_base, QUIET, features=cache)
    # the 6 test photos; text questions have no image prefix to share and run whole (scoring.cache_for)
    assert cache.stats.computed == len(cache) == 6
    assert cache.stats.hits > 10 * cache.stats.computed
    full = run_evaluation(plan, tiny_base, QUIET, features=FeatureCache(tiny_base))
    for a, b in zip(cached, full):
        assert (a["task"], a["method"], a["concept"]) == (b["task"], b["method"], b["concept"])
        if a["task"] == "recognition":
            for x, y in zip(a["items"], b["items"]):
                assert x["logp_yes"] == pytest.approx(y["logp_yes"], abs=1e-4) and x["logp_no"] == pytest.approx(y["logp_no"], abs=1e-4)
        if a["task"] in ("visual-qa", "text-qa"):
            for x, y in zip(a["items"], b["items"]):
                for ox, oy in zip(x["orders"], y["orders"]):
                    assert ox["letter_logprobs"] == pytest.approx(oy["letter_logprobs"], abs=1e-4)
                assert x["option_logliks"] == pytest.approx(y["option_logliks"], abs=1e-4)


def test_auto_descriptions_are_reused_until_the_photos_change(tiny_base, dataset, tmp_path, monkeypatch):
    from yollava.methods import auto_description as auto

    plan = plan_evaluation(dataset, ["bo"], ["recognition"], ["auto-short"], store=tmp_path / "s", generation=False, max_new_tokens=4)
    run_evaluation(plan, tiny_base, QUIET)
    first = (tmp_path / "s" / "bo" / AUTO_DESCRIPTION).read_text()

    def no_generation(*args, **kwargs):
        raise AssertionError("the cached auto description should have been reused")

    monkeypatch.setattr(auto, "greedy_generate", no_generation)
    run_evaluation(plan, tiny_base, QUIET)
    from conftest import make_image

    make_image(dataset / "train" / "bo" / "0.png", (250, 250, 250))
    plan = plan_evaluation(dataset, ["bo"], ["recognition"], ["auto-short"], store=tmp_path / "s", generation=False, max_new_tokens=4)
    with pytest.raises(AssertionError, match="reused"):
        run_evaluation(plan, tiny_base, QUIET)
    assert (tmp_path / "s" / "bo" / AUTO_DESCRIPTION).read_text() == first


def test_auto_descriptions_are_cached_under_the_concepts_lock(tiny_base, dataset, tmp_path):
    """The cache lives in the concept's folder, which train swaps whole: while another process holds the
    concept's lock (a training run saving it) the description is used but not written; afterwards it is."""
    import subprocess
    import sys

    from yollava.storage import lock_path

    store = tmp_path / "s"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from yollava.storage import artifact_lock\n"
        "with artifact_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)"), str(store / "bo")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        plan = plan_evaluation(dataset, ["bo"], ["recognition"], ["auto-short"], store=store, generation=False, max_new_tokens=4)
        records = run_evaluation(plan, tiny_base, QUIET)
        assert records[0]["method_info"]["summary"] is not None and len(records[0]["method_info"]["captions"]) == 3
        assert not (store / "bo" / AUTO_DESCRIPTION).exists()
    finally:
        holder.kill()
        holder.wait()
    again = run_evaluation(plan, tiny_base, QUIET)
    assert json.loads((store / "bo" / AUTO_DESCRIPTION).read_text())["summary"] == again[0]["method_info"]["summary"]
    assert not lock_path(store / "bo").exists()


def test_report_table_shape_and_plot(tiny_base, dataset, tmp_path):
    store = tmp_path / "concepts"
    train_tiny_concept(tiny_base, store, "bo")
    plan = plan_evaluation(dataset, ["bo"], ["recognition", "text-qa"], ["soft-prompt", "vanilla", "in-context"], store=store, generation=False)
    records = run_evaluation(plan, tiny_base, QUIET)
    write(tmp_path / "r.json", records)
    loaded = load_records([tmp_path / "r.json"])
    table = build_table(loaded)
    assert table["columns"] == ["soft-prompt", "vanilla", "in-context (1 ref)"]
    assert table["cells"]["tokens"]["vanilla"]["mean"] == 0
    assert table["cells"]["weighted"]["soft-prompt"]["mean"] == next(r["accuracy"] for r in records if r["method"] == "soft-prompt" and r["task"] == "recognition")
    assert "visual-qa" not in {r["task"] for r in records} and "soft-prompt" not in table["cells"]["visual_qa"]
    markdown = render_markdown(table, "tiny")
    assert "| recognition: **weighted** |" in markdown and "| visual QA (letter) | – | – | – |" in markdown
    paths = write_report(loaded, tmp_path / "report")
    assert paths["plot"].stat().st_size > 1000 and json.loads(paths["json"].read_text())["columns"] == table["columns"]
    with pytest.raises(Exception, match="two results for task recognition"):
        build_table(loaded + loaded)
