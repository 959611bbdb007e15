"""Multi-positive InfoNCE against slow per-query / per-positive references.

``in_batch_positives="all"`` (our variant) is checked against ``info_nce_reference``; the default, the reference
code's per-slot semantics, against ``per_slot_reference`` (tests/test_losses_info_nce_reference.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from hf_codiemb.losses import MultiPositiveInfoNCELoss, multi_positive_info_nce


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def info_nce_reference(q, pos, neg, t, in_batch, sibling_negatives=False) -> float:
    """Plain loops. q: (B, D); pos: (B, P, D); neg: (B, N, D) numpy arrays.

    ``sibling_negatives=True`` is the WRONG variant (a query's other positives count as negatives), used to show the
    tests can tell the two apart.
    """
    batch, num_pos = pos.shape[:2]
    losses = []
    for i in range(batch):
        negatives = list(neg[i])
        if in_batch:
            for j in range(batch):
                if j != i:
                    negatives += list(pos[j]) + list(neg[j])
        for p in range(num_pos):
            extra = [pos[i][o] for o in range(num_pos) if o != p] if sibling_negatives else []
            s_pos = cosine(q[i], pos[i][p]) / t
            denominator = math.exp(s_pos) + sum(math.exp(cosine(q[i], n) / t) for n in negatives + extra)
            losses.append(-(s_pos - math.log(denominator)))
    return sum(losses) / len(losses)


def random_embeddings(seed: int, batch: int, num_pos: int, num_neg: int, dim: int = 6):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((batch, dim)),
        rng.standard_normal((batch, num_pos, dim)),
        rng.standard_normal((batch, num_neg, dim)),
    )


def t64(a) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64)


@pytest.mark.parametrize("batch,num_pos,num_neg", [(1, 1, 1), (3, 2, 4), (5, 3, 0), (4, 1, 2), (1, 2, 3)])
@pytest.mark.parametrize("in_batch", [True, False])
@pytest.mark.parametrize("temperature", [0.02, 0.5])
def test_matches_slow_reference(batch, num_pos, num_neg, in_batch, temperature):
    q, pos, neg = random_embeddings(batch * 10 + num_neg, batch, num_pos, num_neg)
    got = multi_positive_info_nce(
        t64(q), t64(pos), t64(neg) if num_neg else None, temperature=temperature, in_batch_negatives=in_batch,
        in_batch_positives="all",
    )
    if num_neg == 0 and not (in_batch and batch > 1):
        assert got.item() == 0.0  # no negatives at all: log(e^s / e^s)
        return
    expected = info_nce_reference(q, pos, neg, temperature, in_batch)
    assert got.item() == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_other_positives_are_not_negatives():
    # One query, two positives, one hard negative: a sibling-as-negative implementation gives a different value.
    q, pos, neg = random_embeddings(5, 2, 2, 1)
    got = multi_positive_info_nce(t64(q), t64(pos), t64(neg), temperature=0.1, in_batch_positives="all").item()
    right = info_nce_reference(q, pos, neg, 0.1, in_batch=True)
    wrong = info_nce_reference(q, pos, neg, 0.1, in_batch=True, sibling_negatives=True)
    assert abs(right - wrong) > 1e-2
    assert got == pytest.approx(right, rel=1e-9)
    # By hand: q . p = 1 for both positives, q . n = 0: each term is log(1 + e^0 / e^(1/t)).
    q1 = t64([[1.0, 0.0]])
    pos1 = t64([[[1.0, 0.0], [1.0, 0.0]]])
    neg1 = t64([[[0.0, 1.0]]])
    value = multi_positive_info_nce(q1, pos1, neg1, temperature=0.5).item()
    assert value == pytest.approx(math.log(1 + math.exp(-2.0)), rel=1e-12)


def test_in_batch_negatives_toggle_changes_value():
    q, pos, neg = random_embeddings(2, 4, 2, 2)
    on = multi_positive_info_nce(t64(q), t64(pos), t64(neg), temperature=0.1, in_batch_negatives=True)
    off = multi_positive_info_nce(t64(q), t64(pos), t64(neg), temperature=0.1, in_batch_negatives=False)
    assert on.item() > off.item()
    # Off, the default (per-slot) loss has only the query's own positive and hard negatives as candidates.
    assert off.item() == pytest.approx(info_nce_reference(q, pos, neg, 0.1, in_batch=False), rel=1e-9)


def test_query_offset_splits_like_concatenated_batch():
    # Two "ranks" of 3 queries each against the passages of both: the mean of the two equals the full-batch loss.
    q, pos, neg = random_embeddings(9, 6, 2, 3)
    full = multi_positive_info_nce(t64(q), t64(pos), t64(neg), temperature=0.05)
    parts = [
        multi_positive_info_nce(t64(q[r * 3 : (r + 1) * 3]), t64(pos), t64(neg), temperature=0.05, query_offset=r * 3)
        for r in range(2)
    ]
    assert ((parts[0] + parts[1]) / 2).item() == pytest.approx(full.item(), rel=1e-12)


@pytest.mark.parametrize("in_batch", [True, False])
@pytest.mark.parametrize("num_neg", [0, 2])
def test_gradcheck(in_batch, num_neg):
    q, pos, neg = random_embeddings(3, 3, 2, num_neg, dim=4)
    inputs = (t64(q).requires_grad_(), t64(pos).requires_grad_())
    if num_neg:
        inputs = inputs + (t64(neg).requires_grad_(),)

    def fn(*args):
        return multi_positive_info_nce(*args, temperature=0.3, in_batch_negatives=in_batch)

    assert torch.autograd.gradcheck(fn, inputs)


def test_low_temperature_gradients_finite():
    q, pos, neg = random_embeddings(4, 8, 2, 4)
    inputs = [t64(x).float().requires_grad_() for x in (q, pos, neg)]
    multi_positive_info_nce(*inputs, temperature=0.001).backward()
    assert all(torch.isfinite(x.grad).all() for x in inputs)


class TinyEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(5, 4).double()

    def forward(self, features: dict) -> dict:
        return {"sentence_embedding": self.linear(features["x"])}


@pytest.mark.parametrize("num_neg", [0, 2])
def test_loss_module_forward(num_neg):
    model = TinyEncoder()
    gen = torch.Generator().manual_seed(3)
    columns = [torch.randn(4, 5, generator=gen, dtype=torch.float64) for _ in range(1 + 2 + num_neg)]
    loss = MultiPositiveInfoNCELoss(model, num_positives=2, temperature=0.05, in_batch_positives="all")
    value = loss([{"x": c} for c in columns], None)
    with torch.no_grad():
        emb = [model.linear(c).numpy() for c in columns]
    q, pos = emb[0], np.stack(emb[1:3], axis=1)
    neg = np.stack(emb[3:], axis=1) if num_neg else np.zeros((4, 0, 4))
    assert value.item() == pytest.approx(info_nce_reference(q, pos, neg, 0.05, True), rel=1e-9)
    # Without a process group, gathering is a no-op.
    gathered = MultiPositiveInfoNCELoss(
        model, num_positives=2, temperature=0.05, gather_across_devices=True, in_batch_positives="all"
    )
    assert gathered([{"x": c} for c in columns], None).item() == pytest.approx(value.item(), rel=1e-12)
    value.backward()
    assert torch.isfinite(model.linear.weight.grad).all()
    config = loss.get_config_dict()
    assert config["num_positives"] == 2 and config["similarity_fct"] == "cos_sim"
    assert "2508.11442" in loss.citation


def test_too_few_columns_raises():
    loss = MultiPositiveInfoNCELoss(TinyEncoder(), num_positives=3)
    with pytest.raises(ValueError, match="3 positive columns"):
        loss([{"x": torch.randn(2, 5, dtype=torch.float64)}] * 2, None)
