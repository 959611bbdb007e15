"""CachedMultiPositiveInfoNCELoss (GradCache) has the loss value and parameter gradients of MultiPositiveInfoNCELoss.

Float64 throughout. The cross-device case (2 gloo ranks) is in tests/test_distributed_infonce.py.
"""

from __future__ import annotations

import random

import pytest
import torch
from tiny_models import make_tiny_model
from torch import nn

from hf_codiemb import CoDiEmbTrainer, CoDiEmbTrainingArguments
from hf_codiemb.errors import RecipeError
from hf_codiemb.losses import CachedMultiPositiveInfoNCELoss, MultiPositiveInfoNCELoss, multi_positive_info_nce

DIM_IN, HIDDEN, DIM_OUT = 5, 8, 4
WORDS = ["apple", "river", "engine", "garden", "violin", "planet", "market", "winter", "doctor", "camera", "ocean"]


class MLPEncoder(nn.Module):
    """A float64 two-layer encoder over ``{"x": (B, DIM_IN)}`` features, with optional dropout."""

    def __init__(self, dropout: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(
            nn.Linear(DIM_IN, HIDDEN), nn.Tanh(), nn.Dropout(dropout), nn.Linear(HIDDEN, DIM_OUT)
        ).double()

    def forward(self, features: dict) -> dict:
        return {"sentence_embedding": self.net(features["x"])}


def make_columns(batch: int, num_pos: int, num_neg: int, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        {"x": torch.randn(batch, DIM_IN, dtype=torch.float64, generator=generator)}
        for _ in range(1 + num_pos + num_neg)
    ]


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameter gradients (parameters the loss does not reach, e.g. BERT's unused pooler, are left out)."""
    return {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}


def assert_same(loss_a: torch.Tensor, grads_a: dict, loss_b: torch.Tensor, grads_b: dict, atol: float = 1e-9) -> None:
    torch.testing.assert_close(loss_a.detach(), loss_b.detach(), atol=atol, rtol=0)
    assert grads_a.keys() == grads_b.keys()
    for name, grad in grads_a.items():
        torch.testing.assert_close(grad, grads_b[name], atol=atol, rtol=0, msg=name)


@pytest.mark.parametrize("mini_batch_size", [2, 4, 8])  # divides the batch of 6, does not, larger than the batch
@pytest.mark.parametrize("mode", ["slot", "all"])
@pytest.mark.parametrize("num_neg", [0, 2])
@pytest.mark.parametrize("num_pos", [1, 2])
def test_same_loss_and_gradients_as_uncached(num_pos, num_neg, mode, mini_batch_size):
    columns = make_columns(6, num_pos, num_neg, seed=10 * num_pos + num_neg)
    kwargs = {"num_positives": num_pos, "temperature": 0.05, "in_batch_positives": mode}

    model = MLPEncoder()
    uncached = MultiPositiveInfoNCELoss(model, **kwargs)(columns, None)
    uncached.backward()
    expected = grads(model)

    model = MLPEncoder()
    loss_fct = CachedMultiPositiveInfoNCELoss(model, mini_batch_size=mini_batch_size, **kwargs)
    cached = loss_fct(columns, None)
    # GradCache defers the parameter gradients to the backward pass of the returned loss.
    assert all(param.grad is None for param in model.parameters())
    cached.backward()
    assert_same(cached, grads(model), uncached, expected)
    assert any(grad.abs().max() > 1e-3 for grad in expected.values())


@pytest.mark.parametrize("mode", ["slot", "all"])
@pytest.mark.parametrize("num_neg", [0, 3])
def test_same_without_in_batch_negatives(mode, num_neg):
    columns = make_columns(5, 2, num_neg, seed=3)
    kwargs = {"num_positives": 2, "temperature": 0.1, "in_batch_negatives": False, "in_batch_positives": mode}
    model = MLPEncoder()
    uncached = MultiPositiveInfoNCELoss(model, **kwargs)(columns, None)
    uncached.backward()
    expected = grads(model)
    model = MLPEncoder()
    cached = CachedMultiPositiveInfoNCELoss(model, mini_batch_size=2, **kwargs)(columns, None)
    cached.backward()
    assert_same(cached, grads(model), uncached, expected)


def test_dropout_replayed_identically():
    """With dropout on, the gradients are those of the loss on the embeddings drawn in step (1).

    Independent reference: the same encoder run with a graph in the same order (column by column, mini-batch by
    mini-batch) from the same seed draws the same dropout masks; the functional loss on those embeddings is then
    back-propagated directly. A replay that drew new masks would give other gradients (checked: another seed does).
    """
    num_pos, num_neg, batch, mini = 2, 2, 6, 4
    columns = make_columns(batch, num_pos, num_neg, seed=7)
    ranges = [(0, 4), (4, 6)]

    def reference(seed: int) -> tuple[torch.Tensor, dict]:
        model = MLPEncoder(dropout=0.3).train()
        torch.manual_seed(seed)
        embeddings = [
            torch.cat([model({"x": column["x"][begin:end]})["sentence_embedding"] for begin, end in ranges])
            for column in columns
        ]
        loss = multi_positive_info_nce(
            embeddings[0],
            torch.stack(embeddings[1 : 1 + num_pos], dim=1),
            torch.stack(embeddings[1 + num_pos :], dim=1),
            temperature=0.05,
        )
        loss.backward()
        return loss, grads(model)

    model = MLPEncoder(dropout=0.3).train()
    loss_fct = CachedMultiPositiveInfoNCELoss(model, num_positives=num_pos, temperature=0.05, mini_batch_size=mini)
    torch.manual_seed(123)
    cached = loss_fct(columns, None)
    torch.manual_seed(999)  # the RNG moves on before backward; the replay must not depend on it
    cached.backward()
    ref_loss, ref_grads = reference(123)
    assert_same(cached, grads(model), ref_loss, ref_grads)

    other_loss, other_grads = reference(124)
    assert abs(other_loss.item() - ref_loss.item()) > 1e-3  # dropout is really on
    assert max((other_grads[k] - ref_grads[k]).abs().max().item() for k in ref_grads) > 1e-3


def test_tiny_bert_with_padding_same_as_uncached(tmp_path):
    """A real SentenceTransformer (tokenised texts of different lengths: mini-batches trim their padding)."""
    from sentence_transformers import SentenceTransformer

    make_tiny_model(tmp_path)
    rng = random.Random(0)
    texts = [[" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 9))) for _ in range(5)] for _ in range(5)]
    for mode in ("slot", "all"):
        results = []
        for cached in (False, True):
            model = SentenceTransformer(str(tmp_path / "model"), device="cpu").double().eval()  # no dropout
            features = [model.preprocess(column) for column in texts]  # query, 2 positives, 2 negatives
            kwargs = {"num_positives": 2, "temperature": 0.05, "in_batch_positives": mode}
            loss_fct = (
                CachedMultiPositiveInfoNCELoss(model, mini_batch_size=2, **kwargs)
                if cached
                else MultiPositiveInfoNCELoss(model, **kwargs)
            )
            loss = loss_fct(features, None)
            loss.backward()
            results.append((loss, grads(model)))
        assert_same(*results[0], *results[1], atol=1e-8)


def test_evaluation_without_gradients():
    columns = make_columns(6, 2, 1)
    model = MLPEncoder()
    expected = MultiPositiveInfoNCELoss(model, num_positives=2)(columns, None)
    with torch.no_grad():
        got = CachedMultiPositiveInfoNCELoss(model, num_positives=2, mini_batch_size=4)(columns, None)
    torch.testing.assert_close(got, expected.detach(), atol=1e-10, rtol=0)


def test_config_and_errors():
    model = MLPEncoder()
    loss_fct = CachedMultiPositiveInfoNCELoss(model, num_positives=2, mini_batch_size=16, in_batch_positives="all")
    config = loss_fct.get_config_dict()
    assert config["mini_batch_size"] == 16 and config["in_batch_positives"] == "all" and config["num_positives"] == 2
    assert "2101.06983" in loss_fct.citation and "2508.11442" in loss_fct.citation
    loss_fct.temperature = 0.5  # delegated to the wrapped uncached loss, which computes nothing itself
    assert loss_fct.loss.temperature == 0.5 and loss_fct.temperature == 0.5
    with pytest.raises(ValueError, match="mini_batch_size must be an integer >= 1, got 0"):
        CachedMultiPositiveInfoNCELoss(model, mini_batch_size=0)
    with pytest.raises(ValueError, match="in_batch_positives must be one of"):
        CachedMultiPositiveInfoNCELoss(model, in_batch_positives="every")
    with pytest.raises(ValueError, match="expects a query column and 2 positive columns"):
        CachedMultiPositiveInfoNCELoss(model, num_positives=2)(make_columns(3, 1, 0), None)


# ------------------------------------------------------------------------------------------- recipe switch
def test_ir_mini_batch_size_is_validated(tmp_path):
    with pytest.raises(RecipeError, match="ir_mini_batch_size.*must be >= 1, got 0"):
        CoDiEmbTrainingArguments(output_dir=str(tmp_path), ir_mini_batch_size=0, report_to=[])
    with pytest.raises(RecipeError, match="ir_mini_batch_size.*must be an integer"):
        CoDiEmbTrainingArguments(output_dir=str(tmp_path), ir_mini_batch_size=2.5, report_to=[])


def test_trainer_with_ir_mini_batch_size_trains_like_the_uncached_loss(tmp_path):
    """ir_mini_batch_size switches the default IR loss to the cached one; with dropout off, a few training steps
    give the same logged losses and the same weights as the uncached loss (SGD: Adam's normalisation would blow up
    float32 rounding differences of near-zero gradients)."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer

    make_tiny_model(tmp_path / "tiny")
    rng = random.Random(0)

    def sentence(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    dataset = Dataset.from_dict(
        {
            "query": [f"{WORDS[i % 11]} {sentence(2)}" for i in range(12)],
            "positives": [[f"{WORDS[i % 11]} {sentence(3)}", sentence(4)] for i in range(12)],
            "negatives": [[sentence(5) for _ in range(2)] for _ in range(12)],
        }
    )
    runs = {}
    for mini in (None, 2):
        model = SentenceTransformer(str(tmp_path / "tiny" / "model"), device="cpu")
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
        args = CoDiEmbTrainingArguments(
            output_dir=str(tmp_path / f"run_{mini}"), ir_batch_size=6, num_positives=2, num_negatives=2,
            ir_mini_batch_size=mini, max_steps=3, optim="sgd", learning_rate=0.5, logging_steps=1, save_strategy="no",
            report_to=[], seed=0, use_cpu=True, disable_tqdm=True, warmup_steps=0,
        )  # fmt: skip
        trainer = CoDiEmbTrainer(model=model, args=args, train_dataset={"toy_ir": dataset})
        expected_type = MultiPositiveInfoNCELoss if mini is None else CachedMultiPositiveInfoNCELoss
        assert type(trainer.loss["toy_ir"]) is expected_type
        trainer.train()
        losses = [entry["toy_ir/loss"] for entry in trainer.state.log_history if "toy_ir/loss" in entry]
        runs[mini] = (losses, {k: v.detach().clone() for k, v in model.state_dict().items()})
    assert trainer.loss["toy_ir"].mini_batch_size == 2 and trainer.loss["toy_ir"].num_positives == 2
    assert len(runs[2][0]) == 3
    assert runs[2][0] == pytest.approx(runs[None][0], abs=1e-4)
    initial = SentenceTransformer(str(tmp_path / "tiny" / "model"), device="cpu").state_dict()
    moved = 0.0
    for key, value in runs[None][1].items():
        torch.testing.assert_close(runs[2][1][key], value, atol=1e-5, rtol=1e-4, msg=key)
        moved = max(moved, (value - initial[key]).abs().max().item())
    assert moved > 1e-3  # training happened
