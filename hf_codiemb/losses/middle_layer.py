"""The reference's auxiliary middle-layer InfoNCE of STS steps ("multi_layer_loss"): embeddings and the loss."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from sentence_transformers.sentence_transformer.model import SentenceTransformer
from sentence_transformers.util import cos_sim
from torch import Tensor, nn


def _sentence_transformer(model: nn.Module) -> nn.Module:
    """The SentenceTransformer inside a DDP/DeepSpeed wrapper (``.module``), or ``model`` itself.

    Unwrapped by type, not by attribute: ``DeepSpeedEngine`` forwards unknown attributes to the model it wraps, so it
    "has" every attribute of a SentenceTransformer but not its indexing (``model[0]``).
    """
    while not isinstance(model, SentenceTransformer) and isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    return model


def embed_with_layer(model: nn.Module, features: dict[str, Any], layer_index: int | None = None) -> tuple[Tensor, Tensor]:
    """The final sentence embedding of a column and the embedding of one hidden layer, from ONE forward pass.

    The transformer is run with ``output_hidden_states`` switched on for this call only (as sentence-transformers'
    ``AdaptiveLayerLoss`` does), so its output holds ``all_layer_embeddings`` (index 0 = the embedding layer,
    index ``n - 1`` = the last layer). The chosen layer's token embeddings then go through the model's own modules
    after the transformer (Pooling, with its ``include_prompt`` setting and the batch's ``prompt_length``; Dense;
    Normalize), so the layer embedding is pooled exactly like the final one: mean pooling for the e5/MiniCPM-style
    encoders, the CLS token for CLS-pooled ones (the reference's ``pooling()`` of that layer does the same).

    Args:
        model: A SentenceTransformer whose first module is a ``Transformer`` (possibly wrapped by DDP; LoRA adapters
            through peft work too).
        features: One tokenized column (``input_ids``, ``attention_mask``, optional ``prompt_length``).
        layer_index: Index into the hidden states; ``None`` = ``n // 2`` with ``n`` the number of hidden states
            (the reference's choice, ``outputs.hidden_states[n // 2]``).

    Returns:
        ``(final_embedding, layer_embedding)``, each ``(B, D)``.
    """
    st_model = _sentence_transformer(model)
    transformer = st_model[0]
    config = transformer.auto_model.config
    original = config.output_hidden_states
    config.output_hidden_states = True
    try:
        output = model(dict(features))
    finally:
        config.output_hidden_states = original
    hidden_states = output.get("all_layer_embeddings")
    if hidden_states is None:
        raise ValueError(
            f"The model's first module ({type(transformer).__name__}) returned no hidden states "
            "(all_layer_embeddings): the middle-layer loss needs a transformers encoder."
        )
    index = len(hidden_states) // 2 if layer_index is None else layer_index
    if not -len(hidden_states) <= index < len(hidden_states):
        raise ValueError(
            f"multi_layer_index={layer_index} is out of range: the model has {len(hidden_states)} hidden states "
            "(index 0 = embedding layer)."
        )
    layer_features = {
        key: value for key, value in output.items() if key not in ("sentence_embedding", "all_layer_embeddings")
    }
    layer_features["token_embeddings"] = hidden_states[index]
    for module in list(st_model.children())[1:]:
        layer_features = module(layer_features)
    return output["sentence_embedding"], layer_features["sentence_embedding"]


def middle_layer_info_nce(
    embeddings_a: Tensor,
    embeddings_b: Tensor,
    gold: Tensor,
    threshold: float = 1.0,
    temperature: float = 0.02,
    similarity_fct: Callable[[Tensor, Tensor], Tensor] = cos_sim,
) -> Tensor:
    """In-batch InfoNCE from each sentence1 to its sentence2, over the pairs with ``gold >= threshold``.

    This is the reference's ``multi_layer_loss`` term (``ContrastiveLoss`` with ``task_type="sts"``), computed on
    middle-layer embeddings of an STS batch of ``B`` pairs: logits ``s(a_i, b_j) / temperature`` for all ``B x B``
    combinations; for every kept row ``i`` the loss is ``-log softmax_j(logits_i)[i]`` (every sentence2 of the
    batch is a candidate, kept or not); the result is the mean over kept rows, and 0 (with a zero gradient) when no
    row is kept.

    Args:
        embeddings_a: ``(B, D)`` embeddings of the first sentences.
        embeddings_b: ``(B, D)`` embeddings of the second sentences.
        gold: ``(B,)`` gold similarity scores, on the scale of the data (the reference's threshold 1.0 is meant for
            0/1 labels and 0-5 scores alike).
        threshold: Pairs with a gold score ``>= threshold`` are rows of the loss.
        temperature: Temperature of the softmax (reference: the IR temperature, 0.02).
        similarity_fct: Similarity MATRIX function (reference: dot product of normalised embeddings = cosine).

    Returns:
        Scalar loss tensor.
    """
    logits = similarity_fct(embeddings_a, embeddings_b) / temperature
    keep = gold.to(logits.device) >= threshold
    targets = torch.arange(logits.size(0), device=logits.device)
    # The mean over the kept rows, written without indexing by ``keep`` (no host sync); 0 when no row is kept.
    rows = F.cross_entropy(logits, targets, reduction="none")
    return torch.where(keep, rows, torch.zeros_like(rows)).sum() / keep.sum().clamp(min=1)
