"""What every converter shares: the error it raises, the sentences a conversion is checked on, and writing a
converted ``BertModel`` out as a sentence-transformers folder.

torch, transformers and sentence-transformers are imported inside the functions, so ``codiemb prepare-models
--help`` stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["VERIFY_SENTENCES", "PrepareModelError", "deterministic_pooler", "save_sentence_transformer"]

#: Sentences used by the verification steps (English, Chinese, mixed; different lengths so padding is exercised).
VERIFY_SENTENCES: tuple[str, ...] = (
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch.",
    "一个男人在弹吉他。",
    "How much protein should a female eat per day?",
    "ok",
)


class PrepareModelError(RuntimeError):
    """A download, conversion or verification step failed."""


def deterministic_pooler(model: torch.nn.Module) -> None:
    """Give BERT's (unused) pooler identity weights so the saved folder is deterministic and loads cleanly."""
    import torch

    pooler = getattr(model, "pooler", None)
    if pooler is not None:
        with torch.no_grad():
            pooler.dense.weight.copy_(torch.eye(pooler.dense.weight.shape[0]))
            pooler.dense.bias.zero_()


def save_sentence_transformer(
    hf_dir: Path,
    out_dir: Path,
    *,
    pooling: str,
    normalize: bool,
    max_seq_length: int,
    prompts: dict[str, str] | None = None,
) -> None:
    """Wrap a saved Hugging Face encoder folder into a sentence-transformers folder at ``out_dir``."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    transformer = Transformer(str(hf_dir), max_seq_length=max_seq_length)
    modules: list[torch.nn.Module] = [transformer, Pooling(transformer.get_embedding_dimension(), pooling)]
    if normalize:
        modules.append(Normalize())
    model = SentenceTransformer(modules=modules, prompts=prompts, similarity_fn_name="cosine", device="cpu")
    model.save(str(out_dir))
