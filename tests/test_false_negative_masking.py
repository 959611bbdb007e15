"""Margin masking of probable false negatives in the IR InfoNCE (issue 22.2b): against a slow loop that masks by hand.

The loop below (float64 numpy, one softmax per query and positive slot, candidates listed one by one) is written
independently of the vectorised :func:`masked_multi_positive_info_nce`; the tests check the loss value AND the
number of removed candidates, judged by the model itself or by a guide, for both ``in_batch_positives`` modes.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from tiny_models import make_tiny_model
from torch import nn

from hf_codiemb import CoDiEmbTrainer, CoDiEmbTrainingArguments
from hf_codiemb.errors import RecipeError
from hf_codiemb.losses import (
    CachedMultiPositiveInfoNCELoss,
    MultiPositiveInfoNCELoss,
    masked_multi_positive_info_nce,
    multi_positive_info_nce,
)

WORDS = ["apple", "river", "engine", "garden", "violin", "planet", "market", "winter", "doctor", "camera", "ocean"]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def candidate_rows(i: int, p: int, batch: int, num_pos: int, num_neg: int, in_batch: bool, mode: str):
    """The (kind, row, column) of every candidate of query i's slot-p softmax."""
    listed = []
    if in_batch:
        for j in range(batch):
            if j == i:
                continue
            slots = [p] if mode == "slot" else range(num_pos)
            listed += [("pos", j, s) for s in slots]
        listed += [("neg", j, n) for j in range(batch) for n in range(num_neg)]
    else:
        listed += [("neg", i, n) for n in range(num_neg)]
    return listed


def slow_masked_loss(model_emb, judge_emb, t, margin, strategy, in_batch, mode, rows=None):
    """Plain loops: ``(loss, masked count)``; ``*_emb = (q (B, D), pos (M, P, D), neg (M, N, D))`` numpy arrays.

    ``rows``: the rows of the passage tensors the queries own (default: all, in order).
    """
    q, pos, neg = model_emb
    gq, gpos, gneg = judge_emb
    num_rows, num_pos = pos.shape[:2]
    num_neg = neg.shape[1]
    rows = list(range(num_rows)) if rows is None else rows
    terms, masked = [], 0
    for local, i in enumerate(rows):
        for p in range(num_pos):
            judge_pos = cosine(gq[local], gpos[i][p])
            if strategy == "absolute":
                threshold = judge_pos - margin
            else:
                threshold = judge_pos - abs(judge_pos) * margin
            kept = []
            for kind, j, c in candidate_rows(i, p, num_rows, num_pos, num_neg, in_batch, mode):
                model_vec, judge_vec = (pos[j][c], gpos[j][c]) if kind == "pos" else (neg[j][c], gneg[j][c])
                if cosine(gq[local], judge_vec) > threshold:
                    masked += 1
                else:
                    kept.append(cosine(q[local], model_vec) / t)
            s = cosine(q[local], pos[i][p]) / t
            terms.append(math.log(math.exp(s) + sum(math.exp(c) for c in kept)) - s)
    return sum(terms) / len(terms), masked


def random_embeddings(seed, batch, num_pos, num_neg, dim=6):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((batch, dim)),
        rng.standard_normal((batch, num_pos, dim)),
        rng.standard_normal((batch, num_neg, dim)),
    )


def t64(arrays):
    return tuple(torch.tensor(a, dtype=torch.float64) for a in arrays)


@pytest.mark.parametrize("mode", ["slot", "all"])
@pytest.mark.parametrize("in_batch", [True, False])
@pytest.mark.parametrize("strategy,margin", [("absolute", 0.0), ("absolute", 0.3), ("relative", 0.2), ("relative", 1.5)])
@pytest.mark.parametrize("with_guide", [False, True])
def test_masked_loss_and_count_equal_the_slow_loop(mode, in_batch, strategy, margin, with_guide):
    emb = random_embeddings(7, 5, 2, 3)
    judge = random_embeddings(8, 5, 2, 3, dim=4) if with_guide else emb
    q, pos, neg = t64(emb)
    loss, masked = masked_multi_positive_info_nce(
        q, pos, neg, temperature=0.1, in_batch_negatives=in_batch, in_batch_positives=mode, margin=margin,
        margin_strategy=strategy, guide_embeddings=t64(judge) if with_guide else None,
    )  # fmt: skip
    expected, expected_masked = slow_masked_loss(emb, judge, 0.1, margin, strategy, in_batch, mode)
    assert loss.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)
    assert masked.item() == expected_masked


def test_the_cases_mask_some_but_not_all():
    # The parameters above are meaningful: some candidates are masked, not all, and masking changes the loss.
    emb = random_embeddings(7, 5, 2, 3)
    loss, masked = masked_multi_positive_info_nce(*t64(emb), temperature=0.1, margin=0.3)
    total = 5 * 2 * (4 + 5 * 3)  # per (query, slot): 4 other rows' slot-p positives + 15 hard negatives
    assert 0 < masked.item() < total
    assert abs(loss.item() - multi_positive_info_nce(*t64(emb), temperature=0.1).item()) > 1e-3


def test_query_offset_and_guide_rows_follow_the_queries():
    # A "rank" holding queries 3..5 against all passages: the loop with the same rows gives the same value.
    emb, judge = random_embeddings(9, 6, 2, 2), random_embeddings(10, 6, 2, 2, dim=3)
    q, pos, neg = t64(emb)
    gq, gpos, gneg = t64(judge)
    loss, masked = masked_multi_positive_info_nce(
        q[3:], pos, neg, temperature=0.05, query_offset=3, margin=0.25, guide_embeddings=(gq[3:], gpos, gneg)
    )
    part = ((emb[0][3:], emb[1], emb[2]), (judge[0][3:], judge[1], judge[2]))
    expected, expected_masked = slow_masked_loss(*part, 0.05, 0.25, "absolute", True, "slot", rows=[3, 4, 5])
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    assert masked.item() == expected_masked


def test_the_positive_is_never_masked_and_empty_softmaxes_are_zero_with_finite_gradients():
    emb = random_embeddings(3, 4, 2, 2)
    inputs = [x.requires_grad_() for x in t64(emb)]
    # A huge margin removes every candidate: each term is log(e^s / e^s) = 0, and nothing is NaN.
    loss, masked = masked_multi_positive_info_nce(*inputs, temperature=0.02, margin=10.0)
    assert loss.item() == 0.0 and masked.item() == 4 * 2 * (3 + 4 * 2)
    loss.backward()
    assert all(torch.isfinite(x.grad).all() and (x.grad == 0).all() for x in inputs)
    # A hard negative identical to the positive is removed with a small margin; the positive stays the target.
    q, pos, neg = t64(emb)
    neg = neg.clone()
    neg[0, 0] = pos[0, 0]
    loss, _ = masked_multi_positive_info_nce(q, pos, neg, temperature=0.1, in_batch_negatives=False, margin=1e-6)
    expected, _ = slow_masked_loss((emb[0], emb[1], neg.numpy()), (emb[0], emb[1], neg.numpy()), 0.1, 1e-6,
                                   "absolute", False, "slot")  # fmt: skip
    assert loss.item() == pytest.approx(expected, rel=1e-10) and math.isfinite(loss.item())


@pytest.mark.parametrize("with_guide", [False, True])
def test_gradcheck(with_guide):
    emb = random_embeddings(4, 3, 2, 2, dim=4)
    inputs = tuple(x.requires_grad_() for x in t64(emb))
    guide = t64(random_embeddings(5, 3, 2, 2, dim=4)) if with_guide else None

    def fn(*args):
        return masked_multi_positive_info_nce(*args, temperature=0.3, margin=0.2, guide_embeddings=guide)[0]

    assert torch.autograd.gradcheck(fn, inputs)


class TinyEncoder(nn.Module):
    def __init__(self, seed: int = 0, dim_out: int = 4) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.linear = nn.Linear(5, dim_out).double()

    def forward(self, features: dict) -> dict:
        return {"sentence_embedding": self.linear(features["x"])}


def columns_for(batch=6, num_pos=2, num_neg=2, seed=3):
    gen = torch.Generator().manual_seed(seed)
    return [{"x": torch.randn(batch, 5, generator=gen, dtype=torch.float64)} for _ in range(1 + num_pos + num_neg)]


def embed(encoder, columns, num_pos=2):
    with torch.no_grad():
        emb = [encoder.linear(c["x"]).numpy() for c in columns]
    return emb[0], np.stack(emb[1 : 1 + num_pos], axis=1), np.stack(emb[1 + num_pos :], axis=1)


@pytest.mark.parametrize("with_guide", [False, True])
def test_loss_module_masks_logs_the_count_and_keeps_the_default(with_guide):
    model = TinyEncoder()
    guide = TinyEncoder(seed=1, dim_out=3) if with_guide else None
    columns = columns_for()
    loss_fct = MultiPositiveInfoNCELoss(
        model, temperature=0.05, margin=0.1, margin_strategy="relative", guide=guide, in_batch_positives="all"
    )
    value = loss_fct(columns, None)
    judge = embed(guide, columns) if with_guide else embed(model, columns)
    expected, expected_masked = slow_masked_loss(embed(model, columns), judge, 0.05, 0.1, "relative", True, "all")
    assert value.item() == pytest.approx(expected, rel=1e-10)
    assert {k: v.item() for k, v in loss_fct.pop_metrics().items()} == {"masked_candidates": expected_masked}
    assert loss_fct.pop_metrics() == {}  # popped once
    value.backward()
    assert torch.isfinite(model.linear.weight.grad).all()
    if with_guide:
        assert all(not p.requires_grad and p.grad is None for p in guide.parameters())  # a guide never trains
        assert not loss_fct.train().guide.training
    config = loss_fct.get_config_dict()
    assert config["margin"] == 0.1 and config["margin_strategy"] == "relative"
    assert config["guide"] == ("TinyEncoder" if with_guide else None)
    assert "2402.16829" in loss_fct.citation
    # Off by default: the reference's loss, config and citation, and nothing to log.
    default = MultiPositiveInfoNCELoss(model, temperature=0.05, in_batch_positives="all")
    assert default(columns, None).item() == pytest.approx(
        multi_positive_info_nce(*t64(embed(model, columns)), temperature=0.05, in_batch_positives="all").item(),
        rel=1e-12,
    )
    assert default.pop_metrics() == {} and "margin" not in default.get_config_dict()
    assert "2402.16829" not in default.citation


@pytest.mark.parametrize("with_guide", [False, True])
@pytest.mark.parametrize("mode", ["slot", "all"])
def test_cached_loss_equals_the_uncached_one(with_guide, mode):
    columns = columns_for(batch=5)
    results = []
    for cached in (False, True):
        model = TinyEncoder()
        guide = TinyEncoder(seed=2, dim_out=3) if with_guide else None
        kwargs = {"temperature": 0.05, "margin": 0.2, "guide": guide, "in_batch_positives": mode}
        if cached:
            loss_fct = CachedMultiPositiveInfoNCELoss(model, mini_batch_size=2, **kwargs)
        else:
            loss_fct = MultiPositiveInfoNCELoss(model, **kwargs)
        value = loss_fct(columns, None)
        value.backward()
        results.append((value.item(), loss_fct.pop_metrics()["masked_candidates"].item(), model.linear.weight.grad))
    (v0, m0, g0), (v1, m1, g1) = results
    assert v1 == pytest.approx(v0, rel=1e-12) and m1 == m0 > 0
    torch.testing.assert_close(g1, g0, rtol=1e-10, atol=1e-12)


def test_invalid_options_are_refused(tmp_path):
    model = TinyEncoder()
    with pytest.raises(ValueError, match="set margin too"):
        MultiPositiveInfoNCELoss(model, guide=TinyEncoder(seed=1))
    with pytest.raises(ValueError, match="margin must be a number >= 0"):
        MultiPositiveInfoNCELoss(model, margin=-0.1)
    with pytest.raises(ValueError, match="margin_strategy must be one of"):
        CachedMultiPositiveInfoNCELoss(model, margin=0.1, margin_strategy="percent")
    with pytest.raises(RecipeError, match="false_negative_margin.*must be a number >= 0"):
        CoDiEmbTrainingArguments(output_dir=str(tmp_path), false_negative_margin=-1.0, report_to=[])
    with pytest.raises(RecipeError, match="false_negative_guide.*needs false_negative_margin"):
        CoDiEmbTrainingArguments(output_dir=str(tmp_path), false_negative_guide="some/model", report_to=[])
    with pytest.raises(RecipeError, match="false_negative_margin_strategy.*'absolute' or 'relative'"):
        CoDiEmbTrainingArguments(output_dir=str(tmp_path), false_negative_margin_strategy="percent", report_to=[])


def test_guide_with_its_own_tokenization_embeds_the_decoded_texts(tmp_path, tiny_model_dir):
    """A guide that cannot take the model's token ids (here: a shorter max_seq_length) gets the decoded texts."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    make_tiny_model(tmp_path / "guide", seed=1)
    guide = SentenceTransformer(str(tmp_path / "guide" / "model"), device="cpu")
    guide.max_seq_length = 32
    loss_fct = MultiPositiveInfoNCELoss(model, num_positives=1, margin=0.1, guide=guide)
    assert loss_fct.guide_retokenizes
    texts = ["the apple river", "an engine in the garden", "violin planet market"]
    features = [model.preprocess(texts) for _ in range(2)]
    got = loss_fct.embed_with_guide(features, mini_batch_size=2)
    expected = guide.encode(texts, convert_to_tensor=True)
    for column in got:
        torch.testing.assert_close(column, expected, atol=1e-5, rtol=1e-4)
    same_vocabulary = MultiPositiveInfoNCELoss(model, num_positives=1, margin=0.1, guide=str(tmp_path / "guide" / "model"))
    assert not same_vocabulary.guide_retokenizes
    assert same_vocabulary.get_config_dict()["guide"] == str(tmp_path / "guide" / "model")


def toy_ir_dataset(rows: int = 12, seed: int = 0, scores: bool = False):
    from datasets import Dataset

    rng = random.Random(seed)

    def sentence(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    data = {
        "query": [f"{WORDS[i % 11]} {sentence(2)}" for i in range(rows)],
        "positives": [[f"{WORDS[i % 11]} {sentence(3)}", sentence(4)] for i in range(rows)],
        "negatives": [[sentence(5) for _ in range(3)] for _ in range(rows)],
    }
    if scores:
        data["positive_scores"] = [[rng.uniform(2, 5) for _ in range(2)] for _ in range(rows)]
        data["negative_scores"] = [[rng.uniform(-2, 2) for _ in range(3)] for _ in range(rows)]
    return Dataset.from_dict(data)


@pytest.mark.parametrize("guide,margin", [(False, 0.0), (True, 0.0), (False, 100.0)])
def test_trainer_logs_the_masked_count_and_never_adds_it_to_the_loss(tmp_path, tiny_model_dir, guide, margin):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    args = CoDiEmbTrainingArguments(
        output_dir=str(tmp_path / "run"), ir_batch_size=4, num_positives=2, num_negatives=2, max_steps=2,
        logging_steps=1, save_strategy="no", report_to=[], seed=0, use_cpu=True, disable_tqdm=True,
        false_negative_margin=margin, false_negative_guide=str(tiny_model_dir) if guide else None,
    )  # fmt: skip
    trainer = CoDiEmbTrainer(model=model, args=args, train_dataset={"toy_ir": toy_ir_dataset()})
    assert trainer.loss["toy_ir"].margin == margin
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "toy_ir/loss" in entry]
    assert len(logged) == 2
    # 4 queries x 2 slots x (3 other rows' slot-p positives + 4 x 2 hard negatives) candidates per batch.
    assert all(0 <= entry["toy_ir/masked_candidates"] <= 4 * 2 * (3 + 8) for entry in logged)
    if margin == 100.0:  # everything masked: the loss is 0, so the count (88) is not part of it
        assert all(entry["toy_ir/masked_candidates"] == 88 and entry["toy_ir/loss"] == 0.0 for entry in logged)
    else:  # a random tiny model scores every pair alike: margin 0 already removes about half of the candidates
        assert all(0 < entry["toy_ir/masked_candidates"] < 88 and entry["toy_ir/loss"] > 0 for entry in logged)
