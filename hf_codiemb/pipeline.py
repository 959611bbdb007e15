"""The training pipeline of a recipe, as a library: load the training and evaluation data of a recipe and derive the
prompts of every dataset. `codiemb train` (hf_codiemb/commands/train.py), `codiemb evaluate` and the study runner
call these functions; none of them imports a command module.
"""

from __future__ import annotations

import logging
import os
import typing

from datasets import Dataset

from hf_codiemb.arguments import DataArguments, EvalDataArguments
from hf_codiemb.columns import STS_COLUMNS, task_columns
from hf_codiemb.data.eval_sets import IREvalSet, STSEvalSet
from hf_codiemb.recipe import resolve_data_path

logger = logging.getLogger(__name__)


def dataset_name(path: str, taken: set[str], given: str | None = None) -> str:
    """The unique name of a dataset: ``given`` (a recipe's ``NAME=PATH``), else what the file is
    (:func:`hf_codiemb.data.names.descriptive_name`: its stem, after its folder for a split stem such as ``train``);
    on a clash its folder in front, then a number. Added to ``taken``."""
    from hf_codiemb.data.names import descriptive_name, unique_name

    if given is not None:
        if given in taken:
            from hf_codiemb.errors import RecipeError

            raise RecipeError(f"Dataset name {given!r} is given to two datasets of the recipe; names must be unique")
        taken.add(given)
        return given
    resolved = resolve_data_path(path)
    return unique_name(descriptive_name(resolved), taken, resolved.parent.name or None)


class TrainingData(tuple):
    """``(datasets, tasks, instructions)`` of :func:`load_training_data`, and ``num_negatives``: the datasets that
    train with another number of hard negatives than the recipe's (0: in-batch negatives only), for
    ``CoDiEmbTrainingArguments.dataset_num_negatives``."""

    num_negatives: dict[str, int]

    def __new__(cls, datasets: dict, tasks: dict, instructions: dict, num_negatives: dict[str, int]) -> typing.Self:
        data = super().__new__(cls, (datasets, tasks, instructions))
        data.num_negatives = num_negatives
        return data


def load_training_data(data_args: DataArguments, num_negatives: int) -> TrainingData:
    """All training datasets of a recipe, validated, with the task and the task instruction of each.

    A file whose records carry several ``instruction`` values becomes one dataset per instruction (see
    :func:`hf_codiemb.instructions.split_by_instruction`); ``instructions[name]`` is ``None`` for datasets without
    one (they get the recipe's model-level prompts). A BEIR split given without a mined-negatives file
    (``FOLDER:SPLIT``) keeps every query and trains with in-batch negatives only (``num_negatives[name] = 0``).
    """
    from hf_codiemb.data import ir_train_from_sts_pairs, load_ir_dataset, load_sts_dataset
    from hf_codiemb.data.beir import beir_ir_train_dataset, load_beir, parse_beir_spec
    from hf_codiemb.data.names import split_named_entry
    from hf_codiemb.instructions import split_by_instruction

    datasets: dict[str, Dataset] = {}
    tasks: dict[str, str] = {}
    in_batch_only: set[str] = set()
    taken: set[str] = set()
    score_range = tuple(data_args.sts_score_range)
    for entry in data_args.ir_train:
        given, path = split_named_entry(entry)
        name = dataset_name(path, taken, given)
        datasets[name] = load_ir_dataset(
            resolve_data_path(path), name=name, max_records=data_args.max_train_records, keep_instruction=True
        )
        tasks[name] = "ir"
    for entry in data_args.ir_train_beir:
        given, entry = split_named_entry(entry)
        spec = parse_beir_spec(entry)
        beir = load_beir(spec.folder, spec.split)
        name = dataset_name(beir.name, taken, given)
        datasets[name] = beir_ir_train_dataset(
            beir, spec.negatives, require_negatives=num_negatives > 0 and spec.negatives is not None,
            max_records=data_args.max_train_records,
        )  # fmt: skip
        tasks[name] = "ir"
        if spec.negatives is None and num_negatives > 0:
            in_batch_only.add(name)
            logger.info("%s: no mined-negatives file; trained with in-batch negatives only", name)
    for entry in data_args.ir_train_from_sts:
        given, path = split_named_entry(entry)
        name = dataset_name(path, taken, given) if given is not None else dataset_name(path, taken) + "_ir"
        sts = load_sts_dataset(resolve_data_path(path), score_range=score_range, max_records=data_args.max_train_records)
        datasets[name] = ir_train_from_sts_pairs(sts, num_negatives=max(num_negatives, 1))
        tasks[name] = "ir"
    for entry in data_args.sts_train:
        given, path = split_named_entry(entry)
        name = dataset_name(path, taken, given)
        datasets[name] = load_sts_dataset(
            resolve_data_path(path),
            score_range=score_range,
            name=name,
            max_records=data_args.max_train_records,
            keep_instruction=True,
        )
        tasks[name] = "sts"
    if not datasets:
        from hf_codiemb.errors import RecipeError

        raise RecipeError("The recipe has no training data: give ir_train, ir_train_beir and/or sts_train")
    split: dict[str, Dataset] = {}
    split_tasks: dict[str, str] = {}
    instructions: dict[str, str | None] = {}
    negatives: dict[str, int] = {}
    for name, dataset in datasets.items():
        for part, (part_dataset, instruction) in split_by_instruction(name, dataset).items():
            keep = list(task_columns(tasks[name]))
            split[part] = part_dataset.select_columns([c for c in keep if c in part_dataset.column_names])
            split_tasks[part] = tasks[name]
            instructions[part] = instruction
            if name in in_batch_only:
                negatives[part] = 0
    return TrainingData(split, split_tasks, instructions, negatives)


def check_sts_eval_set(sts: Dataset, path: str | os.PathLike[str], max_records: int | None) -> None:
    """An STS evaluation set must have a Spearman correlation: at least 2 pairs and gold scores that are not all
    equal (else scipy's correlation is undefined and the evaluation fails after training).

    Raises:
        DataError: naming the file.
    """
    from hf_codiemb.errors import DataError

    cap = f" (max_eval_records={max_records} keeps only that many)" if max_records is not None else ""
    if len(sts) < 2:
        raise DataError(
            f"STS evaluation file {os.path.abspath(path)}: {len(sts)} pair(s){cap}; a Spearman correlation needs at "
            "least 2 pairs"
        )
    scores = set(sts["score"])
    if len(scores) == 1:
        raise DataError(
            f"STS evaluation file {os.path.abspath(path)}: every gold score is {scores.pop()}{cap}; a Spearman "
            "correlation needs scores that differ"
        )


def load_eval_sets(data_args: EvalDataArguments, model_args) -> tuple[dict[str, STSEvalSet], dict[str, IREvalSet]]:
    """The STS and IR evaluation sets of a recipe (``{name: set}``), each with the prompts training uses.

    A set whose records carry a task ``instruction`` is encoded with it (as training does), else with the recipe's
    model-level prompts (:func:`hf_codiemb.instructions.task_prompts`).
    """
    from hf_codiemb.data import ir_task_from_sts_pairs, load_ir_dataset, load_sts_dataset
    from hf_codiemb.data.beir import beir_ir_eval_set, load_beir, parse_beir_spec
    from hf_codiemb.data.derived import ir_eval_set_from_ir_dataset
    from hf_codiemb.data.names import split_named_entry
    from hf_codiemb.instructions import dataset_instruction, task_prompts

    sts_sets: dict[str, STSEvalSet] = {}
    ir_sets: dict[str, IREvalSet] = {}
    taken: set[str] = set()
    default = task_prompts(None, model_args)  # sets without an instruction
    for entry in data_args.sts_eval:
        given, path = split_named_entry(entry)
        name = dataset_name(path, taken, given)
        sts = load_sts_dataset(
            resolve_data_path(path),
            score_range=tuple(data_args.sts_score_range),
            max_records=data_args.max_eval_records,
            keep_instruction=True,
        )
        check_sts_eval_set(sts, resolve_data_path(path), data_args.max_eval_records)
        set_prompts = task_prompts(dataset_instruction(sts), model_args)
        sts = sts.select_columns(list(STS_COLUMNS))
        sts_sets[name] = STSEvalSet(name, sts, set_prompts.sts)
        if data_args.ir_eval_from_sts:
            queries, corpus, relevant = ir_task_from_sts_pairs(sts)
            if queries:
                ir_name = f"{name}-paraphrase-ir"
                ir_sets[ir_name] = IREvalSet(ir_name, queries, corpus, relevant, set_prompts.query, set_prompts.passage)
    for entry in data_args.ir_eval:
        given, path = split_named_entry(entry)
        name = dataset_name(path, taken, given)
        ir = load_ir_dataset(resolve_data_path(path), max_records=data_args.max_eval_records, keep_instruction=True)
        set_prompts = task_prompts(dataset_instruction(ir), model_args)
        queries, corpus, relevant = ir_eval_set_from_ir_dataset(ir)
        ir_sets[name] = IREvalSet(name, queries, corpus, relevant, set_prompts.query, set_prompts.passage)
    for entry in data_args.ir_eval_beir:
        given, entry = split_named_entry(entry)
        spec = parse_beir_spec(entry, allow_negatives=False)
        beir = load_beir(spec.folder, spec.split)
        name = dataset_name(beir.name, taken, given)
        ir_sets[name] = beir_ir_eval_set(
            beir, query_prompt=default.query, corpus_prompt=default.passage, max_queries=data_args.max_eval_records,
            name=name,
        )  # fmt: skip
    return sts_sets, ir_sets


def training_prompts(
    model_args, datasets: dict[str, Dataset], tasks: dict[str, str], instructions: dict[str, str | None], training_args
) -> dict | None:
    """Per-dataset, per-column prompts (sentence-transformers' ``prompts``): task instructions, passage prefixes.

    A prompt the recipe gives itself in ``prompts`` (``{dataset: {column: prompt}}``) wins over the derived one.
    """
    from hf_codiemb.instructions import task_prompts

    prompts: dict[str, dict[str, str]] = {}
    for name in datasets:
        columns = task_prompts(instructions.get(name), model_args).columns(
            tasks[name], training_args.num_positives, training_args.num_negatives
        )
        given = (training_args.prompts or {}).get(name) if isinstance(training_args.prompts, dict) else None
        if isinstance(given, dict):
            columns.update(given)
        if columns:
            prompts[name] = columns
    return prompts or None
