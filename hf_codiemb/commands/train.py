"""`codiemb train`: run a recipe (YAML + overrides): evaluate, train with CoDiEmb, save, evaluate again.

A thin script over the library (hf_codiemb.pipeline loads data and prompts, hf_codiemb.trainer trains); its imports
are inside the functions so that `codiemb --help` stays fast.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

HELP = "Train a unified IR + STS embedding model from a YAML recipe (flags override the recipe)."


def build_parser():
    """The parser of ``codiemb train`` (:func:`hf_codiemb.recipe.build_recipe_parser`)."""
    from hf_codiemb.recipe import build_recipe_parser

    return build_recipe_parser()


def dry_run(model_args, data_args, training_args) -> int:
    """Validate a recipe without loading weights: model path, data, sampler plan; fail wherever the run would.

    Prints the plan as JSON: the model and its Hub id, the datasets, the updates per task and epoch, and for a LoRA
    recipe the adapter set-up (r, alpha, dropout, target modules, trainable parameters counted on the meta device).

    The model is checked by :func:`hf_codiemb.model_names.resolve_model_path` (the real run's own check: folder, weights
    headers, Hub id offline/unreachable), the data by the loaders and the trainer's own
    :func:`~hf_codiemb.training_checks.validate_training_dataset`, the batch plan by the trainer's sampler
    (:meth:`~hf_codiemb.sampler.TaskBalancedBatchSampler.from_args`).
    """
    from transformers import AutoConfig

    from hf_codiemb.checkpoints import prepare_output_dir
    from hf_codiemb.lora import lora_plan
    from hf_codiemb.model_names import infer_base_model_id, resolve_model_path
    from hf_codiemb.pipeline import load_eval_sets, load_training_data
    from hf_codiemb.sampler import TaskBalancedBatchSampler
    from hf_codiemb.training_args import num_negatives_for
    from hf_codiemb.training_checks import check_deepspeed, check_model_selection, validate_training_dataset

    # The output folder and the resume value, as the real run checks them (nothing is deleted here).
    check_output_outside_inputs(model_args, data_args, training_args)
    check_deepspeed(training_args)
    resume_from = prepare_output_dir(training_args, dry_run=True)
    path = resolve_model_path(model_args.model_name_or_path)
    if Path(path).is_dir():
        config = AutoConfig.from_pretrained(path)
        logger.info("Model config %s: %s, hidden %s", path, config.model_type, getattr(config, "hidden_size", "?"))
    data = load_training_data(data_args, training_args.num_negatives)
    datasets, tasks, _ = data
    training_args.dataset_num_negatives = {**data.num_negatives, **(training_args.dataset_num_negatives or {})}
    for name, dataset in datasets.items():
        validate_training_dataset(name, tasks[name], dataset, num_negatives_for(training_args, name))
    sampler = TaskBalancedBatchSampler.from_args(datasets, tasks, training_args)
    sts_sets, ir_sets = load_eval_sets(data_args, model_args)
    evaluator = training_evaluator(data_args, training_args, sts_sets, ir_sets, model_args.effective_sts_prompt)
    check_model_selection(training_args, has_evaluator=evaluator is not None)
    plan = {
        "model": path,
        "base_model_id": infer_base_model_id(model_args.model_name_or_path),
        "datasets": {n: {"task": tasks[n], "records": len(d)} for n, d in datasets.items()},
        "updates_per_epoch": sampler.updates_per_task(),
        "world_size": training_args.world_size,
        "resume_from_checkpoint": resume_from,
        "evaluation_during_training": None
        if evaluator is None
        else {
            "strategy": training_args.eval_strategy.value,
            "steps": training_args.eval_steps,
            "sets": [e.name for e in evaluator.evaluators],
            "metric_for_best_model": training_args.metric_for_best_model,
            "load_best_model_at_end": training_args.load_best_model_at_end,
            "early_stopping_patience": training_args.early_stopping_patience,
        },
    }
    if model_args.lora_r > 0:
        plan["lora"] = lora_plan(model_args, path)
    sys.stdout.write(json.dumps(plan, indent=2) + "\n")
    return 0


def check_output_outside_inputs(model_args, data_args, training_args) -> None:
    """``output_dir`` may not be, lie inside or contain the base model folder or a data file/folder of the recipe.

    A run saved into its base model folder would replace the weights the next run (and every fusion that names it as
    its base) starts from; one saved over a data folder would mix checkpoints with the data.

    Raises:
        UsageError: naming the input and the output.
    """
    from hf_codiemb.data.names import split_named_entry
    from hf_codiemb.errors import UsageError
    from hf_codiemb.output_paths import overlapping_input
    from hf_codiemb.recipe import resolve_data_path

    spec = model_args.model_name_or_path
    model = None
    if spec.startswith(("packaged:", "prepared:")) or Path(spec).expanduser().is_dir():
        from hf_codiemb.model_names import resolve_model_path

        model = resolve_model_path(spec, check_hub=False)
    inputs: list[tuple[str, str | Path | None]] = [("base model", model)]
    for field_name in ("ir_train", "sts_train", "ir_train_from_sts", "ir_eval", "sts_eval"):
        for entry in getattr(data_args, field_name):
            path = resolve_data_path(split_named_entry(entry)[1])
            if path.is_file():  # anything else is the data loader's to name (a folder given as a file, ...)
                inputs.append((f"{field_name} file", path))
    for field_name in ("ir_train_beir", "ir_eval_beir"):
        for entry in getattr(data_args, field_name):
            folder = Path(split_named_entry(entry)[1].split(":")[0])
            if folder.is_dir():
                inputs.append((f"{field_name} folder", folder))
    problem = overlapping_input(training_args.output_dir, inputs)
    if problem is not None:
        raise UsageError(
            f"output_dir {os.path.abspath(training_args.output_dir)} {problem}; choose an output_dir outside it"
        )


def training_evaluator(data_args, training_args, sts_sets: dict, ir_sets: dict, sts_prompt: str | None):
    """The evaluator of the recipe's dev sets during training (``eval_strategy``), or ``None`` when it is ``no``.

    See :mod:`hf_codiemb.training_evaluation`: per-set metrics and ``codiemb_score`` (weighted by
    ``eval_ir_weight``), on IR corpora capped at ``eval_max_corpus`` documents.
    """
    from transformers.trainer_utils import IntervalStrategy

    from hf_codiemb.errors import RecipeError
    from hf_codiemb.training_evaluation import build_training_evaluator

    if training_args.eval_strategy == IntervalStrategy.NO:
        return None
    if not sts_sets and not ir_sets:
        raise RecipeError(
            f"eval_strategy {training_args.eval_strategy.value!r} evaluates the dev sets during training, but the "
            "recipe has none: give sts_eval, ir_eval or ir_eval_beir, or set eval_strategy: 'no'",
            "eval_strategy",
        )
    return build_training_evaluator(
        sts_sets,
        ir_sets,
        ir_weight=data_args.eval_ir_weight,
        max_corpus=data_args.eval_max_corpus,
        sts_prompt=sts_prompt,
        batch_size=training_args.per_device_eval_batch_size,
        seed=training_args.seed,
    )


RESUME_FLAGS = ("--resume_from_checkpoint", "--resume-from-checkpoint")


def resume_command(argv: list[str], checkpoint: str | Path) -> str:
    """The ``codiemb train`` command line of ``argv`` that resumes from ``checkpoint`` (a resume flag of ``argv``
    replaced), quoted for a POSIX shell."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in RESUME_FLAGS:
            skip = True
        elif not arg.startswith(tuple(f"{flag}=" for flag in RESUME_FLAGS)):
            kept.append(arg)
    return shlex.join(["codiemb", "train", *kept, "--resume_from_checkpoint", str(checkpoint)])


def resume_note(argv: list[str], output_dir: Path) -> str:
    """What a stopped run keeps: its latest complete checkpoint and the command that resumes from it, or that none
    was saved yet (the trainer's warnings about incomplete checkpoints are left out: the note is one line)."""
    from hf_codiemb.checkpoints import latest_complete_checkpoint, list_checkpoints

    checkpoints_logger = logging.getLogger("hf_codiemb.checkpoints")
    level = checkpoints_logger.level
    checkpoints_logger.setLevel(logging.ERROR)
    try:
        checkpoint = latest_complete_checkpoint(output_dir)
    finally:
        checkpoints_logger.setLevel(level)
    if checkpoint is None:
        again = shlex.join(["codiemb", "train", *argv])
        if list_checkpoints(output_dir):
            again += " --overwrite_output_dir"
        return f"training stopped before a complete checkpoint was saved in {output_dir}; start again with: {again}"
    return (
        f"training stopped; the checkpoints are fine: {checkpoint} is complete; resume with: "
        f"{resume_command(argv, checkpoint)}"
    )


def write_dimension_results(model, dims, sts_sets, ir_sets, output_dir: Path, **kwargs) -> None:
    """Evaluate a Matryoshka-trained model at each of ``dims`` and write ``eval_matryoshka.{json,md}`` (the table is
    printed too)."""
    from hf_codiemb.evaluation import evaluate_at_dimensions, format_dimensions_table

    logger.info("Evaluating at the Matryoshka dimensions %s", sorted(dims, reverse=True))
    results = evaluate_at_dimensions(model, dims, sts_sets, ir_sets, **kwargs)
    (output_dir / "eval_matryoshka.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    table = format_dimensions_table(results)
    (output_dir / "eval_matryoshka.md").write_text("# Evaluation at each Matryoshka dimension\n\n" + table)
    sys.stdout.write(table)


def run(argv: list[str]) -> int:
    """Entry point of `codiemb train`."""
    from sentence_transformers import SentenceTransformer
    from transformers import set_seed

    from hf_codiemb.checkpoints import delete_previous_checkpoints, prepare_output_dir
    from hf_codiemb.evaluation import evaluate_model, format_before_after_table, write_results
    from hf_codiemb.failures import declare_output
    from hf_codiemb.lora import load_lora_model
    from hf_codiemb.model_card import record_final_evaluation
    from hf_codiemb.models import load_model
    from hf_codiemb.pipeline import load_eval_sets, load_training_data, training_prompts
    from hf_codiemb.recipe import parse_recipe
    from hf_codiemb.trainer import CoDiEmbTrainer
    from hf_codiemb.training_checks import check_deepspeed, check_model_selection

    model_args, data_args, training_args, run_args = parse_recipe(argv)
    if run_args.dry_run:
        return dry_run(model_args, data_args, training_args)
    output_dir = Path(training_args.output_dir)
    # Before any work: lock output_dir, resume from the latest complete checkpoint, or refuse to overwrite a used
    # output_dir (with --overwrite_output_dir its old checkpoints are deleted only once everything is checked).
    check_output_outside_inputs(model_args, data_args, training_args)
    check_deepspeed(training_args)
    resume_from = prepare_output_dir(training_args)
    # Ctrl-C or a full disk from here on: one line naming the complete checkpoint and the command that resumes.
    declare_output(output_dir, kept=lambda: resume_note(argv, output_dir.absolute()))
    # Under DDP the local main process reads and validates the files first (into the datasets cache); the other
    # ranks wait, then load the memory-mapped cache instead of reading every file again.
    with training_args.main_process_first(desc="loading and validating the data"):
        data = load_training_data(data_args, training_args.num_negatives)
        sts_sets, ir_sets = load_eval_sets(data_args, model_args)
    datasets, tasks, instructions = data
    training_args.dataset_tasks = tasks
    training_args.dataset_num_negatives = {**data.num_negatives, **(training_args.dataset_num_negatives or {})}
    training_args.prompts = training_prompts(model_args, datasets, tasks, instructions, training_args)
    sts_prompt = model_args.effective_sts_prompt
    eval_batch_size = training_args.per_device_eval_batch_size  # the same in the log and in the final table
    # Dev sets during training (eval_strategy) and model selection: checked before the model is loaded.
    evaluator = training_evaluator(data_args, training_args, sts_sets, ir_sets, sts_prompt)
    check_model_selection(training_args, has_evaluator=evaluator is not None)

    # Seeded before the model is built (as transformers' example scripts): new weights (LoRA adapters, a new pooling
    # head) start the same under any launcher; DeepSpeed's set-up draws random numbers that DDP's does not.
    set_seed(training_args.seed)
    model = load_model(model_args)
    before = None
    # Under torchrun / accelerate launch every rank runs this script: evaluate (and later save results) once.
    if (sts_sets or ir_sets) and data_args.evaluate_before and training_args.process_index == 0:
        logger.info("Evaluating before training")
        before = evaluate_model(
            model, sts_sets, ir_sets, sts_prompt=sts_prompt, batch_size=eval_batch_size, epoch=0, steps=0
        )
        # The card's Evaluation section is for the final model; the before scores stay in its training logs (step 0).
        model.model_card_data.eval_results_dict = {}
    trainer = CoDiEmbTrainer(model=model, args=training_args, train_dataset=datasets, evaluator=evaluator)
    delete_previous_checkpoints(training_args, resume_from)  # --overwrite_output_dir, once everything is checked
    trainer.train(resume_from_checkpoint=resume_from)
    trainer.save_model(str(output_dir))
    if not trainer.is_world_process_zero():
        return 0
    if sts_sets or ir_sets:
        logger.info("Evaluating after training")
        if model_args.lora_r > 0:
            saved = load_lora_model(output_dir, base=model_args.model_name_or_path)
        else:
            saved = SentenceTransformer(str(output_dir))
        after = evaluate_model(
            saved,
            sts_sets,
            ir_sets,
            sts_prompt=sts_prompt,
            batch_size=eval_batch_size,
            epoch=trainer.state.epoch,
            steps=trainer.state.global_step,
        )
        write_results(after, output_dir)
        # The saved model's card shows these scores (the same as eval_results.json).
        record_final_evaluation(trainer.model.model_card_data, saved.model_card_data)
        trainer.write_model_card(output_dir)
        if before is not None:
            (output_dir / "eval_before.json").write_text(json.dumps(before, indent=2, default=float))
            table = format_before_after_table(before, after)
            (output_dir / "eval_before_after.md").write_text(table + "\n")
            sys.stdout.write(table + "\n")
        if training_args.matryoshka_dims:
            write_dimension_results(saved, training_args.matryoshka_dims, sts_sets, ir_sets, output_dir,
                                    sts_prompt=sts_prompt, batch_size=eval_batch_size)  # fmt: skip
    logger.info("Model saved to %s", output_dir)
    return 0
