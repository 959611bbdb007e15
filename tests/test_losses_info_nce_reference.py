"""The default IR loss is the reference code's per-slot InfoNCE (METHOD.md section 3), value and gradients.

``per_slot_reference`` is written from the text of the method, not from the implementation: for every query ``i``
and positive slot ``p`` it lists the candidates one by one (the ``p``-th positive of every row, then every hard
negative of every row), takes ``-log softmax`` at the query's own ``p``-th positive, and averages.
"""

from __future__ import annotations

import pytest
import torch
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from torch import nn

from hf_codiemb.losses import MultiPositiveInfoNCELoss, multi_positive_info_nce


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum() / (a.norm() * b.norm())


def per_slot_reference(q: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, t: float) -> torch.Tensor:
    """q: (B, D); pos: (B, P, D); neg: (B, N, D). Plain loops over queries, slots and candidates."""
    batch, num_pos = pos.shape[:2]
    terms = []
    for i in range(batch):
        for p in range(num_pos):
            candidates = [pos[j, p] for j in range(batch)]  # index i is the target
            candidates += [neg[j, n] for j in range(batch) for n in range(neg.shape[1])]
            logits = torch.stack([cosine(q[i], c) / t for c in candidates])
            terms.append(-(logits[i] - torch.logsumexp(logits, dim=0)))
    return torch.stack(terms).mean()


def embeddings(seed: int, batch: int, num_pos: int, num_neg: int, dim: int = 5):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    pos = torch.randn(batch, num_pos, dim, generator=gen, dtype=torch.float64)
    neg = torch.randn(batch, num_neg, dim, generator=gen, dtype=torch.float64)
    # A passage shared by two rows (a positive of row 0 is a positive of row 1 in another slot, and a negative of
    # row 2): the reference does not deduplicate, so neither may we.
    pos[1, -1] = pos[0, 0]
    if num_neg:
        neg[2, 0] = pos[0, 0]
    return q, pos, neg


@pytest.mark.parametrize("num_pos", [1, 2, 3])
@pytest.mark.parametrize("num_neg", [0, 4, 8])
def test_default_equals_per_slot_reference_value_and_gradients(num_pos, num_neg):
    batch, temperature = 4, 0.05
    q, pos, neg = embeddings(100 * num_pos + num_neg, batch, num_pos, num_neg)
    leaves = [x.clone().requires_grad_() for x in (q, pos, neg)]
    ours = multi_positive_info_nce(
        leaves[0], leaves[1], leaves[2] if num_neg else None, temperature=temperature
    )
    ours.backward()
    ref_leaves = [x.clone().requires_grad_() for x in (q, pos, neg)]
    expected = per_slot_reference(*ref_leaves, temperature)
    expected.backward()

    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)
    for got, want in zip(leaves[: 3 if num_neg else 2], ref_leaves[: 3 if num_neg else 2]):
        torch.testing.assert_close(got.grad, want.grad, atol=1e-6, rtol=0)


def test_all_positives_variant_is_a_different_loss():
    """Our ``"all"`` option counts other rows' positives of every slot: it must differ from the reference at k+ > 1."""
    q, pos, neg = embeddings(7, 4, 2, 4)
    slot = multi_positive_info_nce(q, pos, neg, temperature=0.05)
    every = multi_positive_info_nce(q, pos, neg, temperature=0.05, in_batch_positives="all")
    assert every.item() > slot.item() + 1e-3  # more candidates, larger loss
    torch.testing.assert_close(slot, per_slot_reference(q, pos, neg, 0.05), atol=1e-6, rtol=0)
    # At k+ = 1 the two variants are one loss.
    one_slot = multi_positive_info_nce(q, pos[:, :1], neg, temperature=0.05)
    one_all = multi_positive_info_nce(q, pos[:, :1], neg, temperature=0.05, in_batch_positives="all")
    torch.testing.assert_close(one_slot, one_all, atol=1e-12, rtol=0)


def test_unknown_in_batch_positives_is_refused():
    q, pos, neg = embeddings(1, 3, 1, 1)
    with pytest.raises(ValueError, match="in_batch_positives must be one of"):
        multi_positive_info_nce(q, pos, neg, in_batch_positives="every")


class LinearEncoder(nn.Module):
    """A stand-in for a SentenceTransformer: ``{"x": (B, 6)} -> {"sentence_embedding": (B, 4)}``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(6, 4).double()

    def forward(self, features: dict) -> dict:
        return {"sentence_embedding": self.linear(features["x"])}


@pytest.mark.parametrize("num_neg", [0, 1, 3])
def test_single_positive_equals_multiple_negatives_ranking_loss(num_neg):
    """k+ = 1: the loss is sentence-transformers' MNRL with scale 1 / temperature, value and gradients."""
    temperature = 0.05
    gen = torch.Generator().manual_seed(11 + num_neg)
    columns = [{"x": torch.randn(5, 6, generator=gen, dtype=torch.float64)} for _ in range(2 + num_neg)]

    ours_model = LinearEncoder()
    ours = MultiPositiveInfoNCELoss(ours_model, num_positives=1, temperature=temperature)(columns, None)
    ours.backward()
    mnrl_model = LinearEncoder()
    mnrl = MultipleNegativesRankingLoss(mnrl_model, scale=1 / temperature)(columns, None)
    mnrl.backward()

    torch.testing.assert_close(ours, mnrl, atol=1e-9, rtol=0)
    torch.testing.assert_close(ours_model.linear.weight.grad, mnrl_model.linear.weight.grad, atol=1e-9, rtol=0)
