"""The streaming fusion pipeline: resolve inputs, validate, merge tensor by tensor, write atomically."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_codiemb.atomic import atomic_folder
from hf_codiemb.fusion.card import load_eval_results, public_names, render_card
from hf_codiemb.fusion.errors import FusionError
from hf_codiemb.fusion.inputs import ResolvedModel, resolve_model
from hf_codiemb.fusion.method import FusionMethod
from hf_codiemb.fusion.output import check_not_an_input, check_output
from hf_codiemb.fusion.registry import get_method
from hf_codiemb.fusion.selection import TRAINER_STATE
from hf_codiemb.fusion.stats import WeightStatistics, preload_plotting
from hf_codiemb.fusion.streaming import merge_weights
from hf_codiemb.fusion.validate import FusionPlan, build_plan
from hf_codiemb.model_folder import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHT_PREFIX,
    BACKEND_EXPORT_FOLDERS,
    MODULES_FILE,
    SHARD_INDEX_FILES,
)
from hf_codiemb.model_names import public_model_name
from hf_codiemb.output_lock import acquire_output_lock

logger = logging.getLogger(__name__)

# Files of a model folder that are not copied to the fused model (weights are rewritten; training state,
# adapters and exports do not describe the fused weights; the card is rendered anew).
_SKIPPED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".pkl")
_SKIPPED_NAMES = {
    *SHARD_INDEX_FILES,
    TRAINER_STATE,
    ADAPTER_CONFIG_FILE,
    "README.md",
    "fusion_weights.json",
    "fusion_weights.png",
    "fusion_config.json",
    "fusion_search.md",
    "fusion_search.json",
    "fusion_front.png",
}
_SKIPPED_DIRS = {*BACKEND_EXPORT_FOLDERS, "runs", "__pycache__"}
# 256K elements (1 MiB in float32) per input per step: a chunk's dozen buffers stay in the CPU caches, which made delta
# fusion of a 335M-parameter model take less CPU time than 1M-element chunks (tests/benchmarks/results/fusion.md).
DEFAULT_CHUNK_ELEMENTS = 1 << 18


@dataclass
class FusionResult:
    """What :func:`fuse` produced."""

    output_dir: Path
    method: str
    parameters: dict[str, Any]
    base: str | None
    checkpoints: list[str]
    statistics: dict[str, Any] | None = None
    files: list[str] = field(default_factory=list)


def delta_fuse(
    base: str | Path,
    checkpoints: Sequence[str | Path],
    output_dir: str | Path,
    p: float = 1.0,
    granularity: str = "element",
    eps: float = 1e-12,
    **kwargs: Any,
) -> FusionResult:
    """CoDiEmb delta-guided fusion of ``checkpoints`` around ``base`` into a sentence-transformers folder.

    Per element (or per tensor with ``granularity="tensor"``), with ``delta_k = theta_k - theta_0``:
    ``w_k = |delta_k|^p / (sum_j |delta_j|^p + eps)`` and ``merged = theta_0 + sum_k w_k delta_k``.

    Args:
        base: the pre-trained model the checkpoints were fine-tuned from (folder, Hub id).
        checkpoints: fine-tuned models (folders, Hub ids, or LoRA adapter folders).
        output_dir: where the fused model folder is created (atomically).
        p: exponent of the magnitudes (0 = uniform Model Soup).
        granularity: ``"element"`` or ``"tensor"``.
        eps: guards the weights' denominator.
        **kwargs: passed to :func:`fuse` (``overwrite``, ``eval_results``, ``model_id``, ...).

    Returns:
        A :class:`FusionResult`.

    Example:
        >>> from hf_codiemb.fusion import delta_fuse
        >>> delta_fuse("base-model", ["run-seed1", "run-seed2"], "fused", p=1.0)  # doctest: +SKIP
    """
    return fuse(
        checkpoints,
        output_dir,
        base=base,
        method="delta",
        method_params={"p": p, "granularity": granularity, "eps": eps},
        **kwargs,
    )


def fuse(
    checkpoints: Sequence[str | Path],
    output_dir: str | Path,
    *,
    base: str | Path | None = None,
    method: str | FusionMethod = "delta",
    method_params: dict[str, Any] | None = None,
    overwrite: bool = False,
    eval_results: dict[str, dict[str, Any]] | str | Path | None = None,
    model_id: str | None = None,
    base_model_id: str | None = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    show_progress: bool = True,
    choice: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, str | Path] | None = None,
) -> FusionResult:
    """Fuse ``checkpoints`` with a registered method, streaming tensor by tensor.

    Only one row chunk per input is in memory at a time (``chunk_elements`` elements; methods that need whole
    tensors, like TIES, get whole tensors). Inputs are validated (architecture, weight files, tensor names, shapes,
    dtypes) before anything is written; the output is built in a hidden sibling folder and renamed into place,
    so an interrupted fusion leaves no partial model at ``output_dir``; the hidden folders that killed runs left
    behind are removed by the next run into the same place. An ``output_dir`` that is, lies inside or contains one
    of the inputs is refused, even with ``overwrite``; one that another live process fuses into is refused at once
    (:mod:`hf_codiemb.output_lock`); an input whose tokenizer differs from the base's is refused. Weights holding NaN/inf are refused, naming the input, the tensor
    and the count.

    Args:
        checkpoints: the models to fuse (local folders, Hub ids ``owner/name[@revision]``, LoRA adapter folders).
        output_dir: the fused model folder to create.
        base: the common base model (required by every method except ``uniform``).
        method: a registered method name (see :func:`registered_methods`) or a :class:`FusionMethod`.
        method_params: keyword arguments of the method (e.g. ``{"p": 2.0}``).
        overwrite: replace an existing non-empty ``output_dir``.
        eval_results: evaluation table for the card (a dict or a JSON file, see ``card.load_eval_results``).
        model_id: the Hub id the model will be pushed to (used in the card's usage snippet).
        base_model_id: Hub id for the card's ``base_model`` metadata when ``base`` is a local folder.
        chunk_elements: maximum elements per input read at once.
        show_progress: show a tqdm bar over tensors.
        choice: how the inputs and settings were chosen, for the card's "How this model was chosen" section:
            ``{"selections": [SelectedCheckpoint.to_dict(), ...], "search": {...}}`` (see
            :mod:`hf_codiemb.fusion.selection`, :mod:`hf_codiemb.fusion.search`).
        extra_files: ``{name: source file}`` copied into the output folder with the model (the search's table and
            plot), inside the same atomic write.

    Raises:
        FusionError: invalid, incompatible or non-finite inputs, or an output folder that is an input (nothing
            written).
        FusionWriteError: the output folder cannot be created.
    """
    if not checkpoints:
        raise FusionError("At least one checkpoint is needed")
    fusion_method = method if isinstance(method, FusionMethod) else get_method(method, **(method_params or {}))
    if fusion_method.requires_base and base is None:
        raise FusionError(f"Fusion method {fusion_method.name!r} needs a base model (--base)")
    try:
        fusion_method.check_inputs(len(checkpoints))
    except ValueError as exc:
        raise FusionError(str(exc)) from None
    if isinstance(eval_results, (str, Path)):
        eval_results = load_eval_results(eval_results)
    output_dir = Path(output_dir).expanduser().absolute()
    specs = ([("base", base)] if base is not None else []) + [
        (f"checkpoint {index}", spec) for index, spec in enumerate(checkpoints, start=1)
    ]
    check_not_an_input(output_dir, specs)
    check_output(output_dir, overwrite)
    lock = acquire_output_lock(output_dir, "fusion")  # a second fusion into the same place is refused at once

    resolved: list[ResolvedModel] = []
    try:
        base_model = resolve_model(base, "base") if base is not None else None
        if base_model is not None:
            resolved.append(base_model)
        models = []
        for index, spec in enumerate(checkpoints, start=1):
            model = resolve_model(spec, f"checkpoint {index}", lora_base=base_model)
            resolved.append(model)
            models.append(model)
        # Hub snapshots and a LoRA's template (its adapter or base folder) are inputs too.
        check_not_an_input(output_dir, [(m.label, path) for m in resolved for path in (m.path, m.template)])
        reference = base_model or models[0]
        plan = build_plan(reference, [reference, *models], models)
        logger.info(
            "Fusing %d checkpoints with %r (%s) into %s",
            len(models),
            fusion_method.name,
            fusion_method.parameters(),
            output_dir,
        )
        return _write_output(fusion_method, plan, base_model, models, output_dir, overwrite, eval_results,
                             model_id, base_model_id, chunk_elements, show_progress, choice, extra_files)
    finally:
        for model in resolved:
            model.cleanup()
        lock.release()


def _write_output(
    method: FusionMethod,
    plan: FusionPlan,
    base: ResolvedModel | None,
    checkpoints: list[ResolvedModel],
    output_dir: Path,
    overwrite: bool,
    eval_results: dict[str, dict[str, Any]] | None,
    model_id: str | None,
    base_model_id: str | None,
    chunk_elements: int,
    show_progress: bool,
    choice: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, str | Path] | None = None,
) -> FusionResult:
    with atomic_folder(output_dir, overwrite=overwrite) as staging:
        labels = [model.spec for model in checkpoints]
        # What the output folder publishes names inputs by Hub id or folder name, never by a local path.
        public = public_names(labels)
        statistics = WeightStatistics(public)
        preload_plotting()  # the weight plot's matplotlib import overlaps the tensor work
        # Labels aligned with a plan row: [reference (the base, else checkpoint 1), checkpoint 1, ..., checkpoint K].
        input_labels = [(base or checkpoints[0]).label, *(model.label for model in checkpoints)]
        has_weights = merge_weights(method, plan, input_labels, base is not None, staging, statistics,
                                    chunk_elements, show_progress)
        template = _template(base, checkpoints)
        _copy_support_files(template, staging)
        files = []
        if has_weights:
            files += statistics.save(staging, method.name, method.parameters())
        recipe = {
            "method": method.name,
            "parameters": method.parameters(),
            "base": public_model_name(base.spec) if base else None,
            "checkpoints": public,
            "template": public_model_name(template),
        }
        (staging / "fusion_config.json").write_text(json.dumps(recipe, indent=2))
        for name, source in (extra_files or {}).items():
            shutil.copyfile(source, staging / name)
        card = render_card(
            method=method.name,
            method_description=method.description,
            parameters=method.parameters(),
            base_model=base.spec if base else None,
            checkpoints=labels,
            model_id=model_id,
            base_model_id=base_model_id,
            eval_results=eval_results,
            base_folder=base.template if base else None,
            checkpoint_folders=[model.template for model in checkpoints],
            stats_file="fusion_weights.json" if "fusion_weights.json" in files else None,
            plot_file="fusion_weights.png" if "fusion_weights.png" in files else None,
            choice=choice,
        )
        (staging / "README.md").write_text(card)
    logger.info("Fused model written to %s", output_dir)
    return FusionResult(
        output_dir=output_dir,
        method=method.name,
        parameters=method.parameters(),
        base=base.spec if base else None,
        checkpoints=labels,
        statistics=statistics.to_dict(method.name, method.parameters()) if has_weights else None,
        files=sorted(p.relative_to(output_dir).as_posix() for p in output_dir.rglob("*") if p.is_file()),
    )


def _template(base: ResolvedModel | None, checkpoints: list[ResolvedModel]) -> Path:
    """The folder whose non-weight files (modules.json, tokenizer, configs) are copied: the first checkpoint that
    is a sentence-transformers folder, else the base, else the first checkpoint."""
    for model in checkpoints:
        if (model.template / MODULES_FILE).is_file():
            return model.template
    if base is not None and (base.template / MODULES_FILE).is_file():
        return base.template
    return checkpoints[0].template


def _copy_support_files(template: Path, staging: Path) -> None:
    for source in sorted(template.rglob("*")):
        relative = source.relative_to(template)
        if source.is_dir() or any(part.startswith((".", "checkpoint-")) or part in _SKIPPED_DIRS
                                  for part in relative.parts):
            continue
        name = source.name
        if (name in _SKIPPED_NAMES or name.endswith(_SKIPPED_SUFFIXES) or name.startswith((ADAPTER_WEIGHT_PREFIX,
                "optimizer", "scheduler", "rng_state", "training_args"))):
            continue
        target = staging / relative
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
