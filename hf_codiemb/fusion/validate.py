"""Compatibility checks of fusion inputs, run before anything is written."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from hf_codiemb.fusion.errors import FusionError
from hf_codiemb.fusion.inputs import ResolvedModel
from hf_codiemb.fusion.safetensors_io import TensorInfo, weight_groups

# group -> tensor name -> [reference info, checkpoint 1 info, ..., checkpoint K info]
FusionPlan = dict[str, dict[str, list[TensorInfo]]]


def _architecture(folder: Path) -> tuple[str | None, tuple[str, ...]] | None:
    config_path = folder / "config.json"
    if not config_path.is_file():
        return None
    config = json.loads(config_path.read_text())
    return config.get("model_type"), tuple(config.get("architectures") or ())


def model_weight_groups(model: ResolvedModel) -> dict[str, dict[str, TensorInfo]]:
    """Weight groups of a resolved input (a merged LoRA adds the other modules' weights from its template)."""
    try:
        groups = weight_groups(model.path)
        if model.is_lora and model.template != model.path:
            for key, infos in weight_groups(model.template).items():
                groups.setdefault(key, infos)
    except (ValueError, OSError) as exc:
        raise FusionError(f"The {model.label}: {exc}") from exc
    if not groups:
        pickled = sorted(p.name for p in model.path.glob("*.bin")) + sorted(p.name for p in model.path.glob("*.pt"))
        hint = f" (found {', '.join(pickled)}: convert them to safetensors; pickle files are never loaded)" if pickled else ""
        raise FusionError(f"The {model.label} has no safetensors weights{hint}")
    return groups


def check_same_tokenizer(reference: ResolvedModel, models: Sequence[ResolvedModel]) -> None:
    """Refuse an input whose tokenizer vocabulary differs from ``reference``'s
    (:func:`hf_codiemb.model_folder.tokenizer_fingerprint`): its weights were trained on other token ids, and the
    fused model gets one tokenizer only. Inputs without tokenizer files are not compared."""
    from hf_codiemb.errors import ModelLoadError
    from hf_codiemb.model_folder import tokenizer_fingerprint, transformer_module_dir

    def fingerprint(model: ResolvedModel) -> str | None:
        try:
            return tokenizer_fingerprint(model.template)
        except ModelLoadError as exc:
            raise FusionError(f"The {model.label}: {exc}") from None

    expected = fingerprint(reference)
    if expected is None:
        return
    for model in models:
        found = fingerprint(model)
        if found is not None and found != expected:
            raise FusionError(
                f"The {model.label} has a different tokenizer ({transformer_module_dir(model.template)}) from the "
                f"{reference.label} ({transformer_module_dir(reference.template)}): its weights belong to other "
                "token ids; fuse checkpoints trained from the same base"
            )


def build_plan(reference: ResolvedModel, inputs: Sequence[ResolvedModel], checkpoints: Sequence[ResolvedModel]) -> FusionPlan:
    """Check that every input matches ``reference`` and return the per-tensor plan.

    ``inputs`` are all models read during fusion (the reference first); ``checkpoints`` are the ones being fused,
    in order. Raises :class:`FusionError` naming the checkpoint (and the tensor) on a mismatched architecture,
    weight files, tensor names, shapes or dtypes.
    """
    reference_arch = _architecture(reference.path)
    for model in inputs[1:]:
        arch = _architecture(model.path)
        if reference_arch is not None and arch is not None and arch != reference_arch:
            raise FusionError(
                f"The {model.label} has architecture model_type={arch[0]!r} architectures={list(arch[1])}, but the "
                f"{reference.label} has model_type={reference_arch[0]!r} architectures={list(reference_arch[1])}"
            )

    check_same_tokenizer(reference, inputs[1:])
    reference_groups = model_weight_groups(reference)
    checkpoint_groups = [model_weight_groups(model) for model in checkpoints]
    plan: FusionPlan = {}
    for model, groups in zip(checkpoints, checkpoint_groups):
        if set(groups) != set(reference_groups):
            missing = sorted(set(reference_groups) - set(groups))
            extra = sorted(set(groups) - set(reference_groups))
            raise FusionError(
                f"The {model.label} has different weight files from the {reference.label}: "
                f"missing {missing}, unexpected {extra}"
            )
    for group, reference_infos in reference_groups.items():
        plan[group] = {}
        for model, groups in zip(checkpoints, checkpoint_groups):
            infos = groups[group]
            # A buffer the base saved but a checkpoint did not (e.g. `embeddings.position_ids`, which newer
            # transformers versions no longer write) is copied from the base, so it need not be in every checkpoint.
            missing = sorted(n for n in set(reference_infos) - set(infos) if reference_infos[n].is_float)
            extra = sorted(set(infos) - set(reference_infos))
            if missing or extra:
                raise FusionError(
                    f"The {model.label} has different tensor names in {group} from the {reference.label}: "
                    f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                    f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}"
                )
        for name, reference_info in reference_infos.items():
            row = [reference_info]
            for model, groups in zip(checkpoints, checkpoint_groups):
                info = groups[group].get(name)
                if info is None:  # a base-only buffer (see above): copied from the base
                    continue
                if info.shape != reference_info.shape:
                    raise FusionError(
                        f"The {model.label}: tensor {name!r} in {group} has shape {list(info.shape)}, "
                        f"but the {reference.label} has {list(reference_info.shape)}"
                    )
                if info.dtype != reference_info.dtype:
                    raise FusionError(
                        f"The {model.label}: tensor {name!r} in {group} has dtype {info.dtype}, "
                        f"but the {reference.label} has {reference_info.dtype}"
                    )
                row.append(info)
            plan[group][name] = row
    return plan
