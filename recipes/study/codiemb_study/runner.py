"""Run the study: every method of :mod:`codiemb_study.methods` from one recipe, same budget, several seeds.

Two budgets (issue 19, item 5): the same number of optimizer **updates** for every method (``max_steps``, the
equal-compute study), or the same number of **epochs** over each method's own data (``epochs``, the equal-data study,
as the paper trains: 5 epochs). In the equal-data study every run evaluates its dev sets at every epoch (IR corpora
capped at ``eval_max_corpus`` documents, the relevant ones always kept), keeps its dev-best checkpoint by the metric
that fits the method (:func:`selection_metric`) through ``load_best_model_at_end``, and that checkpoint is evaluated on
the whole dev sets for the tables; the run record keeps every dev evaluation of the log and the checkpoint chosen.

Each finished run writes one JSON file ``<results_dir>/<encoder>/runs/<method>-seed<seed>.json`` (metrics on the
recipe's dev sets, training time, optimizer updates per task, the command); a run whose file exists is skipped, so
an interrupted study resumes where it stopped. Training folders go to ``work_dir`` and are deleted after evaluation
(the study keeps numbers, not models), except the final models of the (h) inputs, kept until (h) is stored, and, with
``keep_models``, each run's evaluated model in ``work_dir/<encoder>/models/<method>-seed<seed>``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from codiemb_study.methods import FUSION_ROWS, METHODS, RATIO_FUSION_INPUTS, RATIO_FUSION_ROWS, MethodSetup
from hf_codiemb.atomic import write_text_atomically

logger = logging.getLogger(__name__)

BASE_ROW = "base"
#: The one-command trade-off set-up (`codiemb tradeoff`) as a row of the equal-data study (:meth:`Study.collect_tradeoff`).
TRADEOFF_ROW = "codiemb_tradeoff"


def tradeoff_label(ir_heavy_ratio: str = "ir:3,sts:1", sts_heavy_ratio: str | None = "ir:1,sts:3", passes: bool = False,
                   ir_heavy_runs: int = 1) -> str:  # fmt: skip
    """The row label of a ``codiemb tradeoff`` set-up whose runs had these ``task_ratio`` values (``passes``: they
    divided passes over each task's data, ``task_ratio_unit passes``); ``ir_heavy_runs`` IR-heavy runs with their own
    seeds (``ir_heavy_seeds``), no STS-heavy run when ``sts_heavy_ratio`` is None."""

    from hf_codiemb.training_args import parse_task_ratio

    def short(ratio: str) -> str:
        weights = parse_task_ratio(ratio)
        return ":".join(f"{weights.get(task, 0.0):g}" for task in ("ir", "sts"))

    unit = " (passes over each task's data)" if passes else ""
    ir = f"IR-heavy {short(ir_heavy_ratio)}" if ir_heavy_runs == 1 else f"{ir_heavy_runs} IR-heavy {short(ir_heavy_ratio)}"
    seeds = " (one seed each)" if ir_heavy_runs > 1 else ""
    sts = f" + STS-heavy {short(sts_heavy_ratio)}" if sts_heavy_ratio is not None else ""
    return f"(t) `codiemb tradeoff`: {ir}{seeds}{sts} runs{unit}, dev-guided fusion"


def tradeoff_run_method(run_name: str) -> str:
    """The study method a ``codiemb tradeoff`` run trains (its data and losses): ``ir-heavy``, ``ir-heavy-seed<N>``
    (:data:`TRADEOFF_RATIO_METHODS`) and ``sts-heavy``; the run's own ``task_ratio`` is read from its command line."""
    from hf_codiemb.tradeoff import IR_HEAVY, is_ir_heavy_run

    base = IR_HEAVY if is_ir_heavy_run(run_name) else run_name
    if base not in TRADEOFF_RATIO_METHODS:
        raise ValueError(f"Unknown codiemb tradeoff run {run_name!r}: expected {', '.join(TRADEOFF_RATIO_METHODS)} "
                         "or ir-heavy-seed<N>")  # fmt: skip
    return TRADEOFF_RATIO_METHODS[base]


def tradeoff_row_key(variant: str | None = None) -> str:
    """The study row of a ``codiemb tradeoff`` set-up: :data:`TRADEOFF_ROW`, or ``codiemb_tradeoff_<variant>`` for one
    trained with other settings (the study's overrides after ``--``, e.g. other STS loss weights)."""
    if variant is None:
        return TRADEOFF_ROW
    if not variant or not all(c.isalnum() or c in "-_" for c in variant):
        raise ValueError(f"A trade-off variant name is letters, digits, '-' and '_', got {variant!r}")
    return f"{TRADEOFF_ROW}_{variant}"


def is_tradeoff_row(key: str) -> bool:
    """Whether a study row is a ``codiemb tradeoff`` set-up (the default one or a variant)."""
    return key == TRADEOFF_ROW or key.startswith(f"{TRADEOFF_ROW}_")


def overrides_missing_from(run_argv: Sequence[str], overrides: Sequence[str]) -> list[str]:
    """The study's ``--flag VALUE`` overrides that a training run's command line does not give the same value (the
    last one given, as argparse reads it), and its value-less ``--flag`` overrides (a switch) that the command line
    does not give at all; a run collected into a study must have been trained with them."""
    from hf_codiemb.command_parser import flag_value, given_on_command_line

    missing = []
    for index, arg in enumerate(overrides):
        if not arg.startswith("--"):
            continue
        name, sep, value = arg[2:].partition("=")
        if not sep:
            following = overrides[index + 1] if index + 1 < len(overrides) else None
            value = following if following is not None and not following.startswith("--") else None
        if value is None:
            if not given_on_command_line(name, list(run_argv)):
                missing.append(f"--{name}")
        elif flag_value(run_argv, name) != value:
            missing.append(f"--{name} {value}")
    return missing


#: What the run records keep of every dev evaluation of a training log.
LOGGED_KEYS = ("epoch", "step", "eval_codiemb_sts_score", "eval_codiemb_ir_score", "eval_codiemb_score")
TRADEOFF_RATIO_METHODS = {"ir-heavy": "ratio_ir3_sts1", "sts-heavy": "ratio_ir1_sts3"}
NUM_CHECKPOINTS = 3
#: Cap on each IR dev corpus during training in the equal-data study (the final scores use the whole corpus).
DEFAULT_EVAL_MAX_CORPUS = 1000


def selection_metric(key: str, setup: MethodSetup) -> str:
    """The dev score a run's best checkpoint is chosen by (equal-data study): the one task it trains, or both.

    IR only: ``codiemb_ir_score``; STS only (any STS loss): ``codiemb_sts_score``; methods trained on both tasks' data
    (CoDiEmb, the ratio runs, and the pooled methods (c) and (d), whatever loss their mixed batches get):
    ``codiemb_score``.
    """
    from hf_codiemb.training_evaluation import IR_SCORE_KEY, SCORE_KEY, STS_SCORE_KEY

    if METHODS[key].pooled:
        return SCORE_KEY
    tasks = set(setup.tasks.values())
    if tasks == {"ir"}:
        return IR_SCORE_KEY
    if tasks == {"sts"}:
        return STS_SCORE_KEY
    return SCORE_KEY


def device_description() -> str:
    """Where this process trains and evaluates, for the run records: ``"cuda: <GPU name> (torch <version>)"`` or
    ``"cpu: <n> threads (torch <version>)"`` (runs recorded before this field existed ran on the project's CPU machine).
    """
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    return f"cpu: {torch.get_num_threads()} threads (torch {torch.__version__})"


def encoder_name(recipe: str | os.PathLike[str]) -> str:
    """The encoder label of a recipe: its folder name (``recipes/small/minilm-l6/config.yaml`` -> ``minilm-l6``)."""
    return Path(recipe).resolve().parent.name


def run_file(results_dir: Path, encoder: str, key: str, seed: int | None) -> Path:
    """Where the result of one run is stored."""
    name = key if seed is None else f"{key}-seed{seed}"
    return results_dir / encoder / "runs" / f"{name}.json"


def write_json_atomically(path: Path, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` as JSON through a temporary sibling, so a killed run leaves no half-written result."""
    write_text_atomically(path, json.dumps(payload, indent=2, default=float) + "\n")


def planned_updates(setup: MethodSetup, args, epochs: int | None = None) -> dict[str, int]:
    """Optimizer updates per task in the first ``args.max_steps`` steps (or in ``epochs`` whole epochs), read off the
    sampler's schedule."""
    from hf_codiemb.sampler import TaskBalancedBatchSampler

    sampler = TaskBalancedBatchSampler.from_args(setup.datasets, setup.tasks, args)
    tasks = [spec.task for spec in sampler.specs]
    counts = dict.fromkeys(sorted(set(tasks)), 0)
    if epochs is not None:
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            for dataset_idx in sampler.schedule():
                counts[tasks[dataset_idx]] += 1
        return counts
    steps, epoch = 0, 0
    while steps < args.max_steps:  # the Trainer starts a new epoch (a new shuffle) when one runs out
        sampler.set_epoch(epoch)
        for dataset_idx in sampler.schedule()[: args.max_steps - steps]:
            counts[tasks[dataset_idx]] += 1  # a block is one optimizer update on every rank
            steps += 1
        epoch += 1
    return counts


def selection_record(state, metric: str) -> dict[str, Any]:
    """What the equal-data run chose, from the Trainer's state after ``load_best_model_at_end``: the metric, every dev
    evaluation of the log (epoch, step and the three combined scores, IR on the capped corpus), the checkpoint loaded
    (its step) and the epochs and updates trained."""
    from hf_codiemb.training_evaluation import IR_SCORE_KEY, SCORE_KEY, STS_SCORE_KEY

    keys = [f"eval_{name}" for name in (STS_SCORE_KEY, IR_SCORE_KEY, SCORE_KEY)]
    evaluations = [
        {"epoch": entry.get("epoch"), "step": entry["step"], **{k: entry[k] for k in keys if k in entry}}
        for entry in state.log_history
        if f"eval_{metric}" in entry
    ]
    best = state.best_model_checkpoint
    return {
        "selection_metric": metric,
        "dev_evaluations": evaluations,
        "best_checkpoint_step": int(Path(best).name.split("-")[1]) if best else None,
        "best_metric": state.best_metric,
        "epochs_trained": state.epoch,
        "steps_trained": state.global_step,
    }


class Study:
    """One encoder's study: its recipe, data and evaluation sets, loaded once and shared by every run.

    Args:
        recipe: the YAML recipe every method starts from (model, data, optimisation).
        overrides: extra ``codiemb train`` flags applied to every run (e.g. ``["--max_seq_length", "64"]``).
        max_steps: optimizer updates of every run (the same for every method): the equal-updates study.
        results_dir: where the per-run JSON files go (``<results_dir>/<encoder>/runs``).
        work_dir: scratch space for training folders and fused models.
        epochs: instead of ``max_steps``, epochs over each method's own data (the equal-data study): dev evaluation
            at every epoch, the dev-best checkpoint kept (:func:`selection_metric`).
        eval_max_corpus: equal-data study: cap on each IR dev corpus during training (the final scores use the
            whole corpus); ``None`` = the whole corpus.
    """

    def __init__(
        self,
        recipe: str,
        overrides: Sequence[str],
        max_steps: int | None,
        results_dir: str | os.PathLike[str],
        work_dir: str | os.PathLike[str],
        *,
        epochs: int | None = None,
        eval_max_corpus: int | None = DEFAULT_EVAL_MAX_CORPUS,
        keep_models: bool = False,
    ) -> None:
        from hf_codiemb.pipeline import load_eval_sets, load_training_data
        from hf_codiemb.recipe import parse_recipe

        if (max_steps is None) == (epochs is None):
            raise ValueError("give exactly one budget: max_steps (equal updates) or epochs (equal data)")
        if epochs is not None and epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        if max_steps is not None and max_steps < NUM_CHECKPOINTS:
            raise ValueError(
                f"max_steps must be >= {NUM_CHECKPOINTS} (CoDiEmb saves a checkpoint every max_steps // {NUM_CHECKPOINTS} updates)"
            )
        self.recipe = recipe
        self.overrides = list(overrides)
        self.max_steps = max_steps
        self.epochs = epochs
        self.eval_max_corpus = eval_max_corpus if epochs is not None else None
        #: Keep each trained run's evaluated model (the dev-best checkpoint in the equal-data study) in
        #: :meth:`kept_model_dir`, e.g. to fuse two seeds of a method later; by default only numbers are kept.
        self.keep_models = keep_models
        self.encoder = encoder_name(recipe)
        self.results_dir = Path(results_dir)
        self.work_dir = Path(work_dir) / self.encoder
        self.model_args, self.data_args, base_args, _ = parse_recipe(["--config", recipe, *self.overrides])
        self.datasets, self.tasks, self.instructions = load_training_data(self.data_args, base_args.num_negatives)
        self.sts_sets, self.ir_sets = load_eval_sets(self.data_args, self.model_args)
        if not (self.sts_sets or self.ir_sets):
            raise ValueError(f"Recipe {recipe} has no evaluation data (sts_eval / ir_eval): the study needs dev sets")
        self.sts_prompt = self.model_args.effective_sts_prompt
        #: The IR evaluation sets read from BEIR folders (``ir_eval_beir``): the study's IR metric when present.
        #: (``load_eval_sets`` adds them last, one per ``ir_eval_beir`` entry, in order.)
        num_beir = len(self.data_args.ir_eval_beir or [])
        self.beir_ir_sets = list(self.ir_sets)[len(self.ir_sets) - num_beir :] if num_beir else []
        self.command = " ".join(["python", "recipes/study/run_study.py", *sys.argv[1:]]) if sys.argv else ""

    # ------------------------------------------------------------------------------------------------ helpers
    @property
    def budget(self) -> dict[str, int | None]:
        """The study's budget as recorded in every run: ``max_steps`` or ``epochs`` (the other one None)."""
        return {"max_steps": self.max_steps, "epochs": self.epochs}

    def training_args(self, key: str, seed: int, metric: str | None = None, extra_flags: Sequence[str] = (),
                      task_ratio: str | None = None):  # fmt: skip
        """The training arguments of one run: the recipe + overrides (+ ``extra_flags``) + the study's budget and the
        method's ratio (``task_ratio``: another one, e.g. a trade-off run's own).

        Equal-data study: ``epochs`` epochs, dev evaluation and a checkpoint (model only) at every epoch, the best by
        ``metric`` loaded at the end (``save_total_limit 1`` keeps the best and the latest).
        """
        from hf_codiemb.recipe import parse_recipe

        run_dir = self.work_dir / f"{key}-seed{seed}"
        flags = ["--config", self.recipe, *self.overrides, *extra_flags, "--seed", str(seed), "--output_dir", str(run_dir),
                 "--report_to", "none", "--disable_tqdm", "true"]  # fmt: skip
        if self.epochs is not None:
            flags += [
                "--num_train_epochs", str(self.epochs), "--max_steps", "-1", "--logging_steps", "10",
                "--eval_strategy", "epoch", "--save_strategy", "epoch", "--save_only_model", "true",
                "--save_total_limit", "1", "--load_best_model_at_end", "true",
                "--metric_for_best_model", metric or "codiemb_score", "--greater_is_better", "true",
            ]  # fmt: skip
            ratio = task_ratio or METHODS[key].task_ratio
            if ratio:
                flags += ["--task_ratio", ratio]
            _, _, args, _ = parse_recipe(flags)
            return args
        flags += ["--max_steps", str(self.max_steps), "--logging_steps", str(max(self.max_steps // 10, 1))]
        if key == "codiemb":  # its checkpoints are the inputs of (f)
            flags += ["--save_strategy", "steps", "--save_steps", str(self.max_steps // NUM_CHECKPOINTS),
                      "--save_only_model", "true"]  # fmt: skip
        else:
            flags += ["--save_strategy", "no"]
        if METHODS[key].task_ratio:
            flags += ["--task_ratio", METHODS[key].task_ratio]
        _, _, args, _ = parse_recipe(flags)
        return args

    def evaluate(self, model) -> dict[str, float]:
        from hf_codiemb.evaluation import evaluate_model, flatten_results

        results = evaluate_model(model, self.sts_sets, self.ir_sets, sts_prompt=self.sts_prompt)
        return flatten_results(results)

    def training_evaluator(self, args):
        """Equal-data study: the recipe's dev sets as the evaluator during training (what ``codiemb train`` builds for
        ``eval_strategy``), IR corpora capped at ``eval_max_corpus`` documents, the corpus sample seeded by the run."""
        from hf_codiemb.training_evaluation import build_training_evaluator

        return build_training_evaluator(
            self.sts_sets,
            self.ir_sets,
            ir_weight=self.data_args.eval_ir_weight,
            max_corpus=self.eval_max_corpus,
            sts_prompt=self.sts_prompt,
            batch_size=args.per_device_eval_batch_size,
            seed=args.seed,
        )

    def record(self, key: str, label: str, seed: int | None, **fields: Any) -> dict[str, Any]:
        return {
            "encoder": self.encoder,
            "method": key,
            "label": label,
            "seed": seed,
            **self.budget,
            "recipe": self.recipe,
            "overrides": self.overrides,
            "command": self.command,
            "beir_ir_sets": self.beir_ir_sets,
            "device": device_description(),
            **fields,
        }

    # ---------------------------------------------------------------------------------------------------- runs
    def run_base(self) -> dict[str, Any]:
        """Evaluate the untrained encoder once (the row every method starts from)."""
        from hf_codiemb.models import load_model

        path = run_file(self.results_dir, self.encoder, BASE_ROW, None)
        if path.exists():
            return json.loads(path.read_text())
        result = self.record(
            BASE_ROW, "base encoder (no training)", None, metrics=self.evaluate(load_model(self.model_args))
        )
        write_json_atomically(path, result)
        return result

    def run_method(self, key: str, seed: int) -> dict[str, Any]:
        """Train one method for ``max_steps`` updates with ``seed`` and evaluate it (skipped if already stored)."""
        from hf_codiemb.models import load_model
        from hf_codiemb.pipeline import training_prompts
        from hf_codiemb.trainer import CoDiEmbTrainer

        path = run_file(self.results_dir, self.encoder, key, seed)
        if path.exists() and (key != "codiemb" or self._fusion_done(seed)) and self._ratio_input_ready(key, seed):
            stored = json.loads(path.read_text())
            self._check_budget(path, stored)
            logger.info("%s seed %d: stored in %s, skipped", key, seed, path)
            return stored
        method = METHODS[key]
        args = self.training_args(key, seed)
        setup = method.build(self.datasets, self.tasks, args, self.score_range)
        metric = selection_metric(key, setup) if self.epochs is not None else None
        if metric is not None:
            args = self.training_args(key, seed, metric)
        args.dataset_tasks = dict(setup.tasks)
        args.prompts = training_prompts(self.model_args, setup.datasets, setup.tasks, self.instructions, args)
        updates = planned_updates(setup, args, self.epochs)
        budget = f"{self.epochs} epochs" if self.epochs is not None else f"{self.max_steps} updates"
        logger.info("%s / %s seed %d: %s, updates %s", self.encoder, key, seed, budget, updates)
        model = load_model(self.model_args)
        evaluator = self.training_evaluator(args) if self.epochs is not None else None
        trainer = CoDiEmbTrainer(
            model=model, args=args, train_dataset=setup.datasets, loss=setup.loss, evaluator=evaluator
        )
        started = time.perf_counter()
        train_output = trainer.train()
        train_seconds = time.perf_counter() - started
        extra: dict[str, Any] = {}
        if self.epochs is not None:
            extra = selection_record(trainer.state, metric)
            extra["eval_max_corpus"] = self.eval_max_corpus
            # The Trainer's own log (every dev evaluation, the best checkpoint), kept beside the run records.
            state_file = self.results_dir / self.encoder / "logs" / f"{key}-seed{seed}.trainer_state.json"
            state_file.parent.mkdir(parents=True, exist_ok=True)
            trainer.state.save_to_json(str(state_file))
        metrics = self.evaluate(trainer.model)  # the dev-best checkpoint in the equal-data study
        result = self.record(
            key,
            method.label,
            seed,
            train_runtime_s=round(train_seconds, 2),
            train_loss=train_output.training_loss,
            updates=updates,
            training_examples={name: len(d) for name, d in setup.datasets.items()},
            metrics=metrics,
            **extra,
        )
        write_json_atomically(path, result)
        if key == "codiemb" and self.epochs is None:  # (f) fuses the equal-updates run's checkpoints
            self.run_fusion(seed, Path(args.output_dir))
        if key in RATIO_FUSION_INPUTS:  # (h) fuses the final models of these runs: kept until it is stored
            trainer.model.save(str(self.final_model_dir(key, seed)))
        if self.keep_models:
            trainer.model.save(str(self.kept_model_dir(key, seed)))
        shutil.rmtree(args.output_dir, ignore_errors=True)
        return result

    def _check_budget(self, path: Path, stored: Mapping[str, Any]) -> None:
        """A stored run of another budget (updates or epochs) is never mixed in silently."""
        if stored.get("max_steps") != self.max_steps or stored.get("epochs") != self.epochs:
            had = f"{stored['epochs']} epochs" if stored.get("epochs") else f"{stored.get('max_steps')} updates"
            asks = f"{self.epochs} epochs" if self.epochs is not None else f"{self.max_steps} updates"
            raise ValueError(
                f"{path} was trained for {had}, this study asks for {asks}: use another --results-dir, or remove "
                "the stored runs to redo them"
            )

    def kept_model_dir(self, key: str, seed: int) -> Path:
        """Where a run's evaluated model is kept with ``keep_models`` (the one its stored scores are of)."""
        return self.work_dir / "models" / f"{key}-seed{seed}"

    def final_model_dir(self, key: str, seed: int) -> Path:
        """Where the final model of an (h) input run waits for the fusion."""
        return self.work_dir / f"{key}-seed{seed}-final"

    def _ratio_fusion_done(self, seed: int) -> bool:
        return all(run_file(self.results_dir, self.encoder, key, seed).exists() for key in RATIO_FUSION_ROWS)

    def _ratio_input_ready(self, key: str, seed: int) -> bool:
        """Whether a stored run needs no retraining for (h): not an (h) input, (h) stored, or its model kept."""
        if key not in RATIO_FUSION_INPUTS or self._ratio_fusion_done(seed):
            return True
        return (self.final_model_dir(key, seed) / "config_sentence_transformers.json").is_file()

    @property
    def score_range(self) -> tuple[float, float]:
        low, high = self.data_args.sts_score_range
        return float(low), float(high)

    def _fusion_done(self, seed: int) -> bool:
        if self.epochs is not None:  # (f) is a row of the equal-updates study only
            return True
        return all(run_file(self.results_dir, self.encoder, key, seed).exists() for key in FUSION_ROWS)

    def run_fusion(self, seed: int, run_dir: Path) -> None:
        """(f): fuse the CoDiEmb run's checkpoints by delta-guided fusion, and by a uniform soup as the control."""
        from sentence_transformers import SentenceTransformer

        from hf_codiemb.fusion import delta_fuse, fuse
        from hf_codiemb.model_names import resolve_model_path

        checkpoints = sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        if len(checkpoints) < 2:
            raise RuntimeError(f"{run_dir} has {len(checkpoints)} checkpoints; fusion needs at least 2")
        base = resolve_model_path(self.model_args.model_name_or_path)
        inputs = [str(c) for c in checkpoints]
        for key, label in FUSION_ROWS.items():
            out = self.work_dir / f"{key}-seed{seed}"
            started = time.perf_counter()
            if key == "codiemb_delta_fusion":
                delta_fuse(base, inputs, out, p=1.0, granularity="element", overwrite=True, show_progress=False)
            else:
                fuse(inputs, out, base=base, method="uniform", overwrite=True, show_progress=False)
            fuse_seconds = time.perf_counter() - started
            metrics = self.evaluate(SentenceTransformer(str(out)))
            result = self.record(
                key, label, seed, fused_checkpoints=[c.name for c in checkpoints],
                fusion_runtime_s=round(fuse_seconds, 2), metrics=metrics,
            )  # fmt: skip
            write_json_atomically(run_file(self.results_dir, self.encoder, key, seed), result)
            shutil.rmtree(out, ignore_errors=True)

    def run_ratio_fusion(self, seed: int) -> list[dict[str, Any]]:
        """(h): fuse the final models of the IR-heavy and STS-heavy ratio runs of ``seed`` (base = the encoder) by
        delta-guided fusion and by a uniform soup; each is evaluated like a trained run (skipped if stored)."""
        from sentence_transformers import SentenceTransformer

        from hf_codiemb.fusion import delta_fuse, fuse
        from hf_codiemb.model_names import resolve_model_path

        if self._ratio_fusion_done(seed):
            return [json.loads(run_file(self.results_dir, self.encoder, k, seed).read_text()) for k in RATIO_FUSION_ROWS]
        inputs = [self.final_model_dir(key, seed) for key in RATIO_FUSION_INPUTS]
        missing = [str(path) for path in inputs if not path.is_dir()]
        if missing:
            raise RuntimeError(f"(h) seed {seed} needs the final models {missing}: run {list(RATIO_FUSION_INPUTS)} first")
        base = resolve_model_path(self.model_args.model_name_or_path)
        results = []
        for key, label in RATIO_FUSION_ROWS.items():
            out = self.work_dir / f"{key}-seed{seed}"
            started = time.perf_counter()
            if key == "ratio_delta_fusion":
                delta_fuse(base, [str(p) for p in inputs], out, p=1.0, granularity="element", overwrite=True,
                           show_progress=False)  # fmt: skip
            else:
                fuse([str(p) for p in inputs], out, base=base, method="uniform", overwrite=True, show_progress=False)
            fuse_seconds = time.perf_counter() - started
            metrics = self.evaluate(SentenceTransformer(str(out)))
            result = self.record(
                key, label, seed, fused_runs=[f"{k}-seed{seed}" for k in RATIO_FUSION_INPUTS],
                fusion_runtime_s=round(fuse_seconds, 2), metrics=metrics,
            )  # fmt: skip
            write_json_atomically(run_file(self.results_dir, self.encoder, key, seed), result)
            shutil.rmtree(out, ignore_errors=True)
            results.append(result)
        for path in inputs:
            shutil.rmtree(path, ignore_errors=True)
        return results

    def collect_tradeoff(self, output_dir: str | os.PathLike[str], seed: int, command: str,
                         wall_seconds: float | None = None, reevaluate: bool = False, variant: str | None = None,
                         variant_label: str | None = None) -> dict[str, Any]:  # fmt: skip
        """Store a finished ``codiemb tradeoff`` set-up (run with this study's budget and ``seed``) as a row: its fused
        model evaluated on the whole dev sets by the study's own evaluation, the checkpoints its runs chose, their
        epochs and updates (each run's, summed), and their training time (the sum of the runs' process times,
        which include their dev evaluations; ``wall_seconds``: the whole command's wall time if measured).

        The scores are those the fusion search measured for the chosen model on the whole dev sets (one STS and one
        IR dev set, as the SciFact + STS-B recipe: the same evaluation code and sets as the study's), or, with
        ``reevaluate`` (or other dev sets), the study's own evaluation of the fused model (geometry included).

        ``variant``: store it as the row ``codiemb_tradeoff_<variant>`` (:func:`tradeoff_row_key`), labelled with
        ``variant_label``, beside the default set-up's row; its runs must have been trained with the study's overrides
        (the flags after ``--``, checked against each run's recorded command line)."""
        from sentence_transformers import SentenceTransformer

        from hf_codiemb.command_parser import flag_value
        from hf_codiemb.fusion.selection import TRAINER_STATE
        from hf_codiemb.tradeoff import finished_run_names, is_ir_heavy_run

        output = Path(output_dir)
        row = tradeoff_row_key(variant)
        path = run_file(self.results_dir, self.encoder, row, seed)
        runs: dict[str, Any] = {}
        updates: dict[str, int] = {}
        units = set()
        names = finished_run_names(output / "runs")
        if "ir-heavy" not in names:
            raise ValueError(f"{output / 'runs'}: no finished ir-heavy run (ir-heavy.done.json) to collect")
        for name in names:
            key = tradeoff_run_method(name)
            done = json.loads((output / "runs" / f"{name}.done.json").read_text())
            missing = overrides_missing_from(done["argv"], self.overrides)
            if missing:
                raise ValueError(
                    f"{output / 'runs' / name}: trained without the study's override(s) {', '.join(missing)}: collect "
                    "it with the flags its runs were trained with (after --)"
                )
            folder = output / "runs" / name
            last = max(folder.glob("checkpoint-*"), key=lambda c: int(c.name.split("-")[1]))
            state = json.loads((last / TRAINER_STATE).read_text())
            # The run's own command line says what its task_ratio divided (the recipe's value otherwise).
            unit = flag_value(done["argv"], "task_ratio_unit")
            ratio = flag_value(done["argv"], "task_ratio") or METHODS[key].task_ratio  # e.g. --ir_heavy_ratio ir:1,sts:1
            args = self.training_args(
                key, seed, extra_flags=["--task_ratio_unit", unit] if unit is not None else [], task_ratio=ratio
            )
            units.add(args.task_ratio_unit)
            setup = METHODS[key].build(self.datasets, self.tasks, args, self.score_range)
            planned = planned_updates(setup, args, self.epochs)
            if state.get("global_step") != sum(planned.values()):
                raise ValueError(
                    f"{last}: the run made {state.get('global_step')} updates, this study's settings plan "
                    f"{sum(planned.values())} ({planned}) for {self.epochs} epochs: collect it with the run's flags"
                )
            for task, count in planned.items():
                updates[task] = updates.get(task, 0) + count
            runs[name] = {
                "task_ratio": ratio,
                "seconds": done["seconds"],
                "epochs_trained": state.get("epoch"),
                "steps_trained": state.get("global_step"),
                "updates": planned,
                "dev_evaluations": [
                    {k: entry[k] for k in LOGGED_KEYS if k in entry}
                    for entry in state["log_history"]
                    if "eval_codiemb_score" in entry
                ],
            }
        search = json.loads((output / "model" / "fusion_search.json").read_text())
        chosen = next(c for c in search["candidates"] if c["label"] == search["chosen"])
        if reevaluate or len(self.sts_sets) != 1 or len(self.ir_sets) != 1:
            metrics = self.evaluate(SentenceTransformer(str(output / "model")))
            source = "the study's evaluation of OUTPUT/model (whole dev sets)"
        else:  # the search evaluated the chosen model on the same whole dev sets: its scores, not a second pass
            (sts_name,), (ir_name,) = list(self.sts_sets), list(self.ir_sets)
            metrics = {f"sts/{sts_name}/spearman_cosine": chosen["sts_score"], f"ir/{ir_name}/ndcg@10": chosen["ir_score"]}
            source = "OUTPUT/model/fusion_search.json, the chosen candidate (whole dev sets)"
        label = tradeoff_label(
            runs["ir-heavy"]["task_ratio"],
            runs["sts-heavy"]["task_ratio"] if "sts-heavy" in runs else None,
            units == {"passes"},
            ir_heavy_runs=sum(map(is_ir_heavy_run, runs)),
        )
        if variant is not None:
            label = f"{label}; {variant_label or variant}"
        result = self.record(
            row,
            label,
            seed,
            train_runtime_s=round(sum(run["seconds"] for run in runs.values()), 2),
            tradeoff_wall_s=None if wall_seconds is None else round(wall_seconds, 1),
            updates=updates,
            tradeoff_runs=runs,
            chosen_fusion=search.get("chosen"),
            metrics_source=source,
            selections=search.get("selections"),
            epochs_trained=min(run["epochs_trained"] or 0 for run in runs.values()),
            metrics=metrics,
        )
        result["command"] = command
        write_json_atomically(path, result)
        return result

    def run(self, methods: Sequence[str], seeds: Sequence[int]) -> list[dict[str, Any]]:
        """Every method x seed (seed-major, so a partial study has whole seeds), after the base evaluation."""
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ValueError(f"Unknown method(s) {unknown}; known: {list(METHODS)}")
        results = [self.run_base()]
        for seed in seeds:
            for key in methods:
                results.append(self.run_method(key, seed))
            if all(key in methods for key in RATIO_FUSION_INPUTS):  # (h) once both of its inputs are trained
                results.extend(self.run_ratio_fusion(seed))
        return results
