"""The trade-off set-up in one call: an IR-heavy and an STS-heavy run of a recipe, then their dev-guided fusion.

:func:`run_tradeoff` trains the recipe twice with two IR:STS ratios of optimizer updates (``task_ratio``; by default
3:1 and 1:3, the pair whose fusion came closest to both specialists in the SciFact + STS-B study,
``recipes/study/results-scifact/summary.md``), each run evaluating its dev sets during training and keeping a
checkpoint at every evaluation; then it picks the IR-heavy run's best-IR checkpoint and the STS-heavy run's best-STS
checkpoint from their logs (:mod:`hf_codiemb.fusion.selection`) and searches the delta fusion's ``p`` and input shares
on the dev sets (:func:`hf_codiemb.fusion.search.fusion_search`), writing the best candidate by ``ir_weight``.

Further IR-heavy runs with their own seeds (``ir_heavy_seeds``, ours) join the fusion with their best-IR checkpoints,
and ``sts_heavy_ratio: none`` drops the STS-heavy run: the delta fusion of differently seeded runs of one recipe is
one of the inputs METHOD.md section 6 names (``recipes/small/paraphrase-minilm-l3/tradeoff-seeds.yaml`` measures it).
With more than two inputs the search keeps equal shares and searches ``p`` only.

The runs are ``codiemb train`` processes (``--parallel`` of them at a time, each on its own GPU where there are
enough), so a run is exactly what ``codiemb train`` would do with the same flags. The set-up is resumable: a finished
run (its completion record in ``OUTPUT/runs``) is not trained again, an interrupted one resumes from its latest
complete checkpoint, and a finished fusion is kept. This set-up is ours: the paper trains one model and fuses
checkpoints of runs chosen by hand.

Layout of ``OUTPUT``::

    runs/ir-heavy/  runs/sts-heavy/     the training runs (checkpoint-N folders with their dev scores);
    runs/ir-heavy-seed<N>/              further IR-heavy runs (``ir_heavy_seeds``)
    runs/*.done.json                    completion records (recipe checksum, ratio, flags, exit status)
    logs/*.log                          each run's output
    model/                              the fused model: README.md (card), fusion_search.md/.json, fusion_front.png
    tradeoff.md                         the runs, the chosen checkpoints and the chosen fusion, with the command
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_codiemb.atomic import write_text_atomically
from hf_codiemb.errors import CoDiEmbUserError, RecipeError

logger = logging.getLogger(__name__)

__all__ = ["TradeoffArguments", "TradeoffRunError", "TrainingRun", "finished_run_names", "is_ir_heavy_run", "run_tradeoff"]

IR_HEAVY = "ir-heavy"
STS_HEAVY = "sts-heavy"
#: ``sts_heavy_ratio`` value (any case) that drops the STS-heavy run.
NO_RUN = "none"
DONE_SUFFIX = ".done.json"


def _seeded_run_name(seed: int) -> str:
    """The folder name of the IR-heavy run with its own ``seed`` (``ir_heavy_seeds``)."""
    return f"{IR_HEAVY}-seed{seed}"


def is_ir_heavy_run(name: str) -> bool:
    """Whether a run of the set-up (its folder name) is an IR-heavy one: ``ir-heavy`` or ``ir-heavy-seed<N>``."""
    return name == IR_HEAVY or name.startswith(_seeded_run_name(""))


def finished_run_names(folder: str | Path) -> list[str]:
    """The set-up's finished runs, by their completion records (``NAME.done.json``) in ``folder`` (a set-up's
    ``runs/``, or a folder its records were copied to), in the order :func:`plan_runs` makes them: ``ir-heavy``, the
    seeded IR-heavy runs (by name), ``sts-heavy``."""
    names = [path.name.removesuffix(DONE_SUFFIX) for path in Path(folder).glob(f"*{DONE_SUFFIX}")]
    return sorted(names, key=lambda name: (name == STS_HEAVY, name != IR_HEAVY, name))


class TradeoffRunError(CoDiEmbUserError, RuntimeError):
    """A training run of the trade-off set-up failed (its log names why)."""


@dataclass
class TradeoffArguments:
    """Options of ``codiemb tradeoff`` (the training recipe's own options go through ``--train_args``)."""

    recipe: str | None = field(
        default=None, metadata={"help": "The training recipe (YAML); it must evaluate dev sets (eval_strategy)."}
    )
    output_dir: str | None = field(
        default=None, metadata={"help": "Folder of the two runs, their logs, the fused model and tradeoff.md."}
    )
    ir_heavy_ratio: str = field(
        default="ir:3,sts:1", metadata={"help": "task_ratio of the IR-heavy run (its best-IR checkpoint is fused)."}
    )
    sts_heavy_ratio: str = field(
        default="ir:1,sts:3",
        metadata={
            "help": "task_ratio of the STS-heavy run (its best-STS checkpoint is fused); `none`: no STS-heavy run "
            "(then --ir_heavy_seeds names at least one more IR-heavy run)."
        },
    )
    ir_heavy_seeds: list[int] = field(
        default_factory=list,
        metadata={
            "help": "[ours] Seeds of further IR-heavy runs (runs/ir-heavy-seed<N>, the IR-heavy ratio and flags with "
            "--seed N); each one's best-IR checkpoint is fused too."
        },
    )
    train_args: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Extra `codiemb train` flags for every run (on the command line: everything after `--`, e.g. "
            "`-- --max_steps 200 --seed 43`)."
        },
    )
    search_p: list[float] = field(
        default_factory=lambda: [0.0, 1.0, 2.0], metadata={"help": "The p values of the fusion search."}
    )
    search_shares: list[float] = field(
        default_factory=lambda: [0.25, 0.5, 0.75],
        metadata={
            "help": "Shares s of the IR-heavy checkpoint in the fusion search (weights s, 1 - s); two runs only (with "
            "more, the shares stay equal)."
        },
    )
    ir_weight: float | None = field(
        default=None,
        metadata={"help": "w of the score w * IR + (1 - w) * STS the fused model is chosen by; unset = the recipe's "
                  "eval_ir_weight."},
    )  # fmt: skip
    parallel: int = field(
        default=1,
        metadata={
            "help": "Runs trained at the same time (1 up to the number of runs). With as many GPUs, each run gets its own "
            "(CUDA_VISIBLE_DEVICES); on CPU the runs share the cores."
        },
    )


@dataclass
class TrainingRun:
    """One training run of the set-up: its name, ratio, the selection criterion of its fused checkpoint, its folder
    and ``codiemb train`` command line."""

    name: str
    task_ratio: str
    select: str
    output_dir: Path
    log_file: Path
    record_file: Path
    argv: list[str]


def _train_argv(args: TradeoffArguments, training_args: Any, run_dir: Path, ratio: str) -> list[str]:
    """The ``codiemb train`` arguments of one run: the recipe, the user's flags, then the set-up's own."""
    save = ["--save_strategy", training_args.eval_strategy.value]
    if training_args.eval_strategy.value == "steps":
        save += ["--save_steps", str(training_args.eval_steps)]
    return [args.recipe, *args.train_args, "--output_dir", str(run_dir), "--task_ratio", ratio, *save]


def _check_recipe(args: TradeoffArguments):
    """Parse the recipe with the user's flags as ``codiemb train`` does; refuse what the set-up cannot work with."""
    from transformers.trainer_utils import IntervalStrategy

    from hf_codiemb.recipe import parse_recipe
    from hf_codiemb.training_args import parse_task_ratio

    model_args, data_args, training_args, _ = parse_recipe([args.recipe, *args.train_args])
    if training_args.eval_strategy == IntervalStrategy.NO:
        raise RecipeError(
            "the trade-off set-up picks checkpoints by their dev scores: set eval_strategy (steps or epoch; for "
            "steps also eval_steps) in the recipe or in --train_args",
            "eval_strategy",
        )
    if training_args.save_total_limit is not None:
        raise RecipeError(
            "the trade-off set-up keeps every evaluated checkpoint to choose from: unset save_total_limit",
            "save_total_limit",
        )
    if args.ir_weight is not None and not 0.0 <= args.ir_weight <= 1.0:
        raise RecipeError(f"must lie in [0, 1], got {args.ir_weight}", "ir_weight")
    for name in ("ir_heavy_ratio", "sts_heavy_ratio") if _has_sts_heavy_run(args) else ("ir_heavy_ratio",):
        try:
            parse_task_ratio(getattr(args, name))
        except (TypeError, ValueError) as exc:
            raise RecipeError(str(exc).removeprefix("task_ratio: "), name) from None
    seeds = [training_args.seed, *args.ir_heavy_seeds]
    if len(set(seeds)) != len(seeds):
        raise RecipeError(
            f"the IR-heavy runs need distinct seeds, got {args.ir_heavy_seeds} beside the recipe's seed "
            f"{training_args.seed}",
            "ir_heavy_seeds",
        )
    count = len(seeds) + _has_sts_heavy_run(args)
    if count < 2:
        raise RecipeError(
            "without the STS-heavy run the set-up has one run, nothing to fuse: name further IR-heavy runs with "
            "--ir_heavy_seeds",
            "sts_heavy_ratio",
        )
    parallel = args.parallel
    if isinstance(parallel, bool) or not isinstance(parallel, int) or not 1 <= parallel <= count:
        raise RecipeError(f"must be 1 to {count} (the number of runs), got {parallel!r}", "parallel")
    return model_args, data_args, training_args


def _has_sts_heavy_run(args: TradeoffArguments) -> bool:
    return args.sts_heavy_ratio is not None and args.sts_heavy_ratio.strip().lower() != NO_RUN


def _fingerprint(args: TradeoffArguments, run: TrainingRun) -> dict[str, Any]:
    """What a finished run was made from: the recipe file's checksum and the run's command line."""
    digest = hashlib.sha256(Path(args.recipe).read_bytes()).hexdigest()
    return {"recipe": str(Path(args.recipe).resolve()), "recipe_sha256": digest, "argv": run.argv[1:]}


def plan_runs(args: TradeoffArguments, training_args: Any) -> list[TrainingRun]:
    """The runs of the set-up, in ``OUTPUT/runs``: the IR-heavy run, one more per ``ir_heavy_seeds`` (its seed given
    after the user's flags, so it wins), and the STS-heavy run unless ``sts_heavy_ratio`` is ``none``."""
    output = Path(args.output_dir).absolute()
    specs = [(IR_HEAVY, args.ir_heavy_ratio, "best_ir", [])]
    for seed in args.ir_heavy_seeds:
        specs.append((_seeded_run_name(seed), args.ir_heavy_ratio, "best_ir", ["--seed", str(seed)]))
    if _has_sts_heavy_run(args):
        specs.append((STS_HEAVY, args.sts_heavy_ratio, "best_sts", []))
    runs = []
    for name, ratio, select, extra in specs:
        run_dir = output / "runs" / name
        argv = _train_argv(args, training_args, run_dir, ratio) + extra
        log, record = output / "logs" / f"{name}.log", output / "runs" / f"{name}{DONE_SUFFIX}"
        runs.append(TrainingRun(name, ratio, select, run_dir, log, record, argv))
    return runs


def _finished(args: TradeoffArguments, run: TrainingRun) -> bool:
    """Whether ``run`` finished before with the same recipe and flags (a different one is refused, not redone)."""
    if not run.record_file.is_file():
        return False
    record = json.loads(run.record_file.read_text(encoding="utf-8"))
    expected = _fingerprint(args, run)
    if {key: record.get(key) for key in expected} != expected:
        raise RecipeError(
            f"{run.output_dir} was trained from another recipe or other flags ({run.record_file}); use a new "
            "output_dir, or remove that run to train it again"
        )
    return True


def _command(run: TrainingRun, resume: bool) -> list[str]:
    argv = [sys.executable, "-m", "hf_codiemb.cli", "train", *run.argv]
    if resume:
        argv += ["--resume_from_checkpoint", "last"]
    return argv


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable CUDA: the runs go to the CPU
        return 0


def train_runs(args: TradeoffArguments, runs: Sequence[TrainingRun]) -> None:
    """Train the runs that have not finished, ``args.parallel`` at a time; each run's output goes to its log."""
    from hf_codiemb.checkpoints import latest_complete_checkpoint

    pending = [run for run in runs if not _finished(args, run)]
    for run in runs:
        if run not in pending:
            logger.info("Run %s (task_ratio %s) finished before: kept", run.name, run.task_ratio)
    gpus = _gpu_count()
    active: list[tuple[TrainingRun, subprocess.Popen, Any, float]] = []
    failures: list[str] = []
    slot = 0
    while pending or active:
        while pending and len(active) < args.parallel:
            run = pending.pop(0)
            resume = run.output_dir.is_dir() and latest_complete_checkpoint(run.output_dir) is not None
            env = dict(os.environ)
            if args.parallel > 1 and gpus >= args.parallel:
                env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
            slot += 1
            run.log_file.parent.mkdir(parents=True, exist_ok=True)
            log = run.log_file.open("a", encoding="utf-8")
            command = _command(run, resume)
            logger.info(
                "Run %s (task_ratio %s)%s: %s; log %s",
                run.name, run.task_ratio, " resumed from its latest checkpoint" if resume else "",
                " ".join(command[2:]), run.log_file,
            )  # fmt: skip
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            active.append((run, process, log, time.monotonic()))
        time.sleep(0.2)
        for entry in list(active):
            run, process, log, started = entry
            code = process.poll()
            if code is None:
                continue
            active.remove(entry)
            log.close()
            if code != 0:
                failures.append(f"{run.name} exited with status {code} (see {run.log_file})")
                continue
            record = {**_fingerprint(args, run), "exit_status": 0, "seconds": round(time.monotonic() - started, 1)}
            write_text_atomically(run.record_file, json.dumps(record, indent=2) + "\n")
            logger.info("Run %s finished in %.0f s", run.name, record["seconds"])
    if failures:
        raise TradeoffRunError(
            "training run(s) failed: " + "; ".join(failures) + ". Fix the cause and run the same command again: "
            "finished runs are kept and interrupted ones resume from their latest checkpoint"
        )


def _summary(runs: Sequence[TrainingRun], selections: list[Any], result: Any, command: str) -> str:
    lines = [
        f"# Trade-off set-up: {' + '.join(run.name for run in runs)} runs, dev-guided fusion",
        "",
        f"Command: `{command}`",
        "",
        (
            "Dev scores of the chosen checkpoints as logged during training (IR on the capped corpus when "
            "`eval_max_corpus` is set); the fusion's candidates on the whole dev sets are in `model/fusion_search.md`."
        ),
        "",
        "| run | task_ratio | chosen checkpoint | by | dev IR (logged) | dev STS (logged) |",
        "|---|---|---|---|---|---|",
    ]
    for run, selected in zip(runs, selections):
        item = selected.to_dict()
        lines.append(
            f"| {run.name} | {run.task_ratio} | step {item['step']} | {item['criterion']} | "
            f"{_fmt(item['scores'].get('eval_codiemb_ir_score'))} | {_fmt(item['scores'].get('eval_codiemb_sts_score'))} |"
        )
    chosen = result.chosen
    lines += [
        "",
        (
            f"Chosen fusion (ir_weight {result.ir_weight:g}): **{chosen.label}**: IR {chosen.ir_score:.4f}, "
            f"STS {chosen.sts_score:.4f}, score {chosen.score:.4f}; every candidate in `model/fusion_search.md`, the "
            "front in `model/fusion_front.png`."
        ),
    ]
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    return "" if value is None else f"{float(value):.4f}"


def run_tradeoff(args: TradeoffArguments, command: str = "codiemb tradeoff") -> Path:
    """Train the runs (or resume them), fuse their dev-best checkpoints with a searched fusion; return the model.

    Raises:
        RecipeError: a recipe the set-up cannot use (no dev evaluation, ``save_total_limit``), bad options.
        TradeoffRunError: a training run failed.
        SelectionError: a run logged no dev evaluation.
    """
    from hf_codiemb.fusion.search import fusion_search
    from hf_codiemb.fusion.selection import select_checkpoints
    from hf_codiemb.pipeline import load_eval_sets

    if not args.recipe:
        raise RecipeError("is required: the training recipe (YAML) of the runs", "recipe")
    if not args.output_dir:
        raise RecipeError("is required: the folder of the runs and the fused model", "output_dir")
    model_args, data_args, training_args = _check_recipe(args)
    runs = plan_runs(args, training_args)
    train_runs(args, runs)
    selected = select_checkpoints([run.output_dir for run in runs], [run.select for run in runs])
    model_dir = Path(args.output_dir).absolute() / "model"
    summary = Path(args.output_dir).absolute() / "tradeoff.md"
    if model_dir.is_dir() and summary.is_file():  # the fusion writes its folder atomically, then the summary
        logger.info("The fused model %s exists: kept (remove it to search again)", model_dir)
        return model_dir
    sts_sets, ir_sets = load_eval_sets(data_args, model_args)
    ir_weight = data_args.eval_ir_weight if args.ir_weight is None else args.ir_weight
    result = fusion_search(
        [str(item.path) for item in selected],
        model_dir,
        base=model_args.model_name_or_path,
        sts_sets=sts_sets,
        ir_sets=ir_sets,
        model_args=model_args,
        p_values=args.search_p,
        shares=args.search_shares,
        ir_weight=ir_weight,
        selections=[item.to_dict() for item in selected],
        overwrite=True,
        batch_size=training_args.per_device_eval_batch_size,
    )
    write_text_atomically(summary, _summary(runs, selected, result, command))
    logger.info("Fused model: %s (%s); summary %s", model_dir, result.chosen.label, summary)
    return model_dir
