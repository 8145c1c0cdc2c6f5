"""The evaluation harness: every (method, concept, task) of a request, checked before the model loads, run on one base.

Two steps, so a bad input fails with one line and nothing written:

    plan = plan_evaluation(data, concepts, tasks, methods, ...)   # files only: layout, QA, descriptions, concepts
    records = run_evaluation(plan, base, console)                  # the model: one prefix cache for everything

Each record is one (task, method, concept): ``task``, ``method``, ``concept``, ``accuracy`` (the task's
headline), ``n_questions``, ``tokens_per_query``, ``train_seconds``, every other metric, what was
asked and the per-item details. ``yollava report`` (:mod:`yollava.evaluate.report`) reads them back;
ablation suites and other comparisons call these two functions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console

import yollava
from yollava.base import Base
from yollava.concept import read_record
from yollava.errors import YollavaError
from yollava.evaluate.caption import Caption
from yollava.evaluate.layout import DESCRIPTIONS_FILE, TEXT_QA_FILE, VISUAL_QA_FILE, Benchmark, open_benchmark
from yollava.evaluate.qa_files import QAFile, QAKind, read_qa_file
from yollava.evaluate.recognition import Recognition
from yollava.evaluate.scoring import check_fits
from yollava.evaluate.task import Task, TaskInputs
from yollava.evaluate.text_qa import TextQA
from yollava.evaluate.visual_qa import VisualQA
from yollava.forward import FeatureCache, PrefixCache
from yollava.methods import METHODS, Method, MethodContext, MethodInputs, build_query, get_method, method_names, read_descriptions, tokens_per_query
from yollava.methods.soft_prompt import SoftPrompt
from yollava.progress import Tracker
from yollava.prompts import ChatFormat, RecognitionBank, load_template

RESULT_FORMAT = "yollava-eval-result"
RESULT_VERSION = 1
# registry order = the report's row order
TASKS: dict[str, type[Task]] = {t.name: t for t in (Recognition, VisualQA, TextQA, Caption)}
ALL = "all"


def task_names(names: Sequence[str] | None) -> list[str]:
    """``--task`` values expanded (``all`` = every task; default recognition), in registry order.

    Raises:
        YollavaError: unknown task.
    """
    names = list(names or [Recognition.name])
    if ALL in names:
        return list(TASKS)
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise YollavaError(f"--task {unknown[0]}: unknown task; choose from {', '.join(TASKS)} or {ALL}")
    return [n for n in TASKS if n in names]


@dataclass
class EvalPlan:
    """A checked request: what will run, with every file already read.

    Attributes:
        subjects: the concepts / subjects, in the order given.
        methods: method registry names.
        tasks: task registry names.
        inputs: what methods read (store, references, descriptions).
        task_inputs: what tasks read (dataset, QA files).
        plans: (task, subject) -> that task's plan.
        concept_base: the base model id the soft-prompt concepts were trained on (None without soft-prompt).
    """

    subjects: list[str]
    methods: list[str]
    tasks: list[str]
    inputs: MethodInputs
    task_inputs: TaskInputs
    plans: dict[tuple[str, str], Any] = field(default_factory=dict)
    concept_base: str | None = None

    @property
    def benchmark(self) -> Benchmark:
        return self.task_inputs.benchmark

    def total(self) -> int:
        """Progress units of the whole run."""
        per_method = sum(TASKS[t]().size(self.plans[(t, s)]) for t in self.tasks for s in self.subjects)
        return per_method * len(self.methods)


def _qa_files(benchmark: Benchmark, qa: Sequence[str | Path], tasks: Sequence[str], subjects: Sequence[str]) -> dict[QAKind, QAFile]:
    """``--qa`` files by kind, and the dataset's own QA files for QA tasks without one."""
    files: dict[QAKind, QAFile] = {}
    for path in qa:
        read = read_qa_file(path, benchmark, subjects)
        if read.kind in files:
            raise YollavaError(f"--qa {path}: a second {read.kind.value} file ({files[read.kind].path} is one); pass one per kind")
        files[read.kind] = read
    for kind, default in ((QAKind.visual, VISUAL_QA_FILE), (QAKind.text, TEXT_QA_FILE)):
        if kind.value in tasks and kind not in files and (benchmark.root / default).is_file():
            files[kind] = read_qa_file(benchmark.root / default, benchmark, subjects, expect=kind)
    return files


def plan_evaluation(
    data: str | Path,
    subjects: Sequence[str],
    tasks: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    qa: Sequence[str | Path] = (),
    store: str | Path = "concepts",
    refs: int = 1,
    descriptions: str | Path | None = None,
    generation: bool = True,
    caption_negatives: int = 1,
    max_new_tokens: int | None = None,
    companions: dict[str, Sequence[str]] | None = None,
) -> EvalPlan:
    """Read and check everything a run needs, without a model.

    Args:
        data: dataset in the published layout (``DIR/{train,test}/<subject>/``).
        subjects: concepts to evaluate; each names its subject (``train/NAME``, ``test/NAME``) and, for
            ``soft-prompt``, the concept ``<store>/NAME``.
        tasks: task names or ``all`` (default recognition).
        methods: method names or ``all`` (default soft-prompt).
        qa: QA files (kind told by their entries); QA tasks without one use ``DIR/yollava-visual-qa.json``
            / ``DIR/yollava-text-only-qa.json`` when present.
        store: the concept store.
        refs: reference photos for ``in-context``.
        descriptions: ``--descriptions`` file (default ``DIR/descriptions.json`` when present).
        generation: also score whole greedy answers.
        caption_negatives: photos per other subject captioned for the false-mention rate.
        max_new_tokens: cap on every generated text (None: each task's own length).
        companions: subject -> other concepts of ``store`` loaded with it for ``soft-prompt`` (attached,
            their soft prompts after its own); ablations' ``compose`` suite.

    Raises:
        YollavaError: anything a user can fix, in one line.
    """
    from yollava.concept import validate_name

    if not subjects:
        raise YollavaError("pass at least one --concept NAME")
    for subject in subjects:
        validate_name(subject)
    if len(set(subjects)) != len(subjects):
        raise YollavaError("a --concept is given twice; pass each once")
    if caption_negatives < 0:
        raise YollavaError(f"--caption-negatives {caption_negatives}: pass 0 or more")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise YollavaError(f"--max-new-tokens {max_new_tokens}: pass 1 or more")
    tasks = task_names(tasks)
    methods = method_names(list(methods) if methods else None)
    benchmark = open_benchmark(data)
    qa_files = _qa_files(benchmark, qa, tasks, subjects)
    descriptions_file = Path(descriptions) if descriptions is not None else benchmark.root / DESCRIPTIONS_FILE
    texts = read_descriptions(descriptions_file) if descriptions is not None or descriptions_file.is_file() else None
    inputs = MethodInputs(benchmark=benchmark, store=Path(store), refs=refs, descriptions=texts,
                          descriptions_file=str(descriptions_file) if texts is not None else None, max_new_tokens=max_new_tokens,
                          companions={s: tuple(c) for s, c in (companions or {}).items()})
    task_inputs = TaskInputs(benchmark=benchmark, qa=qa_files, generation=generation, caption_negatives=caption_negatives,
                             max_new_tokens=max_new_tokens)
    plan = EvalPlan(subjects=list(subjects), methods=methods, tasks=tasks, inputs=inputs, task_inputs=task_inputs)
    for name in methods:
        method = get_method(name)
        for subject in subjects:
            method.check(inputs, subject)
    if SoftPrompt.name in methods:
        bases = {read_record(store, s).base_model.id for s in subjects}
        bases |= {read_record(store, c).base_model.id for s in subjects for c in inputs.companions.get(s, ())}
        if len(bases) > 1:
            raise YollavaError(f"the concepts were trained on different bases ({', '.join(sorted(bases))}); evaluate them separately")
        plan.concept_base = bases.pop()
    for task in tasks:
        for subject in subjects:
            plan.plans[(task, subject)] = TASKS[task]().plan(task_inputs, subject)
    return plan


def _templates(fmt: ChatFormat) -> dict[str, str]:
    return {"chat": f"{fmt.name}/v{fmt.version}", "recognition": f"recognition/v{load_template('recognition')['version']}",
            "evaluation": f"evaluation/v{load_template('evaluation')['version']}"}


def run_evaluation(plan: EvalPlan, base: Base, console: Console | None = None, fmt: ChatFormat | None = None,
                   features: FeatureCache | PrefixCache | None = None) -> list[dict[str, Any]]:
    """Run every (method, concept, task) of ``plan`` on ``base``.

    Methods run one after the other and each concept is attached only while it is scored, so one
    loaded base serves everything. One cache (``features``, shared with the caller if given; by
    default a :class:`~yollava.forward.PrefixCache` with its default budgets) holds every image's
    features and every photo's prefix keys/values (system text and image: the same for every task,
    method and concept that asks about it), so each is computed once while the budget keeps it.

    Returns:
        One record per (task, method, concept), in method, concept, task order.

    Raises:
        YollavaError: a concept does not fit the base, or a prompt does not fit its context.
    """
    console = console or Console(stderr=True)
    fmt = fmt or ChatFormat.load("llava_v1")
    features = features if features is not None else PrefixCache(base)
    ctx = MethodContext(inputs=plan.inputs, base=base, fmt=fmt, features=features, console=console)
    records: list[dict[str, Any]] = []
    eval_question = RecognitionBank.load().eval_question
    with Tracker(console, "eval", plan.total()) as tracker:
        for name in plan.methods:
            method: Method = METHODS[name]()
            # a method that trains nothing spells <bo> as plain text, even once concept bo was attached
            method_ctx = ctx if method.trains else replace(ctx, base=base.plain())
            for subject in plan.subjects:
                tracker.set_info(f"{name} {subject}: setting up")
                with method.personalize(method_ctx, subject) as person:
                    tokens = tokens_per_query(method_ctx.base, fmt, person)
                    probe = build_query(method_ctx.base, fmt, person, eval_question.replace("{name}", person.identifier), scene="_")
                    check_fits(base, probe, f"--method {name} --concept {subject}")
                    for task in plan.tasks:
                        tracker.set_info(f"{name} {subject} {task}")
                        started = time.perf_counter()
                        outcome = TASKS[task]().run(method_ctx, person, plan.plans[(task, subject)], tracker.advance)
                        records.append({
                            "format": RESULT_FORMAT, "format_version": RESULT_VERSION,
                            "task": task, "method": name, "concept": subject,
                            "accuracy": outcome.accuracy, "scoring": outcome.scoring, "n_questions": outcome.n_questions,
                            "tokens_per_query": tokens, "train_seconds": person.train_seconds,
                            "metrics": outcome.metrics,
                            "identifier": person.identifier, "prefix": person.prefix, "references": list(person.references),
                            "method_info": person.info, "sources": outcome.sources,
                            "model": base.describe(), "image_tokens": base.num_image_tokens, "data": str(plan.benchmark.root), "refs": plan.inputs.refs if name == "in-context" else None,
                            "seconds": time.perf_counter() - started, "yollava_version": yollava.__version__, "templates": _templates(fmt),
                            "items": outcome.items,
                        })
    return records
