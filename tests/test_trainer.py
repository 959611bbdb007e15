"""CoDiEmbTrainer on one process: per-task losses fall and are logged; bad input fails before training."""

from __future__ import annotations

import random

import pytest
from datasets import Dataset
from sentence_transformers.sentence_transformer.losses import CoSENTLoss
from tiny_models import make_tiny_model

from hf_codiemb import CoDiEmbTrainer, CoDiEmbTrainingArguments, TrainingDataError

WORDS = ["apple", "river", "engine", "garden", "violin", "planet", "market", "winter", "doctor", "camera", "ocean", "bridge"]


def sentence(rng: random.Random, n: int = 6) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def ir_dataset(n: int = 24, seed: int = 0) -> Dataset:
    rng = random.Random(seed)
    return Dataset.from_dict(
        {
            "query": [f"{WORDS[i % 12]} {sentence(rng, 2)}" for i in range(n)],
            "positives": [[f"{WORDS[i % 12]} {sentence(rng, 3)}"] for i in range(n)],
            "negatives": [[sentence(rng) for _ in range(2)] for _ in range(n)],
        }
    )


def sts_dataset(n: int = 32, seed: int = 1) -> Dataset:
    rng = random.Random(seed)
    s1 = [sentence(rng) for _ in range(n)]
    # Gold score = word overlap, so the task is learnable.
    s2, score = [], []
    for text in s1:
        words = text.split()
        keep = rng.randint(0, len(words))
        other = words[:keep] + [rng.choice(WORDS) for _ in range(len(words) - keep)]
        s2.append(" ".join(other))
        score.append(5.0 * keep / len(words))
    return Dataset.from_dict({"sentence1": s1, "sentence2": s2, "score": score})


def make_args(tmp_path, **overrides) -> CoDiEmbTrainingArguments:
    defaults = dict(  # noqa: C408 (training-argument keywords read best as keywords)
        output_dir=str(tmp_path / "run"), ir_batch_size=4, sts_batch_size=8, num_positives=1, num_negatives=2,
        num_train_epochs=1, learning_rate=2e-3, logging_steps=1, save_strategy="no", report_to=[], seed=0,
        use_cpu=True, disable_tqdm=True, warmup_steps=0,
    )
    defaults.update(overrides)
    return CoDiEmbTrainingArguments(**defaults)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    make_tiny_model(path)
    return path / "model"


def per_task_means(log_history: list[dict], key: str, first: bool) -> float:
    values = [entry[key] for entry in log_history if key in entry]
    half = max(1, len(values) // 4)
    chunk = values[:half] if first else values[-half:]
    return sum(chunk) / len(chunk)


def test_both_task_losses_decrease_and_are_logged_separately(tmp_path, tiny_model_dir):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    args = make_args(tmp_path, num_train_epochs=12)
    trainer = CoDiEmbTrainer(model=model, args=args, train_dataset={"toy_ir": ir_dataset(), "toy_sts": sts_dataset()})
    assert trainer.dataset_tasks == {"toy_ir": "ir", "toy_sts": "sts"}
    trainer.train()
    history = trainer.state.log_history
    steps = [entry for entry in history if "loss" in entry]
    # Every logged step is one task only (logging_steps=1): its total equals that task's loss.
    for entry in steps:
        task_keys = {k for k in entry if k.endswith("/loss")}
        assert len(task_keys) == 1
        assert entry["loss"] == pytest.approx(entry[task_keys.pop()], abs=2e-3)
    sts_parts = [e for e in steps if "toy_sts/loss" in e]
    for entry in sts_parts:
        # The reference's STS objective, each component logged: Pearson, PRO, rank-KL and the middle-layer InfoNCE.
        parts = entry["toy_sts/pearson"] + entry["toy_sts/pro"] + entry["toy_sts/rank_kl"] + entry["toy_sts/multi_layer"]
        assert parts == pytest.approx(entry["toy_sts/loss"], abs=2e-3)
    assert not any("toy_sts/multi_layer" in e for e in steps if "toy_ir/loss" in e)
    # 24 IR queries / 4 = 6 IR updates and 32 pairs / 8 = 4 STS updates per epoch, 12 epochs.
    assert len([e for e in steps if "toy_ir/loss" in e]) == 6 * 12
    assert len(sts_parts) == 4 * 12
    for key in ("toy_ir/loss", "toy_sts/loss"):
        assert per_task_means(history, key, first=False) < per_task_means(history, key, first=True), key


def test_log_averages_each_task_over_its_own_steps(tmp_path, tiny_model_dir):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    args = make_args(tmp_path, logging_steps=10, max_steps=10)
    trainer = CoDiEmbTrainer(model=model, args=args, train_dataset={"toy_ir": ir_dataset(), "toy_sts": sts_dataset()})
    trainer.train()
    final = [entry for entry in trainer.state.log_history if "toy_ir/loss" in entry]
    assert len(final) == 1
    entry = final[0]
    # The overall loss is the step-weighted mean of the two task means (not either one diluted by the other).
    n_ir = sum(1 for i in trainer.task_batch_sampler.schedule()[:10] if i == 0)
    n_sts = 10 - n_ir
    mixed = (n_ir * entry["toy_ir/loss"] + n_sts * entry["toy_sts/loss"]) / 10
    assert entry["loss"] == pytest.approx(mixed, abs=5e-3)


def test_ratio_and_gradient_accumulation_set_the_number_of_updates(tmp_path, tiny_model_dir):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    args = make_args(tmp_path, task_ratio="ir:1,sts:1", gradient_accumulation_steps=2)
    trainer = CoDiEmbTrainer(model=model, args=args, train_dataset={"toy_ir": ir_dataset(), "toy_sts": sts_dataset()})
    trainer.train()
    # 24/(4*2) = 3 IR blocks + 32/(8*2) = 2 STS blocks = 5 updates, split 1:1 -> round(2.5)=2 each... at least 1.
    counts = trainer.task_batch_sampler.updates_per_task()
    assert counts["ir"] == counts["sts"] == 2
    assert trainer.state.global_step == 4


def test_ratio_in_passes_trains_a_fraction_of_the_light_task_and_lands_on_the_card(tmp_path, tiny_model_dir):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    args = make_args(tmp_path, task_ratio="ir:1,sts:2", task_ratio_unit="passes")
    trainer = CoDiEmbTrainer(
        model=model, args=args, train_dataset={"toy_ir": ir_dataset(), "toy_sts": sts_dataset(n=64)}
    )
    trainer.train()
    # STS (the heavier weight) makes one pass: 64/8 = 8 updates; IR makes half a pass of its 24/4 = 6 batches.
    assert trainer.task_batch_sampler.updates_per_task() == {"ir": 3, "sts": 8}
    assert trainer.state.global_step == 11
    (tmp_path / "card").mkdir()
    card = trainer.write_model_card(tmp_path / "card").read_text()
    assert "Task ratio: ir 1.0, sts 2.0 (passes over each task's data per epoch)" in card


def test_ratio_in_passes_refuses_a_sampling_temperature(tmp_path):
    from hf_codiemb.errors import RecipeError

    with pytest.raises(RecipeError, match="sampling_temperature.*task_ratio_unit 'passes'"):
        make_args(tmp_path, task_ratio="ir:1,sts:2", task_ratio_unit="passes", sampling_temperature=2.0)
    with pytest.raises(RecipeError, match="task_ratio_unit.*'updates' or 'passes'"):
        make_args(tmp_path, task_ratio_unit="epochs")


@pytest.mark.parametrize(
    "datasets,overrides,loss,message",
    [
        ({"a": ir_dataset()}, {"dataset_tasks": {"a": "qa"}}, None, "unknown task 'qa'"),
        ({"odd": Dataset.from_dict({"text": ["x"] * 8})}, {}, None, r"'odd': cannot tell its task from its columns"),
        (
            {"s": Dataset.from_dict({"sentence1": ["a"] * 8, "sentence2": ["b"] * 8})},
            {"dataset_tasks": {"s": "sts"}},
            None,
            r"'s' \(sts\): missing column\(s\) \['score'\]",
        ),
        (
            {"s": Dataset.from_dict({"sentence1": ["a"] * 8, "sentence2": ["b"] * 8, "score": [1.0] * 7 + [float("nan")]})},
            {},
            None,
            r"'s' \(sts\), row 7, field 'score'",
        ),
        (
            {"q": Dataset.from_dict({"query": ["a", "b"], "positives": [["x"], []], "negatives": [["n"], ["n"]]})},
            {},
            None,
            r"'q' \(ir\), row 1, field 'positives': empty",
        ),
        (
            {"q": Dataset.from_dict({"query": ["a"], "positives": [["x"]]})},
            {},
            None,
            r"no 'negatives' column but num_negatives=2",
        ),
        ({"toy_ir": ir_dataset(), "toy_sts": sts_dataset()}, {"sts_batch_size": 64}, None, r"'toy_sts' \(sts\) has 32 examples"),
        ({"toy_ir": ir_dataset(), "toy_sts": sts_dataset()}, {}, {"toy_sts": "cosent"}, r"\['toy_ir'\] have no loss"),
    ],
    ids=["unknown-task", "no-task", "sts-without-scores", "nan-score", "ir-without-positives", "no-negatives",
         "batch-larger-than-dataset", "dataset-without-loss"],
)
def test_bad_input_fails_before_training_with_a_clear_error(tmp_path, tiny_model_dir, datasets, overrides, loss, message):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    if loss is not None:
        loss = {name: CoSENTLoss(model) for name in loss}
    with pytest.raises((TrainingDataError, ValueError), match=message):
        CoDiEmbTrainer(model=model, args=make_args(tmp_path, **overrides), train_dataset=datasets, loss=loss)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


class BatchRecordingTrainer(CoDiEmbTrainer):
    """Records, for every training batch, its dataset and the token ids of its first anchor text."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        anchor = "query_input_ids" if "query_input_ids" in inputs else "sentence1_input_ids"
        self.batches.append((inputs.get("dataset_name"), tuple(inputs[anchor][0].tolist())))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


@pytest.mark.parametrize("checkpoint_step", [7, 14], ids=["mid-epoch-1", "mid-epoch-2"])
def test_resuming_from_a_mid_epoch_checkpoint_replays_the_same_batches(tmp_path, tiny_model_dir, checkpoint_step):
    from sentence_transformers import SentenceTransformer

    datasets = {"toy_ir": ir_dataset(), "toy_sts": sts_dataset()}  # 6 IR + 4 STS batches = 10 steps per epoch
    args = make_args(tmp_path, num_train_epochs=2, save_strategy="steps", save_steps=7, save_only_model=False)
    full = BatchRecordingTrainer(model=SentenceTransformer(str(tiny_model_dir), device="cpu"), args=args,
                                 train_dataset=datasets)  # fmt: skip
    full.batches = []
    full.train()
    assert len(full.batches) == 20 and full.batches[:10] != full.batches[10:]  # epoch 2 is a new shuffle

    resumed = BatchRecordingTrainer(model=SentenceTransformer(str(tiny_model_dir), device="cpu"), args=args,
                                    train_dataset=datasets)  # fmt: skip
    resumed.batches = []
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / f"checkpoint-{checkpoint_step}"))
    assert resumed.batches == full.batches[checkpoint_step:]


def test_dataset_names_that_are_module_attributes_train(tmp_path, tiny_model_dir):
    """A dataset named after its file ``train.data`` is called ``train``; sentence-transformers puts dataset names
    into an ``nn.Sequential`` as module names, where ``train`` (or ``to``, ``a.b``) is refused."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    datasets = {"train": sts_dataset(), "to": ir_dataset(), "stsb.v2": sts_dataset(seed=3)}
    trainer = CoDiEmbTrainer(model=model, args=make_args(tmp_path, max_steps=3), train_dataset=datasets)
    trainer.train()
    assert trainer.state.global_step == 3
    assert set(trainer.loss) == {"train", "to", "stsb.v2"}
