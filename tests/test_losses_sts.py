"""STS losses against independent plain-Python / NumPy / SciPy references."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
from scipy.stats import rankdata, spearmanr
from torch import nn

from hf_codiemb.losses import CoDiEmbSTSLoss, PearsonLoss, PROLoss, RankKLLoss, SoftSpearmanLoss

# ---------------------------------------------------------------- independent references (no torch, no hf_codiemb)


def pearson_reference(c: np.ndarray, y: np.ndarray) -> float:
    if len(c) < 2 or np.std(c) == 0 or np.std(y) == 0:
        return 0.0
    return 1.0 - float(np.corrcoef(c, y)[0, 1])


def rank_kl_reference(
    c: np.ndarray, y: np.ndarray, t: float, reduction: str = "batchmean", all_equal_gold: str = "uniform_target"
) -> float:
    """The reference's rank-KL; with all gold scores equal its ranks are all equal, so the target is uniform."""
    n = len(c)
    if n < 2 or (all_equal_gold == "zero" and np.all(y == y[0])):
        return 0.0
    ranks_desc = rankdata(-y, method="average") - 1  # 0 = highest gold score
    ideal = (n - 1 - ranks_desc) / (n - 1)
    target = np.exp(ideal / t - np.max(ideal / t))
    target /= target.sum()
    log_pred = c / t - (np.max(c / t) + np.log(np.sum(np.exp(c / t - np.max(c / t)))))
    kl = float(np.sum(target * (np.log(target) - log_pred)))
    return kl / n if reduction == "batchmean" else kl


def pro_reference_loop(c: list[float], y: list[float], t: float, eps: float = 1e-8) -> float:
    """The reference PRO definition, item by item in plain Python (sorted by gold, descending)."""
    if len(c) < 2:
        return 0.0
    order = sorted(range(len(y)), key=lambda i: -y[i])
    ys = [y[i] for i in order]
    cs = [c[i] / t for i in order]
    total, count = 0.0, 0
    for k in range(len(ys) - 1):
        negatives = [(ys[k] - ys[j], cs[j]) for j in range(k + 1, len(ys)) if ys[k] - ys[j] > eps]
        if not negatives:
            continue
        weight_k = max(w for w, _ in negatives)
        logits = [cs[k] * weight_k] + [w * cj for w, cj in negatives]
        m = max(logits)
        log_z = m + math.log(sum(math.exp(v - m) for v in logits))
        total += logits[0] - log_z
        count += 1
    return 0.0 if count == 0 else -total / count


def pro_reference_torch_loop(c: torch.Tensor, y: torch.Tensor, t: float, eps: float = 1e-8) -> torch.Tensor:
    """Same loop in torch (for gradients), written as the reference code does it."""
    c = c / t
    idx = torch.argsort(y, descending=True)
    ys, cs = y[idx], c[idx]
    total, count = c.new_zeros(()), 0
    for k in range(len(ys) - 1):
        mask = (ys[k] - ys[k + 1 :]) > eps
        if not mask.any():
            continue
        w = ys[k] - ys[k + 1 :][mask]
        logits = torch.cat([(cs[k] * w.max()).unsqueeze(0), cs[k + 1 :][mask] * w])
        total = total + torch.log_softmax(logits, dim=0)[0]
        count += 1
    return -total / max(count, 1)


def random_batch(seed: int, n: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    c = rng.uniform(-1, 1, n)
    y = rng.integers(0, 5, n).astype(float) if ties else rng.uniform(0, 5, n)
    return c, y


CASES = [(seed, n, ties) for seed, n in [(0, 2), (1, 5), (2, 17), (3, 64)] for ties in (False, True)]


def t64(a) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64)


# ---------------------------------------------------------------- values


@pytest.mark.parametrize("seed,n,ties", CASES)
def test_pearson_matches_numpy(seed, n, ties):
    c, y = random_batch(seed, n, ties)
    got = PearsonLoss(None).compute_from_scores(t64(c), t64(y)).item()
    assert got == pytest.approx(pearson_reference(c, y), abs=1e-10)


@pytest.mark.parametrize("seed,n,ties", CASES)
@pytest.mark.parametrize("reduction", ["batchmean", "sum"])
def test_rank_kl_matches_numpy(seed, n, ties, reduction):
    c, y = random_batch(seed, n, ties)
    got = RankKLLoss(None, temperature=0.05, reduction=reduction).compute_from_scores(t64(c), t64(y)).item()
    assert got == pytest.approx(rank_kl_reference(c, y, 0.05, reduction), rel=1e-9, abs=1e-10)


@pytest.mark.parametrize("seed,n,ties", CASES)
@pytest.mark.parametrize("temperature", [0.05, 1.0])
def test_pro_matches_reference_loop(seed, n, ties, temperature):
    c, y = random_batch(seed, n, ties)
    got = PROLoss(None, temperature=temperature).compute_from_scores(t64(c), t64(y)).item()
    assert got == pytest.approx(pro_reference_loop(list(c), list(y), temperature), rel=1e-5, abs=1e-5)
    got32 = PROLoss(None, temperature=temperature).compute_from_scores(
        torch.tensor(c, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    )
    assert got32.item() == pytest.approx(pro_reference_loop(list(c), list(y), temperature), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("seed,n,ties", CASES)
def test_pro_gradient_matches_reference_loop(seed, n, ties):
    c, y = random_batch(seed, n, ties)
    ours = t64(c).requires_grad_()
    ref = t64(c).requires_grad_()
    PROLoss(None).compute_from_scores(ours, t64(y)).backward()
    pro_reference_torch_loop(ref, t64(y), 0.05).backward()
    torch.testing.assert_close(ours.grad, ref.grad, atol=1e-8, rtol=1e-6)


def test_pro_loss_is_order_sensitive_and_gap_weighted():
    y = t64([3.0, 2.0, 1.0])
    good = PROLoss(None, temperature=1.0).compute_from_scores(t64([0.9, 0.5, 0.1]), y)
    bad = PROLoss(None, temperature=1.0).compute_from_scores(t64([0.1, 0.5, 0.9]), y)
    assert good < bad
    # By hand, k=0: logits [0.9*2, 0.5*1, 0.1*2]; k=1: [0.5*1, 0.1*1]
    k0 = 1.8 - math.log(math.exp(1.8) + math.exp(0.5) + math.exp(0.2))
    k1 = 0.5 - math.log(math.exp(0.5) + math.exp(0.1))
    assert good.item() == pytest.approx(-(k0 + k1) / 2, abs=1e-12)


@pytest.mark.parametrize("seed,n", [(0, 12), (1, 40)])
def test_soft_spearman_converges_to_spearman(seed, n):
    rng = np.random.default_rng(seed)
    c = rng.permutation(n) / n + rng.uniform(0, 0.2 / n, n)  # distinct, gaps >= ~0.8/n
    y = rng.integers(0, 6, n).astype(float)  # with ties
    expected = 1.0 - spearmanr(c, y).statistic
    errors = [
        abs(SoftSpearmanLoss(None, regularization_strength=s).compute_from_scores(t64(c), t64(y)).item() - expected)
        for s in (0.5, 0.05, 1e-3, 1e-5)
    ]
    assert errors[-1] < 1e-8
    assert errors[2] < errors[0]  # not necessarily monotone (the error can change sign), but it shrinks


# ---------------------------------------------------------------- gradcheck


STS_LOSSES = [
    PearsonLoss(None),
    RankKLLoss(None, temperature=0.5),
    PROLoss(None, temperature=0.5),
    SoftSpearmanLoss(None, regularization_strength=0.3),
    CoDiEmbSTSLoss(None, temperature=0.5, soft_spearman_weight=1.0, soft_spearman_regularization=0.3),
]
# The losses that give exactly 0 on a batch whose gold scores are all equal (no order to learn).
ZERO_ON_ALL_EQUAL_GOLD = [
    PearsonLoss(None),
    RankKLLoss(None, temperature=0.5, all_equal_gold="zero"),
    PROLoss(None, temperature=0.5),
    SoftSpearmanLoss(None, regularization_strength=0.3),
    CoDiEmbSTSLoss(
        None, temperature=0.5, soft_spearman_weight=1.0, soft_spearman_regularization=0.3, rank_kl_all_equal_gold="zero"
    ),
]


@pytest.mark.parametrize("loss", STS_LOSSES, ids=lambda loss: type(loss).__name__)
def test_gradcheck(loss):
    c, y = random_batch(7, 6, ties=True)
    pred = t64(c).requires_grad_()
    assert torch.autograd.gradcheck(lambda p: loss.compute_from_scores(p, t64(y)), (pred,))
    # gradcheck also passes for a loss that is flat in the predictions: on this batch every loss must move them.
    loss.compute_from_scores(pred, t64(y)).backward()
    assert pred.grad.abs().max().item() > 1e-3


# ---------------------------------------------------------------- degenerate batches and validation


DEGENERATE = {
    "single pair": ([0.3], [2.0]),
    "all gold equal": ([0.3, -0.1, 0.8, 0.2], [2.0, 2.0, 2.0, 2.0]),
    "constant predictions": ([0.5, 0.5, 0.5], [1.0, 2.0, 3.0]),
    "empty": ([], []),
}


@pytest.mark.parametrize("loss", ZERO_ON_ALL_EQUAL_GOLD, ids=lambda loss: type(loss).__name__)
@pytest.mark.parametrize("case", list(DEGENERATE))
def test_degenerate_batches_finite(loss, case):
    c, y = DEGENERATE[case]
    for dtype in (torch.float32, torch.float64):
        pred = torch.tensor(c, dtype=dtype, requires_grad=True)
        value = loss.compute_from_scores(pred, torch.tensor(y, dtype=dtype))
        assert torch.isfinite(value)
        value.backward()
        assert torch.isfinite(pred.grad).all()
        if case != "constant predictions":
            assert value.item() == 0.0
            assert torch.all(pred.grad == 0)


@pytest.mark.parametrize("temperature", [0.05, 0.5])
def test_rank_kl_all_equal_gold_pulls_predictions_together_like_the_reference(temperature):
    """Default = the reference: a uniform target, so unequal predictions get a positive loss and a gradient."""
    c, y = DEGENERATE["all gold equal"]
    pred = t64(c).requires_grad_()
    value = RankKLLoss(None, temperature=temperature).compute_from_scores(pred, t64(y))
    assert value.item() == pytest.approx(rank_kl_reference(np.array(c), np.array(y), temperature), rel=1e-9)
    assert value.item() > 1e-4
    value.backward()
    assert pred.grad.abs().sum().item() > 0
    # Gradient descent moves the predictions towards each other.
    stepped = pred.detach() - 0.01 * pred.grad
    assert stepped.std().item() < pred.detach().std().item()
    # Equal predictions are already optimal.
    assert RankKLLoss(None, temperature=temperature).compute_from_scores(t64([0.2] * 4), t64(y)).item() == pytest.approx(
        0.0, abs=1e-12
    )
    with pytest.raises(ValueError, match="all_equal_gold must be one of"):
        RankKLLoss(None, all_equal_gold="skip")


@pytest.mark.parametrize("loss", STS_LOSSES, ids=lambda loss: type(loss).__name__)
@pytest.mark.parametrize("bad,word", [(float("nan"), "nan"), (float("inf"), "inf")])
def test_non_finite_gold_raises(loss, bad, word):
    gold = torch.tensor([1.0, 2.0, 3.0, bad, 0.0])
    with pytest.raises(ValueError, match=f"position 3 is {word}"):
        loss.compute_from_scores(torch.rand(5), gold)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="one gold score per predicted"):
        PearsonLoss(None).compute_from_scores(torch.rand(4), torch.rand(5))


# ---------------------------------------------------------------- combination and forward


def test_codiemb_sts_components_and_total():
    c, y = random_batch(11, 20, ties=True)
    loss = CoDiEmbSTSLoss(None)
    parts = loss.compute_components_from_scores(t64(c), t64(y))
    assert set(parts) == {"pearson", "pro", "rank_kl"}
    assert parts["pearson"].item() == pytest.approx(2.0 * pearson_reference(c, y), abs=1e-9)
    assert parts["pro"].item() == pytest.approx(0.5 * pro_reference_loop(list(c), list(y), 0.05), rel=1e-6)
    assert parts["rank_kl"].item() == pytest.approx(5.0 * rank_kl_reference(c, y, 0.05), rel=1e-9)
    total = loss.compute_from_scores(t64(c), t64(y))
    assert total.item() == pytest.approx(sum(v.item() for v in parts.values()), rel=1e-12)
    with_spearman = CoDiEmbSTSLoss(None, pro_weight=0.0, soft_spearman_weight=1.0)
    assert set(with_spearman.compute_components_from_scores(t64(c), t64(y))) == {"pearson", "rank_kl", "soft_spearman"}
    with pytest.raises(ValueError, match="at least one non-zero weight"):
        CoDiEmbSTSLoss(None, pearson_weight=0, pro_weight=0, rank_kl_weight=0)
    with pytest.raises(ValueError, match="non-negative"):
        CoDiEmbSTSLoss(None, pro_weight=-1)


class TinyEncoder(nn.Module):
    """Stands in for a SentenceTransformer: features {"x": (B, d)} -> {"sentence_embedding": (B, e)}."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 3).double()

    def forward(self, features: dict) -> dict:
        return {"sentence_embedding": self.linear(features["x"])}


@pytest.mark.parametrize("cls", [PearsonLoss, RankKLLoss, PROLoss, SoftSpearmanLoss, CoDiEmbSTSLoss])
def test_forward_embeds_pairs_and_matches_scores(cls):
    model = TinyEncoder()
    # The linear stand-in has no hidden layers: the middle-layer term is tested on a real encoder (test_middle_layer).
    loss = cls(model, multi_layer_weight=0.0) if cls is CoDiEmbSTSLoss else cls(model)
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(6, 4, generator=gen, dtype=torch.float64), torch.randn(6, 4, generator=gen, dtype=torch.float64)
    gold = t64([0.0, 1.0, 1.0, 3.0, 4.5, 2.0])
    out = loss([{"x": a}, {"x": b}], gold)
    cos = torch.nn.functional.cosine_similarity(model.linear(a), model.linear(b), dim=1)
    expected = loss.compute_from_scores(cos, gold)
    value = sum(out.values()) if isinstance(out, dict) else out
    assert value.item() == pytest.approx(expected.item(), rel=1e-10)
    if cls is not CoDiEmbSTSLoss:
        from_embeddings = loss.compute_loss_from_embeddings([model.linear(a), model.linear(b)], gold)
        assert from_embeddings.item() == pytest.approx(expected.item(), rel=1e-10)
    value.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    # The config (shown in model cards) names real constructor arguments with the values the loss runs with.
    config = loss.get_config_dict()
    assert config.pop("similarity_fct") == "pairwise_cos_sim"
    parameters = inspect.signature(cls).parameters
    assert set(config) <= set(parameters), set(config) - set(parameters)
    built_with = {"multi_layer_weight": 0.0} if cls is CoDiEmbSTSLoss else {}
    assert config == {name: built_with.get(name, parameters[name].default) for name in config}
    if cls is SoftSpearmanLoss:
        assert loss.citation is None  # ours: no paper's maths to cite
    else:
        assert "2508.11442" in loss.citation
