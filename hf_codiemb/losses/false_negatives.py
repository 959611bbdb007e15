"""[ours] Margin masking of probable false negatives in the IR InfoNCE (GISTEmbed's filter), and its guide model.

A candidate of a query's softmax (an in-batch passage, a passage gathered from another device, a hard negative) that
scores above the query's positive minus a margin is probably a duplicate or a near-duplicate of that positive, i.e.
a false negative: it is removed from the softmax. The judge of "scores above" is the trained model itself or a
frozen guide model (sentence-transformers' ``GISTEmbedLoss``, arXiv 2402.16829). The reference CoDiEmb code masks
nothing; :class:`~hf_codiemb.losses.MultiPositiveInfoNCELoss` masks only with ``margin`` set.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any, Literal

import torch
from sentence_transformers.util import batch_to_device
from torch import Tensor, nn

MarginStrategy = Literal["absolute", "relative"]
MARGIN_STRATEGIES: tuple[str, ...] = ("absolute", "relative")

GISTEMBED_CITATION = """
@misc{solatorio2024gistembed,
    title={GISTEmbed: Guided In-sample Selection of Training Negatives for Text Embedding Fine-tuning},
    author={Aivin V. Solatorio},
    year={2024},
    eprint={2402.16829},
    archivePrefix={arXiv},
    primaryClass={cs.LG}
}
"""


def false_negative_mask(target: Tensor, candidates: Tensor, margin: float, margin_strategy: MarginStrategy) -> Tensor:
    """Which candidates to remove: those whose judge similarity exceeds the positive's threshold.

    Args:
        target: ``(B, P)`` judge similarity of each query with its ``p``-th positive.
        candidates: ``(B, P, C)`` judge similarity of each query with the candidates of slot ``p`` (``-inf`` for
            non-candidates, which are never selected).
        margin: ``m >= 0``.
        margin_strategy: ``"absolute"``: ``s_c > s_p - m``; ``"relative"``: ``s_c > s_p - |s_p| * m`` (``s_p * (1 - m)``
            for a positive ``s_p``), as GISTEmbed.

    Returns:
        A boolean ``(B, P, C)`` mask, True where the candidate is removed.
    """
    if margin_strategy == "absolute":
        threshold = target - margin
    elif margin_strategy == "relative":
        threshold = target - target.abs() * margin
    else:
        raise ValueError(f"margin_strategy must be one of {MARGIN_STRATEGIES}, got {margin_strategy!r}.")
    return candidates > threshold.unsqueeze(2)


# ------------------------------------------------------------------------------------------------------ guide model
@functools.lru_cache(maxsize=4)
def load_guide(name_or_path: str) -> nn.Module:
    """A guide SentenceTransformer by Hub id or folder, loaded once per process (shared by the IR losses of a run)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(name_or_path)


def guide_name(guide: nn.Module | None) -> str | None:
    """A short name of a guide for ``get_config_dict`` (its Hub id / folder when known, else its class name)."""
    if guide is None:
        return None
    name = getattr(guide, "_codiemb_guide_name", None)
    if name:
        return name
    card = getattr(guide, "model_card_data", None)
    for value in (getattr(card, "base_model", None), getattr(card, "model_id", None)):
        if value:
            return str(value)
    return type(guide).__name__


def prepare_guide(guide: nn.Module | str, model: nn.Module) -> tuple[nn.Module, bool]:
    """The frozen guide (loaded when a name or path is given) and whether it needs its own tokenization.

    The guide is put in eval mode with ``requires_grad=False`` (so the optimizer never holds its weights). Its inputs
    are the model's token ids when both share a vocabulary and the guide accepts the model's lengths; otherwise the
    texts are decoded from the model's ids and tokenized again by the guide (as sentence-transformers'
    ``GISTEmbedLoss``).
    """
    name = guide if isinstance(guide, str) else None
    if name is not None:
        guide = load_guide(name)
        guide._codiemb_guide_name = name
    if not isinstance(guide, nn.Module):
        raise TypeError(f"guide must be a SentenceTransformer (or a model name or path), got {type(guide).__name__}")
    guide.requires_grad_(False)
    guide.eval()
    model_tokenizer, guide_tokenizer = getattr(model, "tokenizer", None), getattr(guide, "tokenizer", None)
    if model_tokenizer is None or guide_tokenizer is None:
        return guide, False
    retokenize = model_tokenizer.get_vocab() != guide_tokenizer.get_vocab() or getattr(
        guide, "max_seq_length", float("inf")
    ) < getattr(model, "max_seq_length", 0)
    return guide, retokenize


def _rows(features: dict[str, Any], begin: int, end: int, num_rows: int) -> dict[str, Any]:
    """Rows ``begin:end`` of a tokenized batch (tensors with ``num_rows`` rows are sliced, the rest kept)."""
    return {
        key: value[begin:end] if isinstance(value, Tensor) and value.dim() > 0 and value.size(0) == num_rows else value
        for key, value in features.items()
    }


@torch.no_grad()
def embed_with_guide(
    guide: nn.Module,
    model: nn.Module,
    sentence_features: Iterable[dict[str, Any]],
    retokenize: bool,
    mini_batch_size: int | None = None,
) -> list[Tensor]:
    """The guide's embedding of every column of a batch (no gradient), ``mini_batch_size`` rows at a time if set.

    The guide gets shallow copies of the features (modules write their outputs into the dict they are given), or,
    with ``retokenize``, the texts decoded from the model's token ids, tokenized by the guide.
    """
    columns = []
    for features in sentence_features:
        input_ids = features.get("input_ids")
        if input_ids is None:  # not a tokenized text batch (e.g. a test encoder): give the guide the same inputs
            num_rows, texts = next(v.size(0) for v in features.values() if isinstance(v, Tensor)), None
        elif retokenize:
            if "cu_seq_lens_q" in features:
                raise ValueError("A guide with its own tokenizer does not support packed (flattened) batches.")
            texts = model.tokenizer.batch_decode(input_ids, skip_special_tokens=True)
            num_rows = len(texts)
        else:
            num_rows, texts = input_ids.size(0), None
        step = mini_batch_size or max(num_rows, 1)
        parts = []
        for begin in range(0, num_rows, step):
            end = min(begin + step, num_rows)
            if texts is not None:
                inputs = batch_to_device(guide.preprocess(texts[begin:end]), guide.device)
            else:
                inputs = _rows(dict(features), begin, end, num_rows)
            parts.append(guide(inputs)["sentence_embedding"])
        columns.append(torch.cat(parts) if len(parts) > 1 else parts[0])
    return columns
