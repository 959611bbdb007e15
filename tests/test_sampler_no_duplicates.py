"""Duplicate-free IR blocks (`ir_no_duplicates`, sentence-transformers' `batch_sampler: no_duplicates`): no text of
two different rows in one optimizer update's global batch, over seeds, world sizes and gradient accumulation, with the
task-balanced sampler's guarantees kept (one dataset per update on every rank, full equal batches, exact len())."""

from __future__ import annotations

import random

import pytest
from accelerate.data_loader import BatchSamplerShard
from datasets import Dataset
from torch.utils.data import ConcatDataset

from hf_codiemb import CoDiEmbTrainer, CoDiEmbTrainingArguments, TrainingDataError
from hf_codiemb.sampler import DatasetSpec, RowTextHashes, TaskBalancedBatchSampler, row_text_hashes


def ir_rows(n: int, pool: int, seed: int, negatives: int = 3, positives: int = 2, min_negatives: int = 0) -> dict[str, list]:
    """IR rows whose texts are drawn from a small pool of passages, so that many rows share a text."""
    rng = random.Random(seed)
    return {
        "query": [f"query {i}" if rng.random() < 0.9 else f"passage {rng.randrange(pool)}" for i in range(n)],
        "positives": [[f"passage {rng.randrange(pool)}" for _ in range(rng.randint(1, positives))] for _ in range(n)],
        "negatives": [[f"passage {rng.randrange(pool)}" for _ in range(rng.randint(min_negatives, negatives))] for _ in range(n)],
    }


def row_texts(rows: dict[str, list], index: int, with_negatives: bool = True) -> set[str]:
    texts = {rows["query"][index], *rows["positives"][index]}
    return texts | set(rows["negatives"][index]) if with_negatives else texts


def make_sampler(rows, sts_size=90, ir_batch=3, sts_batch=4, world_size=1, accumulation=1, seed=0, weights=None,
                 no_duplicates=True):  # fmt: skip
    n = len(rows["query"])
    specs = [DatasetSpec("ir_set", "ir", n, ir_batch), DatasetSpec("sts_set", "sts", sts_size, sts_batch)]
    hashes = [row_text_hashes(Dataset.from_dict(rows), ["query", "positives", "negatives"]), None]
    return TaskBalancedBatchSampler(
        ConcatDataset([list(range(n)), list(range(sts_size))]), specs, world_size=world_size,
        gradient_accumulation_steps=accumulation, dataset_weights=weights, seed=seed,
        text_hashes=hashes if no_duplicates else None,
    )  # fmt: skip


def updates(sampler: TaskBalancedBatchSampler, world_size: int, accumulation: int) -> list[list[list[int]]]:
    """The batches of every optimizer update, dealt out to the ranks as accelerate does: update k = the k-th group of
    ``accumulation`` batches of every rank."""
    shards = [
        list(BatchSamplerShard(sampler, num_processes=world_size, process_index=rank, even_batches=False))
        for rank in range(world_size)
    ]
    assert all(len(shard) == len(sampler) // world_size for shard in shards)
    return [
        [shards[rank][k * accumulation + a] for rank in range(world_size) for a in range(accumulation)]
        for k in range(len(shards[0]) // accumulation)
    ]


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("world_size", [1, 2, 4])
@pytest.mark.parametrize("accumulation", [1, 2, 3])
def test_no_text_repeats_within_a_global_ir_batch(seed, world_size, accumulation):
    rows = ir_rows(400, pool=900, seed=seed)
    sampler = make_sampler(rows, world_size=world_size, accumulation=accumulation, seed=seed)
    per_block = world_size * accumulation
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)  # exact, every epoch
        ir_updates = 0
        for update in updates(sampler, world_size, accumulation):
            owners = {index >= 400 for batch in update for index in batch}
            assert len(owners) == 1  # every rank and micro-batch of the update on one dataset
            sizes = {len(batch) for batch in update}
            assert sizes == ({4} if owners == {True} else {3})  # full, equal batches on every rank
            if owners == {True}:
                continue
            ir_updates += 1
            seen: dict[str, int] = {}
            for row in (index for batch in update for index in batch):
                for text in row_texts(rows, row):
                    assert seen.setdefault(text, row) == row, f"{text!r} in rows {seen[text]} and {row}"
        # The number of IR updates is the one without the option: 400 // (3 x world x accumulation).
        assert ir_updates == 400 // (3 * per_block)
    # The data does repeat texts across rows: the test is not vacuous.
    stats = sampler.duplicate_free_stats["ir_set"]
    assert stats["rows_set_aside"] > 0


def test_len_is_exact_and_ir_updates_unchanged_with_a_task_ratio():
    rows = ir_rows(300, pool=700, seed=3)
    plain = make_sampler(rows, no_duplicates=False, weights={"ir_set": 3.0, "sts_set": 1.0}, world_size=2)
    deduplicated = make_sampler(rows, weights={"ir_set": 3.0, "sts_set": 1.0}, world_size=2)
    assert len(deduplicated) == len(plain)
    assert deduplicated.updates_per_task() == plain.updates_per_task()
    for epoch in range(3):
        deduplicated.set_epoch(epoch)
        assert len(list(deduplicated)) == len(deduplicated)


def test_epochs_are_reproducible_and_resume_gives_the_same_stream():
    rows = ir_rows(300, pool=600, seed=5)
    first = make_sampler(rows, seed=11, world_size=2, accumulation=2)
    streams = []
    for epoch in range(3):
        first.set_epoch(epoch)
        streams.append(list(first))
    assert streams[0] != streams[1]
    # A resumed run builds a new sampler and sets the epoch it resumes in: the same batches, in the same order.
    resumed = make_sampler(rows, seed=11, world_size=2, accumulation=2)
    resumed.set_epoch(2)
    assert list(resumed) == streams[2]
    resumed.set_epoch(1)
    assert list(resumed) == streams[1]


def test_without_duplicates_in_the_data_the_blocks_are_the_default_samplers():
    rows = {
        "query": [f"q{i}" for i in range(120)],
        "positives": [[f"p{i}a", f"p{i}b"] for i in range(120)],
        "negatives": [[f"n{i}"] for i in range(120)],
    }
    for world_size, accumulation in ((1, 1), (2, 2)):
        plain = make_sampler(rows, no_duplicates=False, world_size=world_size, accumulation=accumulation, seed=4)
        deduplicated = make_sampler(rows, world_size=world_size, accumulation=accumulation, seed=4)
        assert list(deduplicated) == list(plain)
        assert deduplicated.duplicate_free_stats["ir_set"]["rows_set_aside"] == 0


def test_a_set_aside_row_waits_for_a_later_block_and_every_positive_and_negative_counts():
    # Row 1's second positive is row 0's only negative: they may never share a block, although the collator might
    # sample row 1's other positive at a given step.
    rows = {
        "query": ["q0", "q1", "q2", "q3"],
        "positives": [["a"], ["b", "shared"], ["c"], ["d"]],
        "negatives": [["shared"], ["x"], ["y"], ["z"]],
    }
    sampler = make_sampler(rows, sts_size=8, ir_batch=2, sts_batch=4)
    for epoch in range(20):
        sampler.set_epoch(epoch)
        for batch in sampler:
            if all(i < 4 for i in batch):
                assert set(batch) != {0, 1}


def test_a_dataset_that_cannot_fill_a_duplicate_free_block_is_refused():
    rows = {"query": [f"q{i}" for i in range(40)], "positives": [["the same passage"]] * 40, "negatives": [[]] * 40}
    with pytest.raises(ValueError, match=r"'ir_set' \(ir\) cannot fill a duplicate-free block of 3 rows.*only 1"):
        make_sampler(rows).schedule()


def test_row_text_hashes_follow_the_datasets_row_order_and_skip_missing_texts():
    rows = ir_rows(50, pool=30, seed=2)
    dataset = Dataset.from_dict(rows)
    view = dataset.shuffle(seed=3).select(range(10, 40))
    hashes = row_text_hashes(view, ["query", "positives", "negatives"], chunk_size=7)
    expected = RowTextHashes.from_texts(
        [[view[i]["query"], *view[i]["positives"], *view[i]["negatives"]] for i in range(len(view))]
    )
    assert len(hashes) == 30
    assert all(sorted(hashes.row(i)) == sorted(expected.row(i)) for i in range(30))
    with_missing = Dataset.from_dict({"query": ["a", "b"], "positives": [["p"], None]})
    missing = row_text_hashes(with_missing, ["query", "positives"])
    assert [len(missing.row(0)), len(missing.row(1))] == [2, 1]


# ------------------------------------------------------------------------------------------------------- trainer


def trainer_args(tmp_path, **overrides) -> CoDiEmbTrainingArguments:
    return CoDiEmbTrainingArguments(
        output_dir=str(tmp_path / "run"), ir_batch_size=4, sts_batch_size=4, num_positives=1, num_negatives=2,
        report_to=[], use_cpu=True, save_strategy="no", **overrides,
    )  # fmt: skip


@pytest.mark.parametrize("option", [{"ir_no_duplicates": True}, {"batch_sampler": "no_duplicates"},
                                    {"batch_sampler": "no_duplicates_hashed"}])  # fmt: skip
def test_the_option_reaches_the_sampler_through_the_trainer(tmp_path, tiny_model_dir, option):
    from sentence_transformers import SentenceTransformer

    rows = ir_rows(64, pool=90, seed=0, negatives=2, min_negatives=1)
    sts = {"sentence1": [f"s{i}" for i in range(16)], "sentence2": [f"t{i}" for i in range(16)], "score": [1.0] * 16}
    args = trainer_args(tmp_path, **option)
    assert args.ir_no_duplicates is True and getattr(args.batch_sampler, "value", None) == "batch_sampler"
    trainer = CoDiEmbTrainer(
        model=SentenceTransformer(str(tiny_model_dir), device="cpu"), args=args,
        train_dataset={"ir": Dataset.from_dict(rows), "sts": Dataset.from_dict(sts)},
    )  # fmt: skip
    sampler = trainer.task_batch_sampler
    assert sampler.text_hashes[0] is not None and sampler.text_hashes[1] is None
    loader = trainer.get_train_dataloader()
    assert loader.batch_sampler is sampler or getattr(loader.batch_sampler, "batch_sampler", None) is sampler
    for batch in sampler:
        if batch[0] < 64:
            texts = [text for row in batch for text in row_texts(rows, row)]
            assert len(texts) == len(set(texts))
    assert sampler.duplicate_free_stats["ir"]["rows_set_aside"] > 0


def test_the_option_is_off_by_default_and_negatives_of_a_dataset_without_them_do_not_count(tmp_path, tiny_model_dir):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    rows = {"query": [f"q{i}" for i in range(16)], "positives": [[f"p{i}"] for i in range(16)],
            "negatives": [["shared negative"]] * 16}  # fmt: skip
    default = CoDiEmbTrainer(model=model, args=trainer_args(tmp_path), train_dataset={"ir": Dataset.from_dict(rows)})
    assert default.task_batch_sampler.text_hashes == [None]
    # With 0 hard negatives for the dataset, the shared negative is never in a batch: it does not constrain them.
    args = trainer_args(tmp_path, ir_no_duplicates=True, dataset_num_negatives={"ir": 0})
    trainer = CoDiEmbTrainer(model=model, args=args, train_dataset={"ir": Dataset.from_dict(rows)})
    assert trainer.task_batch_sampler.duplicate_free_stats["ir"]["rows_set_aside"] == 0
    # Trained with its negatives, no two rows fit in one batch: refused before training, naming the dataset.
    with pytest.raises(TrainingDataError, match="'ir' .ir. cannot fill a duplicate-free block of 4 rows"):
        CoDiEmbTrainer(model=model, args=trainer_args(tmp_path, ir_no_duplicates=True),
                       train_dataset={"ir": Dataset.from_dict(rows)})  # fmt: skip


def test_other_batch_samplers_are_still_refused(tmp_path):
    from hf_codiemb.errors import RecipeError

    with pytest.raises(RecipeError, match="batch_sampler.*is not used by CoDiEmb.*no_duplicates"):
        trainer_args(tmp_path, batch_sampler="group_by_label")
