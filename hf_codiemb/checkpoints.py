"""A run's output folder and its ``checkpoint-N`` folders: what a new run may use, what a resumed run starts from.

The policy of :class:`~hf_codiemb.trainer.CoDiEmbTrainer` and ``codiemb train`` (and ``codiemb tradeoff``, which
reads finished runs): a checkpoint is *complete* when every file the Trainer writes is there and readable
(:func:`checkpoint_problem`); ``resume_from_checkpoint=last`` takes the latest complete one; a new run into a folder
that holds a previous run is refused unless ``overwrite_output_dir``, whose old checkpoints are deleted only once
every other check of the run has passed (:func:`prepare_output_dir`, then :func:`delete_previous_checkpoints`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME, TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hf_codiemb.errors import CoDiEmbUserError, ModelLoadError
from hf_codiemb.model_folder import ADAPTER_CONFIG_FILE, MODULES_FILE, WEIGHT_FILES, check_safetensors_file

if TYPE_CHECKING:
    from hf_codiemb.training_args import CoDiEmbTrainingArguments

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_PATTERN",
    "CheckpointError",
    "checkpoint_problem",
    "delete_previous_checkpoints",
    "latest_complete_checkpoint",
    "list_checkpoints",
    "prepare_output_dir",
    "resolve_resume_checkpoint",
]


class CheckpointError(CoDiEmbUserError, ValueError):
    """A checkpoint that cannot be resumed from: missing, incomplete, or none at all in the output folder."""


CHECKPOINT_PATTERN = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
RESUME_LATEST = ("true", "last", "latest")


def _safetensors_problem(path: Path, checkpoint: Path) -> str | None:
    """Why the safetensors file ``path`` is unreadable (truncated, bad header), or None (the one check of
    :func:`hf_codiemb.model_folder.check_safetensors_file`)."""
    try:
        check_safetensors_file(path, str(checkpoint))
    except ModelLoadError:
        return f"{path.relative_to(checkpoint)} is truncated or corrupt"
    return None


def checkpoint_problem(checkpoint: str | Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed from, or ``None`` when it is complete.

    A complete checkpoint has ``trainer_state.json`` (the Trainer writes it last, so a save killed midway leaves none
    or a truncated one), the model (``modules.json`` and readable weights of every module) and, unless it is a
    model-only checkpoint (``save_only_model``), the optimizer and scheduler states, all readable. Files are checked
    for their structure (safetensors sizes, zip directories of ``torch.save`` files), not loaded.

    Args:
        checkpoint: A ``checkpoint-N`` folder.

    Returns:
        A short reason (e.g. ``"no trainer_state.json (its save did not finish)"``) or ``None``.
    """
    path = Path(checkpoint)
    if not path.is_dir():
        return "not a folder" if path.exists() else "does not exist"
    state_file = path / TRAINER_STATE_NAME
    if not state_file.is_file():
        return f"no {TRAINER_STATE_NAME} (its save did not finish)"
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"{TRAINER_STATE_NAME} is unreadable ({error})"
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        return f"{TRAINER_STATE_NAME} has no global_step"
    try:
        modules = json.loads((path / MODULES_FILE).read_text(encoding="utf-8"))
        module_dirs = [path / module.get("path", "") for module in modules]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, TypeError) as error:
        return f"modules.json is missing or unreadable ({error})"
    if not any((folder / name).is_file() for folder in {path, *module_dirs} for name in WEIGHT_FILES):
        return f"no model weights ({' / '.join(WEIGHT_FILES[::2])})"
    for index in sorted(path.rglob("*.index.json")):
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            return f"{index.relative_to(path)} is unreadable ({error})"
        missing_shards = sorted(shard for shard in shards if not (index.parent / shard).is_file())
        if missing_shards:
            return f"{index.relative_to(path)} lists missing shard(s) {missing_shards}"
    for weights in sorted(path.rglob("*.safetensors")):
        problem = _safetensors_problem(weights, path)
        if problem:
            return problem
    for weights in sorted(path.rglob("*.bin")):
        if weights.name != "training_args.bin" and not zipfile.is_zipfile(weights):
            return f"{weights.relative_to(path)} is truncated or not a torch.save file"
    training_state = [OPTIMIZER_NAME, SCHEDULER_NAME]
    present = [name for name in training_state if (path / name).is_file()]
    deepspeed = any(child.is_dir() and child.name.startswith("global_step") for child in path.iterdir())
    if present and len(present) < len(training_state) and not deepspeed:
        missing = sorted(set(training_state) - set(present))
        return f"no {' / '.join(missing)} (its save did not finish)"
    for name in [*present, *sorted(file.name for file in path.glob("rng_state*.pth"))]:
        if not zipfile.is_zipfile(path / name):
            return f"{name} is truncated or not a torch.save file"
    return None


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """The ``checkpoint-N`` folders of ``output_dir``, oldest (lowest N) first; ``[]`` when it does not exist."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), child) for child in folder.iterdir() if (m := CHECKPOINT_PATTERN.match(child.name))]
    return [child for _, child in sorted(found) if child.is_dir()]


def latest_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint of ``output_dir`` with the highest step; every newer incomplete one is logged."""
    for checkpoint in reversed(list_checkpoints(output_dir)):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return checkpoint
        logger.warning("Skipping incomplete checkpoint %s: %s", checkpoint, problem)
    return None


def resolve_resume_checkpoint(value: str | bool | os.PathLike | None, output_dir: str | Path) -> str | None:
    """The checkpoint a run resumes from, given ``resume_from_checkpoint``.

    Args:
        value: ``None``/``False``/``""``/``"false"``: start a new run. ``True`` or ``"true"``/``"last"``/``"latest"``:
            the latest complete checkpoint of ``output_dir``. A path: that checkpoint, or, for a run folder holding
            ``checkpoint-N`` folders, its latest complete one.
        output_dir: The run's output folder.

    Returns:
        The checkpoint folder, or ``None`` for a new run.

    Raises:
        CheckpointError: when there is nothing to resume from, or the given checkpoint is incomplete (the message
            says what is missing and names the latest complete checkpoint, if any).
    """
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in ("", "false", "no")):
        return None
    if value is True or (isinstance(value, str) and value.strip().lower() in RESUME_LATEST):
        checkpoint = latest_complete_checkpoint(output_dir)
        if checkpoint is None:
            found = list_checkpoints(output_dir)
            detail = f"none of its {len(found)} checkpoint(s) is complete" if found else "it holds no checkpoint-N folder"
            raise CheckpointError(f"resume_from_checkpoint={value!s}: nothing to resume in {output_dir}: {detail}")
        return str(checkpoint)
    path = Path(value)
    if path.is_dir() and not (path / TRAINER_STATE_NAME).exists() and list_checkpoints(path):
        checkpoint = latest_complete_checkpoint(path)
        if checkpoint is None:
            raise CheckpointError(f"resume_from_checkpoint={path}: none of its checkpoint-N folders is complete")
        return str(checkpoint)
    problem = checkpoint_problem(path)
    if problem is not None:
        latest = latest_complete_checkpoint(path.parent) if path.parent != path else None
        hint = f"; the latest complete checkpoint there is {latest}" if latest is not None else ""
        raise CheckpointError(f"resume_from_checkpoint={path}: cannot resume from it: {problem}{hint}")
    return str(path)


def prepare_output_dir(args: CoDiEmbTrainingArguments, dry_run: bool = False) -> str | None:
    """Where a run starts: the checkpoint it resumes from, or ``None`` for a new run into a safe ``output_dir``.

    First takes the lock of ``output_dir`` (:func:`hf_codiemb.output_lock.acquire_output_lock`; only the process
    that saves, rank 0 under torchrun, takes it): a second run into an ``output_dir`` another live process trains
    into is refused at once. Then resolves ``args.resume_from_checkpoint`` (see :func:`resolve_resume_checkpoint`).
    A new run into an ``output_dir`` that already holds ``checkpoint-N`` folders or a saved model is refused unless
    ``args.overwrite_output_dir``; nothing is deleted here: :func:`delete_previous_checkpoints` does, once the data,
    recipe and model have been checked. With ``dry_run`` the same checks run, the lock is only checked.

    Raises:
        OutputInUseError: another live process holds the lock of ``output_dir`` (the message names it).
        OutputExistsError: a new run into a used ``output_dir`` without ``overwrite_output_dir``.
        CheckpointError: a checkpoint to resume from that is missing or incomplete.
    """
    from hf_codiemb.errors import OutputExistsError
    from hf_codiemb.output_lock import acquire_output_lock, check_output_unlocked

    output_dir = Path(args.output_dir)
    if dry_run:
        check_output_unlocked(output_dir)
    elif args.process_index == 0:  # one lock per run: rank 0 holds it for every rank of a launch
        acquire_output_lock(output_dir, "training")
    checkpoint = resolve_resume_checkpoint(args.resume_from_checkpoint, output_dir)
    if checkpoint is not None:
        return checkpoint
    checkpoints = list_checkpoints(output_dir)
    held = _previous_run(output_dir)
    if not held:
        return None
    if not args.overwrite_output_dir:
        raise OutputExistsError(
            f"output_dir {output_dir} already holds {held}: a new run would overwrite them. Resume with "
            "--resume_from_checkpoint last (or a checkpoint path), choose another --output_dir, or pass "
            "--overwrite_output_dir to start over (its checkpoints are then deleted)."
        )
    logger.warning("overwrite_output_dir: starting a new run in %s, which holds %s", output_dir, held)
    if checkpoints and not dry_run:
        logger.info("overwrite_output_dir: the %d old checkpoint(s) are deleted once the data and model are checked",
                    len(checkpoints))  # fmt: skip
    return None


def _previous_run(output_dir: Path) -> str:
    """What a previous run left in ``output_dir`` (``"2 checkpoint(s) (checkpoint-2, checkpoint-4) and a saved
    model"``), or ``""``."""
    checkpoints = list_checkpoints(output_dir)
    saved_model = [name for name in (MODULES_FILE, ADAPTER_CONFIG_FILE) if (output_dir / name).is_file()]
    held = [f"{len(checkpoints)} checkpoint(s) ({', '.join(c.name for c in checkpoints[-3:])})"] if checkpoints else []
    held += ["a saved model"] if saved_model else []
    return " and ".join(held)


def delete_previous_checkpoints(args: CoDiEmbTrainingArguments, resume_from: str | None) -> list[Path]:
    """Delete the ``checkpoint-N`` folders of the previous run in ``output_dir`` for a new run with
    ``overwrite_output_dir`` (so they cannot be mistaken for this run's), by the process that saves.

    Call it after every check of the run passed (:func:`prepare_output_dir`, the data, the recipe, the model), just
    before training: a mistake found by a check then costs nothing of the previous run.

    Returns:
        The folders deleted (none when resuming, without ``overwrite_output_dir`` or on the other ranks).
    """
    import shutil

    if resume_from is not None or not args.overwrite_output_dir or not args.should_save:
        return []
    deleted = []
    for old in list_checkpoints(args.output_dir):
        logger.warning("overwrite_output_dir: deleting %s of the previous run", old)
        shutil.rmtree(old)
        deleted.append(old)
    return deleted
