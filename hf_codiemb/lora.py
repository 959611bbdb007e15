"""The LoRA lifecycle of a model: adapters added for training, the planned set-up of a dry run, the adapters' base
found again, a LoRA-trained folder loaded, and its adapters merged into the base weights.

- :func:`add_lora` (called by :func:`hf_codiemb.models.load_model` for a recipe with ``lora_r > 0``) and
  :func:`lora_plan` (``codiemb train --dry_run``);
- :func:`publish_adapter_base`: saved ``adapter_config.json`` files name the base by its public name, never a local
  path;
- :func:`lora_base_folder` and :func:`load_lora_model` (``codiemb evaluate`` of a LoRA-trained folder, the final
  evaluation of a LoRA run): the base found here, packaged/prepared bases offline;
- :func:`merge_lora_folder` (``codiemb merge-lora``), :func:`merge_adapter_into_base` (the fusion of adapter
  checkpoints), both through the one merge :func:`merge_lora_weights`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Protocol

import torch
from sentence_transformers import SentenceTransformer

from hf_codiemb.atomic import atomic_folder
from hf_codiemb.errors import ModelLoadError, OutputExistsError, RecipeError, UsageError
from hf_codiemb.model_card import use_codiemb_card_data
from hf_codiemb.model_folder import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHT_FILES,
    check_model_folder,
    check_safetensors_file,
    transformers_config_dir,
)
from hf_codiemb.model_names import (
    KNOWN_BASE_MODEL_IDS,
    check_hub_model,
    infer_base_model_id,
    is_path_like,
    public_model_name,
    resolve_model_path,
)
from hf_codiemb.output_lock import output_lock
from hf_codiemb.output_paths import overlapping_input

logger = logging.getLogger(__name__)


class LoraSettings(Protocol):
    """The fields of :class:`hf_codiemb.arguments.ModelArguments` that the LoRA set-up reads (the adapters' recipe)."""

    model_name_or_path: str
    trust_remote_code: bool
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    lora_target_modules: list[str] | None


DEFAULT_LORA_TARGETS = ("query", "key", "value", "dense")


def lora_config(args: LoraSettings):
    """The peft ``LoraConfig`` that ``args`` describe (targets default to BERT's query/key/value/dense)."""
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.FEATURE_EXTRACTION,
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=list(args.lora_target_modules or DEFAULT_LORA_TARGETS),
    )


def add_lora(model: SentenceTransformer, args: LoraSettings) -> None:
    """Add peft LoRA adapters; only they are trained and saved.

    The card data records the base's public name (its Hub id, or for a folder without one the folder's name);
    the trainer writes it into every saved ``adapter_config.json`` (:func:`publish_adapter_base`), never a local
    path. :func:`load_lora_model` finds packaged/prepared bases offline.
    """
    config = lora_config(args)
    model.add_adapter(config)
    base_name = infer_base_model_id(args.model_name_or_path) or public_model_name(args.model_name_or_path)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    targets = sorted(config.target_modules)
    logger.info("LoRA r=%d on %s: %d of %d parameters trainable", args.lora_r, targets, trainable, total)
    card_data = use_codiemb_card_data(model)
    card_data.add_tags("lora")
    card_data.codiemb["lora"] = {
        "r": config.r,
        "alpha": config.lora_alpha,
        "dropout": config.lora_dropout,
        "target_modules": targets,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "base": base_name,
    }


def lora_plan(args: LoraSettings, model_path: str | Path) -> dict[str, Any]:
    """The adapter set-up of a LoRA recipe, for a dry run: r, alpha, dropout, targets and the parameter counts.

    The counts come from the model's architecture on the meta device (its config only, no weights read); when
    ``model_path`` is not a local folder (a Hub id) only the configuration is reported.

    Raises:
        RecipeError: a target module matches no module of the model.
    """
    config = lora_config(args)
    plan: dict[str, Any] = {
        "r": config.r,
        "alpha": config.lora_alpha,
        "dropout": config.lora_dropout,
        "target_modules": sorted(config.target_modules),
    }
    backbone_dir = transformers_config_dir(model_path) if Path(model_path).is_dir() else None
    if backbone_dir is None:
        return plan
    from accelerate import init_empty_weights
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModel

    model_config = AutoConfig.from_pretrained(str(backbone_dir), trust_remote_code=args.trust_remote_code)
    with init_empty_weights(), warnings.catch_warnings():
        # peft asks transformers' deprecated is_gradient_checkpointing: not ours to fix, not the user's concern
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        backbone = AutoModel.from_config(model_config, trust_remote_code=args.trust_remote_code)
        try:
            peft_model = get_peft_model(backbone, config)
        except ValueError as error:
            raise RecipeError(f"{error}".splitlines()[0], field="lora_target_modules") from None
    trainable, total = peft_model.get_nb_trainable_parameters()
    plan.update(trainable_parameters=int(trainable), total_parameters=int(total))
    return plan


def lora_base_folder(adapter_dir: str | Path, base: str | None = None) -> str:
    """Where the base model of a LoRA-trained folder is, here: a local transformers folder or a Hub id.

    ``base`` (a model name as :func:`resolve_model_path` takes it) wins; otherwise the ``base_model_name_or_path``
    of ``adapter_config.json``: an existing folder, the Hub id of a packaged/prepared model available here (found
    offline), or a Hub id.

    Raises:
        ModelLoadError: the folder holds no adapter, or its base cannot be found (pass ``base``).
    """
    adapter_dir = Path(adapter_dir)
    _, settings = read_adapter_config(adapter_dir)
    if base is not None:
        folder = resolve_model_path(base)
        return str(transformers_config_dir(folder) or folder) if Path(folder).is_dir() else folder
    declared = settings.get("base_model_name_or_path") or ""
    if declared and Path(declared).is_dir():
        return str(transformers_config_dir(declared) or declared)
    for spec, model_id in KNOWN_BASE_MODEL_IDS.items():
        if model_id == declared:
            try:
                folder = resolve_model_path(spec, check_hub=False)
            except ModelLoadError:
                continue
            return str(transformers_config_dir(folder) or folder)
    reason = "not a local folder"
    if declared and not is_path_like(declared):
        try:
            check_hub_model(declared)
            return declared
        except ModelLoadError as error:
            reason = str(error)
    raise ModelLoadError(
        f"The LoRA folder {os.path.abspath(adapter_dir)} was trained on base {declared!r}, which is not available "
        f"here ({reason}); name the base model (--base PATH_OR_ID)"
    )


def publish_adapter_base(folder: str | Path, base_name: str) -> None:
    """Make the ``adapter_config.json`` files of a saved LoRA folder name the base ``base_name`` (a Hub id or a
    folder name) instead of the local path peft wrote (peft itself keeps the local path while training, so its
    save-time checks of the base stay offline)."""
    for config_file in [Path(folder) / ADAPTER_CONFIG_FILE, *Path(folder).glob(f"*/{ADAPTER_CONFIG_FILE}")]:
        if config_file.is_file():
            settings = json.loads(config_file.read_text(encoding="utf-8"))
            settings["base_model_name_or_path"] = base_name
            config_file.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def adapter_config_file(folder: str | Path) -> Path:
    """The ``adapter_config.json`` of a LoRA-trained sentence-transformers folder (at its root or in a module folder).

    Raises:
        ModelLoadError: there is none.
    """
    folder = Path(folder)
    found = [folder / ADAPTER_CONFIG_FILE] if (folder / ADAPTER_CONFIG_FILE).is_file() else []
    found += sorted(folder.glob(f"*/{ADAPTER_CONFIG_FILE}"))
    if not found:
        raise ModelLoadError(
            f"{os.path.abspath(folder)} holds no adapter_config.json: it is not a LoRA-trained model folder"
        )
    return found[0]


def read_adapter_settings(folder: str | Path) -> tuple[Path, dict[str, Any]]:
    """The ``adapter_config.json`` of a LoRA-trained folder and its settings, after checking the folder is complete.

    Checks, before anything is loaded or copied: the folder is a model folder (:func:`check_model_folder`: modules,
    safetensors headers), ``adapter_config.json`` is a JSON object, and the adapter weights next to it
    (:data:`ADAPTER_WEIGHT_FILES`) exist with a valid header. Every message names the user's file, never a copy.

    Raises:
        ModelLoadError: no adapter, an invalid ``adapter_config.json``, missing or truncated adapter weights.
    """
    config_file, settings = read_adapter_config(folder)
    weights = [config_file.parent / name for name in ADAPTER_WEIGHT_FILES if (config_file.parent / name).is_file()]
    if not weights:  # before the whole-folder check: the adapter's own file is the more precise message
        raise ModelLoadError(
            f"LoRA folder {os.path.abspath(folder)}: no adapter weights next to {os.path.abspath(config_file)} (none "
            f"of {', '.join(ADAPTER_WEIGHT_FILES)}); an interrupted save?"
        )
    if weights[0].suffix == ".safetensors":
        check_safetensors_file(weights[0], os.path.abspath(folder))
    check_model_folder(folder)
    return config_file, settings


def read_adapter_config(folder: str | Path) -> tuple[Path, dict[str, Any]]:
    """The ``adapter_config.json`` of a LoRA-trained folder and its settings (a JSON object).

    Raises:
        ModelLoadError: no adapter, or an ``adapter_config.json`` that is not a JSON object (file and line named).
    """
    config_file = adapter_config_file(folder)
    where = os.path.abspath(config_file)
    try:
        settings = json.loads(config_file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ModelLoadError(f"{where}: not UTF-8 text ({error.reason} at byte {error.start + 1})") from None
    except json.JSONDecodeError as error:
        raise ModelLoadError(
            f"{where}, line {error.lineno}: invalid JSON ({error.msg}, column {error.colno}); the adapter folder is "
            "corrupt (an interrupted save?)"
        ) from None
    if not isinstance(settings, dict):
        raise ModelLoadError(f"{where}: must be a JSON object, got {type(settings).__name__}")
    return config_file, settings


def load_lora_model(adapter_dir: str | Path, base: str | None = None, device: str | None = None) -> SentenceTransformer:
    """Load a LoRA-trained sentence-transformers folder with its base found by :func:`lora_base_folder`.

    Raises:
        ModelLoadError: the folder holds no adapter, or its base cannot be found.
    """
    import tempfile

    adapter_dir = Path(adapter_dir)
    config_file, adapter_config = read_adapter_settings(adapter_dir)
    base_folder = lora_base_folder(adapter_dir, base)
    if adapter_config.get("base_model_name_or_path") == base_folder:
        return SentenceTransformer(str(adapter_dir), device=device)
    adapter_config["base_model_name_or_path"] = base_folder
    # The folder as it is (linked), but with an adapter_config.json that names the base found here.
    with tempfile.TemporaryDirectory(prefix="codiemb-lora-") as view:
        source, target = adapter_dir, Path(view)
        for part in config_file.relative_to(adapter_dir).parts[:-1]:
            _link_entries(source, target, skip=part)
            source, target = source / part, target / part
            target.mkdir()
        _link_entries(source, target, skip=config_file.name)
        (target / config_file.name).write_text(json.dumps(adapter_config), encoding="utf-8")
        return SentenceTransformer(view, device=device)


def _link_entries(source: Path, target: Path, skip: str) -> None:
    """Link (or, where links are not possible, copy) every entry of ``source`` but ``skip`` into ``target``."""
    for entry in source.iterdir():
        if entry.name == skip:
            continue
        try:
            os.symlink(entry.resolve(), target / entry.name)
        except OSError:  # no symlinks on this file system
            copy = shutil.copytree if entry.is_dir() else shutil.copy2
            copy(entry, target / entry.name)


def merge_lora_folder(adapter_dir: str | Path, output_dir: str | Path, base: str | None = None) -> Path:
    """Load a LoRA-trained sentence-transformers folder, merge the adapters into the weights and save a full model.

    The base is found by :func:`lora_base_folder` (``base`` overrides the one ``adapter_config.json`` names). The
    model card is the training run's, marked as merged (:func:`mark_card_merged`). The output is written atomically
    (:func:`hf_codiemb.atomic.atomic_folder`), so a failure leaves nothing behind; the adapter folder is checked
    whole (:func:`check_model_folder`), an output inside an input is refused, and the output is locked
    (:mod:`hf_codiemb.output_lock`) while it is written.
    """
    adapter_dir, output_dir = Path(adapter_dir), Path(output_dir)
    _, lora_settings = read_adapter_settings(adapter_dir)  # the folder checked whole, the adapter's own files too
    if output_dir.exists():
        raise OutputExistsError(f"Output folder {os.path.abspath(output_dir)} exists; choose a new one")
    base_path = resolve_model_path(base, check_hub=False) if base is not None else None
    problem = overlapping_input(output_dir, [("LoRA folder", adapter_dir), ("base model", base_path)])
    if problem is not None:
        raise UsageError(f"Output folder {os.path.abspath(output_dir)} {problem}; choose one outside it")
    with output_lock(output_dir, "merge-lora"):
        return _merge_lora_into(adapter_dir, output_dir, lora_settings, base)


def _merge_lora_into(adapter_dir: Path, output_dir: Path, lora_settings: dict[str, Any], base: str | None) -> Path:
    """The work of :func:`merge_lora_folder` once its checks passed and the output is locked."""
    model = load_lora_model(adapter_dir, base=base, device="cpu")
    model[0].model = merge_lora_weights(model[0].model)
    with atomic_folder(output_dir) as staging:
        model.save(str(staging))
        mark_card_merged(staging / "README.md", lora_settings)
    return output_dir


_LORA_STATUS = re.compile(r"<!-- codiemb:lora-status -->.*?<!-- /codiemb:lora-status -->", re.DOTALL)


def mark_card_merged(card_path: Path, lora_settings: dict[str, Any]) -> None:
    """Say in the model card at ``card_path`` that the model was trained with LoRA and its adapters merged.

    The card keeps its metadata (``base_model``, datasets, evaluation) and gains the tags ``lora`` and
    ``merged-lora``; the CoDiEmb section's adapter note (or, in a card without one, a note under the title) says
    the weights are full.
    """
    from huggingface_hub import ModelCard

    base = lora_settings.get("base_model_name_or_path")
    base = base if base and not os.path.isabs(str(base)) else None
    note = (
        f"Trained with LoRA (r = {lora_settings.get('r')}, alpha = {lora_settings.get('lora_alpha')}, target "
        f"modules: {', '.join(sorted(lora_settings.get('target_modules') or []))})"
        + (f" on `{base}`" if base else "")
        + "; the adapters were merged into the base weights with `codiemb merge-lora`, so this folder holds a "
        "full model."
    )
    if card_path.is_file():
        card = ModelCard.load(card_path)
    else:
        card = ModelCard("---\n---\n# Merged LoRA model\n")
    tags = list(card.data.tags or [])
    card.data.tags = tags + [tag for tag in ("lora", "merged-lora") if tag not in tags]
    marked = f"<!-- codiemb:lora-status -->{note}<!-- /codiemb:lora-status -->"
    if _LORA_STATUS.search(card.text):
        card.text = _LORA_STATUS.sub(lambda _: marked, card.text, count=1)
    else:
        lines = card.text.splitlines()
        title = next((index for index, line in enumerate(lines) if line.startswith("# ")), -1)
        lines.insert(title + 1, f"\n{marked}\n")
        card.text = "\n".join(lines) + "\n"
    card.save(card_path)


def merge_adapter_into_base(base_dir: str | Path, adapter_dir: str | Path) -> torch.nn.Module:
    """Load the transformers model in ``base_dir``, apply the peft LoRA adapter saved in ``adapter_dir`` (a raw peft
    folder: ``adapter_config.json`` + adapter weights) and return the plain model with the adapter merged in
    (:func:`merge_lora_weights`)."""
    from peft import PeftModel
    from transformers import AutoModel

    base = AutoModel.from_pretrained(str(base_dir), use_safetensors=True)
    return merge_lora_weights(PeftModel.from_pretrained(base, str(adapter_dir)))


def merge_lora_weights(backbone: torch.nn.Module) -> torch.nn.Module:
    """A plain transformers model whose weights are ``backbone``'s with every LoRA adapter merged in.

    ``backbone`` is a peft ``PeftModel`` or a transformers model with adapters added through its peft integration
    (``add_adapter``, as :func:`add_lora` does). Both ``codiemb merge-lora`` and the fusion of LoRA checkpoints merge
    through this function.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer
    from transformers import AutoModel

    if hasattr(backbone, "merge_and_unload"):  # a peft PeftModel
        return backbone.merge_and_unload()
    for module in backbone.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()
    state = {}
    for name, tensor in backbone.state_dict().items():
        if "lora_" in name:
            continue
        state[name.replace(".base_layer.", ".")] = tensor
    plain = AutoModel.from_config(backbone.config)
    plain.load_state_dict(state, strict=True)
    return plain.to(next(backbone.parameters()).dtype)
