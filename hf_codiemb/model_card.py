"""Model cards of CoDiEmb models: sentence-transformers' card data and template, plus a CoDiEmb section.

- :class:`CoDiEmbModelCardData` is sentence-transformers' ``SentenceTransformerModelCardData`` with a ``codiemb``
  field (per-task batch sizes, updates per task, losses, prompts, LoRA, fusion lineage) rendered by
  ``hf_codiemb/model_cards/codiemb_section.md.j2`` inside sentence-transformers' own template, and without the
  trainer arguments CoDiEmb does not use (``per_device_train_batch_size``, ...).
- :func:`fusion_lineage` names what a fused model was fused from; models are named as
  :mod:`hf_codiemb.model_names` names them (a Hub id or a folder name, never a local absolute path).
- :func:`describe_loss` turns a CoDiEmb loss into one line with its weights and temperatures.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sentence_transformers.sentence_transformer.model_card import SentenceTransformerModelCardData

from hf_codiemb.model_names import public_model_name

__all__ = [
    "UNUSED_HYPERPARAMETERS",
    "CoDiEmbModelCardData",
    "describe_loss",
    "fusion_lineage",
    "record_final_evaluation",
    "use_codiemb_card_data",
]

# Trainer arguments that CoDiEmb does not use: the task-balanced sampler takes ir_batch_size / sts_batch_size.
UNUSED_HYPERPARAMETERS = frozenset({"per_device_train_batch_size", "batch_sampler", "multi_dataset_batch_sampler"})
SECTION_TEMPLATE = Path(__file__).resolve().parent / "model_cards" / "codiemb_section.md.j2"
_SECTION_ANCHOR = "## Training Details\n"


def describe_loss(loss: Any, num_negatives: int | None = None) -> str:
    """One line saying what a loss computes, with its weights and temperatures (for the CoDiEmb section).

    Args:
        loss: A loss module (CoDiEmb's IR and STS losses are spelled out; others list their ``get_config_dict()``).
        num_negatives: The hard negatives per query the collator samples for an IR loss.
    """
    name = type(loss).__name__
    config = loss.get_config_dict() if hasattr(loss, "get_config_dict") else {}
    if name == "CoDiEmbMatryoshkaLoss":
        weights = ", ".join(f"{dim}: {weight}" for dim, weight in zip(loss.matryoshka_dims, loss.matryoshka_weights))
        return f"Matryoshka (dimension: weight {weights}) of " + describe_loss(loss.loss, num_negatives)
    if name in ("MultiPositiveInfoNCELoss", "CachedMultiPositiveInfoNCELoss"):
        parts = [
            f"{config.get('num_positives')} positive(s)"
            + (f" and {num_negatives} hard negative(s)" if num_negatives is not None else "")
            + " per query",
            f"temperature {config.get('temperature')}",
            f"in-batch negatives {'on' if config.get('in_batch_negatives') else 'off'}",
            f"in_batch_positives={config.get('in_batch_positives')!r}",
            f"cross-device gathering {'on' if config.get('gather_across_devices') else 'off'}",
        ]
        if config.get("mini_batch_size"):
            parts.append(f"GradCache mini-batch {config['mini_batch_size']}")
        if config.get("margin") is not None:
            judge = f"guide {config['guide']}" if config.get("guide") else "the model itself"
            parts.append(f"false negatives masked ({config.get('margin_strategy')} margin {config['margin']}, judged by "
                         f"{judge})")  # fmt: skip
        if config.get("distill_weight"):
            parts.append(f"{config['distill_weight']} × KL distillation from teacher scores (teacher temperature "
                         f"{config.get('teacher_temperature')})")  # fmt: skip
        return f"{name}: InfoNCE over the hard negatives, " + ", ".join(parts)
    if name == "CoDiEmbSTSLoss":
        terms = [
            f"{config.get('pearson_weight')} × Pearson",
            f"{config.get('pro_weight')} × PRO",
            f"{config.get('rank_kl_weight')} × rank-KL",
        ]
        if config.get("soft_spearman_weight"):
            terms.append(f"{config['soft_spearman_weight']} × soft Spearman")
        text = f"{name}: " + " + ".join(terms) + f" (temperature {config.get('temperature')})"
        if config.get("multi_layer_weight"):
            layer = config.get("multi_layer_index")
            layer_text = "the middle layer (n // 2)" if layer is None else f"layer {layer}"
            text += (
                f" + {config['multi_layer_weight']} × InfoNCE on {layer_text}, pairs with gold score ≥ "
                f"{config.get('multi_layer_threshold')}, temperature {config.get('multi_layer_temperature')}"
            )
        return text
    if config:
        return f"{name}: " + ", ".join(f"{key}={value}" for key, value in config.items())
    return name


def fusion_lineage(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """What a fused model folder was fused from (its ``fusion_config.json``), with public names only."""
    path = Path(folder) / "fusion_config.json"
    if not path.is_file():
        return None
    try:
        recipe = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return {
        "method": recipe.get("method"),
        "parameters": recipe.get("parameters") or {},
        "base": public_model_name(recipe["base"]) if recipe.get("base") else None,
        "checkpoints": [public_model_name(spec) for spec in recipe.get("checkpoints") or []],
    }


@functools.cache
def _composed_template_path() -> Path:
    """sentence-transformers' model-card template with the CoDiEmb section inserted after "## Training Details".

    Written once per process to a private temporary folder (huggingface_hub renders a template from a path).
    """
    st_template = SentenceTransformerModelCardData.__dataclass_fields__["template_path"].default
    text = Path(st_template).read_text(encoding="utf-8")
    section = SECTION_TEMPLATE.read_text(encoding="utf-8")
    if _SECTION_ANCHOR in text:
        text = text.replace(_SECTION_ANCHOR, _SECTION_ANCHOR + section, 1)
    else:  # a future template without the heading: the section still renders, at the end
        text = text + "\n" + section
    folder = tempfile.mkdtemp(prefix="hf_codiemb-card-")
    atexit.register(shutil.rmtree, folder, True)
    path = Path(folder) / "model_card_template.md"
    path.write_text(text, encoding="utf-8")
    return path


@dataclass
class CoDiEmbModelCardData(SentenceTransformerModelCardData):
    """
    sentence-transformers' model-card data with a CoDiEmb section, rendered by sentence-transformers' template.

    The trainer (:meth:`hf_codiemb.trainer.CoDiEmbTrainer.update_model_card_data`) fills ``codiemb``; the card
    leaves out the trainer arguments CoDiEmb does not use (:data:`UNUSED_HYPERPARAMETERS`) and names the base
    model by its Hub id (:meth:`set_base_model_id`, no Hub request, so it works offline).

    Args:
        codiemb: The CoDiEmb section: ``datasets`` (rows with ``name``, ``task``, ``records``, ``batch_size``,
            ``global_batch_size``, ``updates_per_epoch``, ``loss``, ``prompts``), ``updates_per_task``,
            ``epochs``, ``max_steps``, ``world_size``, ``gradient_accumulation_steps``, ``task_ratio``
            (with ``task_ratio_unit``),
            ``base_model`` / ``base_model_note``, ``lora`` and ``fusion`` (see the template
            ``hf_codiemb/model_cards/codiemb_section.md.j2``).
        **kwargs: Those of ``SentenceTransformerModelCardData`` (``language``, ``license``, ``model_id``, ...).
    """

    codiemb: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.template_path = _composed_template_path()
        self.add_tags("codiemb")

    def set_base_model_id(self, model_id: str | None, revision: str | None = None) -> None:
        """Name the base model by ``model_id`` (card metadata ``base_model``) without asking the Hub."""
        self.base_model = model_id
        self.base_model_revision = revision if model_id else None

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        for key in ("all_hyperparameters", "non_default_hyperparameters"):
            if data.get(key):
                data[key] = {name: value for name, value in data[key].items() if name not in UNUSED_HYPERPARAMETERS}
        return data

    @classmethod
    def from_card_data(cls, card_data: SentenceTransformerModelCardData) -> CoDiEmbModelCardData:
        """A CoDiEmb card data holding everything ``card_data`` holds (user fields, base model, evaluations)."""
        new = cls()
        for item in fields(card_data):
            if item.name != "template_path" and hasattr(new, item.name):
                setattr(new, item.name, getattr(card_data, item.name))
        new.add_tags("codiemb")
        return new


def use_codiemb_card_data(model: Any) -> CoDiEmbModelCardData:
    """Give ``model`` a :class:`CoDiEmbModelCardData` (keeping what its current card data holds) and return it."""
    card_data = model.model_card_data
    if not isinstance(card_data, CoDiEmbModelCardData):
        card_data = CoDiEmbModelCardData.from_card_data(card_data)
        model.model_card_data = card_data
        card_data.register_model(model)
    return card_data


def record_final_evaluation(card_data: Any, evaluated: Any) -> None:
    """Make the evaluations stored in ``evaluated`` (the card data of the saved model, just evaluated) the ones
    ``card_data`` shows: its Evaluation section and model-index, and a line of its training logs."""
    card_data.eval_results_dict = dict(evaluated.eval_results_dict or {})
    for line in evaluated.training_logs:
        if card_data.training_logs and card_data.training_logs[-1].get("Step") == line.get("Step"):
            card_data.training_logs[-1].update(line)
        else:
            card_data.training_logs.append(dict(line))
