"""Separate token limits of IR queries and passages (`query_max_seq_length`, `passage_max_seq_length`)."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer

from hf_codiemb import CoDiEmbTrainer, CoDiEmbTrainingArguments
from hf_codiemb.collator import CoDiEmbDataCollator
from hf_codiemb.errors import RecipeError

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu", "nu", "xi", "omicron", "pi", "rho", "sigma", "tau"]


def text(n_words: int, offset: int) -> str:
    return " ".join(WORDS[(offset + i) % len(WORDS)] for i in range(n_words))


def ir_rows() -> list[dict]:
    """Four IR rows of varied lengths (queries 3-40 words, passages 5-60 words): some above every limit below."""
    return [
        {
            "query": text(3 + 12 * i, i),
            "positives": [text(5 + 18 * i, i + 1), text(60 - 10 * i, i + 2)],
            "negatives": [text(10 + 15 * i, i + 3), text(55 - 5 * i, i + 4)],
        }
        for i in range(4)
    ]


@pytest.fixture
def model(tiny_model_dir) -> SentenceTransformer:
    return SentenceTransformer(str(tiny_model_dir), device="cpu")  # max_seq_length 64


def collated(model: SentenceTransformer, rows: list[dict], **limits) -> tuple[dict, CoDiEmbDataCollator]:
    collator = CoDiEmbDataCollator(preprocess_fn=model.preprocess, num_positives=2, num_negatives=2, seed=3, **limits)
    return collator([dict(row) for row in rows]), collator


def expanded_columns(rows: list[dict]) -> dict[str, list[str]]:
    """The texts of each column of the batch, as the collator samples them (the same seed, a separate collator)."""
    sampler = CoDiEmbDataCollator(preprocess_fn=None, num_positives=2, num_negatives=2, seed=3)
    sampler._rng = sampler._next_batch_rng()
    expanded = [sampler.expand_ir_row(dict(row)) for row in rows]
    return {column: [row[column] for row in expanded] for column in expanded[0]}


def test_each_ir_column_obeys_its_limit(model):
    rows = ir_rows()
    batch, _ = collated(model, rows, query_max_length=8, passage_max_length=20)
    tokenizer = model.tokenizer
    for column, texts in expanded_columns(rows).items():
        limit = 8 if column == "query" else 20
        expected = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=limit)["input_ids"]]
        got = batch[f"{column}_attention_mask"].sum(dim=1).tolist()
        assert got == expected, column
        assert batch[f"{column}_input_ids"].shape[1] == max(expected) <= limit
    # the rows are long enough for every limit to bite somewhere
    assert batch["query_attention_mask"].sum(dim=1).max() == 8
    assert batch["negative_1_attention_mask"].sum(dim=1).max() == 20


def test_unset_limits_give_the_batch_of_before(model):
    rows = ir_rows()
    batch, _ = collated(model, rows)
    columns = expanded_columns(rows)
    assert sorted(key for key in batch if key.endswith("_input_ids")) == sorted(f"{c}_input_ids" for c in columns)
    for column, texts in columns.items():
        reference = model.preprocess(texts)  # the model's max_seq_length (64) for every column, as before
        for key in ("input_ids", "attention_mask"):
            assert torch.equal(batch[f"{column}_{key}"], reference[key]), (column, key)
    assert batch["positive_1_attention_mask"].sum(dim=1).max() == 64  # truncated at the model's limit


def test_sts_sentences_keep_the_model_limit(model):
    rows = [{"sentence1": text(70, i), "sentence2": text(4 + i, i), "score": float(i)} for i in range(3)]
    batch, _ = collated(model, rows, query_max_length=8, passage_max_length=20)
    for column in ("sentence1", "sentence2"):
        reference = model.preprocess([row[column] for row in rows])
        assert torch.equal(batch[f"{column}_input_ids"], reference["input_ids"])
    assert batch["sentence1_input_ids"].shape[1] == 64


def test_trainer_passes_the_limits_to_its_collator(model, tmp_path):
    records = [{"query": r["query"], "positives": r["positives"], "negatives": r["negatives"]} for r in ir_rows()]
    args = CoDiEmbTrainingArguments(
        output_dir=str(tmp_path), ir_batch_size=4, num_positives=2, num_negatives=2, report_to=[], use_cpu=True,
        query_max_seq_length=6, passage_max_seq_length=12, max_steps=1,
    )
    trainer = CoDiEmbTrainer(model=model, args=args, train_dataset={"ir": Dataset.from_list(records)})
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["query_attention_mask"].sum(dim=1).max() == 6
    assert batch["positive_0_attention_mask"].sum(dim=1).max() == 12
    assert batch["negative_0_attention_mask"].sum(dim=1).max() == 12


@pytest.mark.parametrize("name", ["query_max_seq_length", "passage_max_seq_length"])
def test_limit_above_the_model_limit_is_refused(model, tmp_path, name):
    args = CoDiEmbTrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, **{name: 65})
    records = [{"query": "q", "positives": ["p"], "negatives": ["n"]}] * 16
    with pytest.raises(RecipeError, match=rf"{name}.*is 65, above the model's max_seq_length 64"):
        CoDiEmbTrainer(model=model, args=args, train_dataset={"ir": Dataset.from_list(records)})


@pytest.mark.parametrize("value", [0, 2.5])
def test_limits_are_validated(tmp_path, value):
    with pytest.raises(RecipeError, match="query_max_seq_length.*must be"):
        CoDiEmbTrainingArguments(output_dir=str(tmp_path), report_to=[], query_max_seq_length=value)
