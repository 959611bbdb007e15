"""Choose fusion inputs from a training run's recorded evaluations (``trainer_state.json``'s ``log_history``).

Each evaluation during ``codiemb train`` appends an entry with ``"step"`` and ``eval_``-prefixed metrics, among them
the combined scores ``eval_codiemb_ir_score`` (mean nDCG@10 over the IR dev sets), ``eval_codiemb_sts_score`` (mean
Spearman over the STS dev sets) and ``eval_codiemb_score`` (their weighted mean). A criterion picks the step with
the highest combined score among the checkpoints (``RUN/checkpoint-<step>/``) that still exist and are complete.

The log is read from every ``trainer_state.json`` of the run (the run folder's final one may be absent; each
checkpoint holds the log up to its step); an entry of a later file replaces the one of an earlier file at the same
step.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_codiemb.fusion.errors import SelectionError
from hf_codiemb.model_folder import (
    ADAPTER_SAFETENSORS_FILE,
    SAFETENSORS_INDEX_FILE,
    SAFETENSORS_WEIGHTS_FILE,
    shard_files,
)

logger = logging.getLogger(__name__)

#: The Trainer's log of a checkpoint (``transformers.trainer.TRAINER_STATE_NAME``; not imported, to keep this
#: module light).
TRAINER_STATE = "trainer_state.json"
# Criterion name -> the combined score of the log it maximises.
CRITERIA: dict[str, str] = {
    "best_ir": "eval_codiemb_ir_score",
    "best_sts": "eval_codiemb_sts_score",
    "best_score": "eval_codiemb_score",
}
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class SelectedCheckpoint:
    """A checkpoint picked by a criterion, and why.

    Attributes:
        run: the run folder.
        criterion: ``best_ir``, ``best_sts`` or ``best_score``.
        metric: the log key the criterion maximises (``eval_codiemb_ir_score``, ...).
        step: the training step of the chosen evaluation (and checkpoint).
        score: the value of ``metric`` at that step.
        path: the checkpoint folder.
        scores: every combined score recorded at that step (``{key: value}``).
    """

    run: Path
    criterion: str
    metric: str
    step: int
    score: float
    path: Path
    scores: dict[str, float]

    def describe(self) -> str:
        """One line for logs and the model card, naming the run by its folder name (never a local path)."""
        return (
            f"{self.path.name} of run {self.run.name}: {self.criterion} ({self.metric} = {self.score:.4f} "
            f"at step {self.step})"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able record (folder names only)."""
        return {
            "run": self.run.name,
            "checkpoint": self.path.name,
            "criterion": self.criterion,
            "metric": self.metric,
            "step": self.step,
            "score": self.score,
            "scores": dict(self.scores),
        }


def checkpoint_steps(run_dir: Path) -> dict[int, Path]:
    """``{step: folder}`` of the run's ``checkpoint-<step>`` folders, complete or not."""
    if not run_dir.is_dir():
        return {}
    found = {}
    for child in run_dir.iterdir():
        if (match := _CHECKPOINT.match(child.name)) and child.is_dir():
            found[int(match[1])] = child
    return dict(sorted(found.items()))


def checkpoint_is_complete(folder: Path) -> bool:
    """Whether ``folder`` is a finished checkpoint: its ``trainer_state.json`` (the Trainer writes it last) and its
    weights (``model.safetensors``, every shard a ``model.safetensors.index.json`` names, or a LoRA
    ``adapter_model.safetensors``) are there."""
    if not (folder / TRAINER_STATE).is_file():
        return False
    if (folder / SAFETENSORS_WEIGHTS_FILE).is_file() or (folder / ADAPTER_SAFETENSORS_FILE).is_file():
        return True
    index = folder / SAFETENSORS_INDEX_FILE
    if not index.is_file():
        return False
    try:
        shards = shard_files(index)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return bool(shards) and all((folder / shard).is_file() for shard in shards)


def recorded_evaluations(run_dir: str | Path) -> dict[int, dict[str, float]]:
    """The evaluations recorded in the run's logs: ``{step: {eval key: value}}`` (combined ``eval_codiemb_*``
    scores and per-set metrics; numbers only), oldest file first, a later file's entry replacing an earlier one.

    Raises:
        SelectionError: a ``trainer_state.json`` that is not readable JSON or whose ``log_history`` is not a list of
            entries (naming the file, the entry and the field).
    """
    run_dir = Path(run_dir)
    files = [folder / TRAINER_STATE for folder in checkpoint_steps(run_dir).values()]
    files = [path for path in files if path.is_file()]
    if (run_dir / TRAINER_STATE).is_file():
        files.append(run_dir / TRAINER_STATE)  # the final log last: it covers the whole run
    evaluations: dict[int, dict[str, float]] = {}
    for path in files:
        for step, metrics in _evaluations_in(path).items():
            evaluations[step] = metrics
    return dict(sorted(evaluations.items()))


def _evaluations_in(path: Path) -> dict[int, dict[str, float]]:
    """The entries of one ``trainer_state.json``'s ``log_history`` that record a combined evaluation score."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SelectionError(f"{path}: not a readable trainer_state.json ({exc})") from None
    history = state.get("log_history") if isinstance(state, dict) else None
    if not isinstance(history, list):
        raise SelectionError(f"{path}, field 'log_history': expected a list of log entries")
    found: dict[int, dict[str, float]] = {}
    for index, entry in enumerate(history):
        if not isinstance(entry, dict) or not any(key in entry for key in CRITERIA.values()):
            continue
        step = entry.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            raise SelectionError(f"{path}, log_history entry {index}, field 'step': expected an integer, got {step!r}")
        metrics = {}
        for key, value in entry.items():
            if not key.startswith("eval_"):
                continue
            if key in CRITERIA.values() and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            ):
                raise SelectionError(
                    f"{path}, log_history entry {index}, field {key!r}: expected a finite number, got {value!r}"
                )
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics[key] = float(value)
        found[step] = metrics
    return found


def select_checkpoint(run_dir: str | Path, criterion: str) -> SelectedCheckpoint:
    """The complete checkpoint of ``run_dir`` with the highest score of ``criterion`` (the earliest step on ties).

    Raises:
        SelectionError: an unknown criterion, a run with no recorded evaluation (of that score), or none of whose
            evaluated steps has a complete checkpoint left.
    """
    run_dir = Path(run_dir).expanduser()
    if criterion not in CRITERIA:
        raise SelectionError(f"Unknown selection criterion {criterion!r}; choose from {', '.join(CRITERIA)}")
    metric = CRITERIA[criterion]
    if not run_dir.is_dir():
        raise SelectionError(f"Run folder {run_dir} does not exist")
    evaluations = recorded_evaluations(run_dir)
    scored = {step: metrics for step, metrics in evaluations.items() if metric in metrics}
    if not scored:
        raise SelectionError(
            f"Run {run_dir} has no recorded evaluation with {metric!r} in its {TRAINER_STATE} files: train it with "
            "dev sets and evaluation during training (eval_strategy), or name the checkpoints with --checkpoints"
        )
    checkpoints = checkpoint_steps(run_dir)
    available = {
        step: metrics
        for step, metrics in scored.items()
        if step in checkpoints and checkpoint_is_complete(checkpoints[step])
    }
    if not available:
        raise SelectionError(
            f"Run {run_dir}: evaluations were recorded at steps {sorted(scored)}, but none of them has a complete "
            "checkpoint-<step> folder left (weights and trainer_state.json)"
        )
    skipped = sorted(set(scored) - set(available))
    if skipped:
        logger.info("Run %s: evaluated steps without a complete checkpoint are skipped: %s", run_dir, skipped)
    step = max(available, key=lambda s: (available[s][metric], -s))
    metrics = available[step]
    selected = SelectedCheckpoint(
        run=run_dir,
        criterion=criterion,
        metric=metric,
        step=step,
        score=metrics[metric],
        path=checkpoints[step],
        scores={key: value for key, value in metrics.items() if key in CRITERIA.values()},
    )
    logger.info("Selected %s", selected.describe())
    return selected


def select_checkpoints(runs: Sequence[str | Path], criteria: Sequence[str]) -> list[SelectedCheckpoint]:
    """One checkpoint per (run, criterion) pair: runs and criteria are paired in order; a single run is used for
    every criterion, a single criterion for every run (``[A, B] x [best_ir, best_sts]``: A's best IR checkpoint and
    B's best STS checkpoint).

    Raises:
        SelectionError: no run or no criterion, or several of each in different numbers; any error of
            :func:`select_checkpoint`.
    """
    if not runs or not criteria:
        raise SelectionError("Checkpoint selection needs run folders (--select_from) and criteria (--select)")
    if len(runs) != len(criteria) and len(runs) != 1 and len(criteria) != 1:
        raise SelectionError(
            f"--select_from names {len(runs)} runs and --select {len(criteria)} criteria: give one of either, or "
            "as many of both (paired in order)"
        )
    count = max(len(runs), len(criteria))
    pairs = [(runs[i if len(runs) > 1 else 0], criteria[i if len(criteria) > 1 else 0]) for i in range(count)]
    selected = [select_checkpoint(run, criterion) for run, criterion in pairs]
    paths = [item.path.resolve() for item in selected]
    if len(set(paths)) < len(paths):
        logger.warning("Several criteria picked the same checkpoint: %s", [item.describe() for item in selected])
    return selected
