"""The encoder to train or evaluate: its settings (:class:`ModelArguments`) and the one loader (:func:`load_model`:
pooling, dtype, max length, prompt-excluding pooling, LoRA adapters), with the card's base model named.

Model names are resolved by :mod:`hf_codiemb.model_names`; LoRA adapters are added, found and merged by
:mod:`hf_codiemb.lora`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer

from hf_codiemb.arguments import POOLING_MODES, EncoderArguments, ModelArguments
from hf_codiemb.errors import ModelLoadError, RecipeError

# load_lora_model, lora_plan and publish_adapter_base (and resolve_model_path) are re-exported for the modules that
# still import them from here (hf_codiemb.trainer, hf_codiemb.commands.train / evaluate / mine); their home is
# hf_codiemb.lora (and hf_codiemb.model_names).
from hf_codiemb.lora import add_lora
from hf_codiemb.model_card import fusion_lineage, use_codiemb_card_data
from hf_codiemb.model_names import BASE_MODEL_NOTES, infer_base_model_id, public_model_name, resolve_model_path

logger = logging.getLogger(__name__)

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_model(args: EncoderArguments, device: str | None = None) -> SentenceTransformer:
    """Load the encoder described by ``args``: pooling override, dtype, max length and, for
    :class:`~hf_codiemb.arguments.ModelArguments` with ``lora_r > 0``, new LoRA adapters.

    Raises:
        ModelLoadError: the model path or id cannot be loaded (see
            :func:`hf_codiemb.model_names.resolve_model_path`), or its weights
            cannot be read.
    """
    from safetensors import SafetensorError

    path = resolve_model_path(args.model_name_or_path)
    dtype = TORCH_DTYPES.get(args.torch_dtype)
    if dtype is None:
        raise RecipeError(f"must be one of {', '.join(TORCH_DTYPES)}, got {args.torch_dtype!r}", field="torch_dtype")
    try:
        model = SentenceTransformer(
            path, device=device, model_kwargs={"dtype": dtype}, trust_remote_code=args.trust_remote_code
        )
    except SafetensorError as error:
        raise ModelLoadError(f"Model {path}: its weights cannot be read, truncated or corrupt? ({error})") from None
    if args.max_seq_length:
        model.max_seq_length = args.max_seq_length
    if args.pooling:
        set_pooling(model, args.pooling)
    if args.pooling_include_prompt is not None:
        set_pooling_include_prompt(model, args.pooling_include_prompt)
    describe_base_model(model, args.model_name_or_path, path)
    if isinstance(args, ModelArguments) and args.lora_r > 0:  # EncoderArguments: no adapters
        add_lora(model, args)
    return model


def describe_base_model(model: SentenceTransformer, spec: str, path: str | Path) -> None:
    """Name the model ``spec`` loaded (from folder ``path``) in its card: Hub id, public name, fusion lineage."""
    card_data = use_codiemb_card_data(model)
    model_id = infer_base_model_id(spec)
    card_data.set_base_model_id(model_id)
    card_data.codiemb.update(
        base_model=public_model_name(spec),
        base_model_note=BASE_MODEL_NOTES.get(spec),
        fusion=fusion_lineage(path) if Path(path).is_dir() else None,
    )


def set_pooling(model: SentenceTransformer, pooling: str) -> None:
    """Switch the model's Pooling module to ``cls`` or ``mean`` pooling (a stated recipe choice)."""
    from sentence_transformers.sentence_transformer.modules import Pooling

    if pooling not in POOLING_MODES:
        raise RecipeError(f"must be one of {', '.join(POOLING_MODES)}, got {pooling!r}", field="pooling")
    for index, module in enumerate(model):
        if isinstance(module, Pooling):
            model[index] = Pooling(module.get_embedding_dimension(), pooling)
            return
    raise ModelLoadError("The model has no Pooling module to configure (pooling is set in the recipe)")


def set_pooling_include_prompt(model: SentenceTransformer, include_prompt: bool) -> None:
    """Whether the model's Pooling module pools the prompt tokens (``False``: instructions are left out)."""
    from sentence_transformers.sentence_transformer.modules import Pooling

    pooling_modules = [module for module in model if isinstance(module, Pooling)]
    if not pooling_modules:
        raise ModelLoadError("The model has no Pooling module to configure (pooling_include_prompt is set in the recipe)")
    for module in pooling_modules:
        module.include_prompt = include_prompt
