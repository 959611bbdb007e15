"""Distillation from teacher scores (issue 22.3): FlagEmbedding's KL over each query's candidates.

The KL term's value and gradient are checked against an independent float64 computation (closed-form gradient with a
dot-product similarity, autograd of a per-query loop with cosine); the collator keeps the scores of exactly the
sampled texts; a record without scores is refused with its dataset, row and field; a training step logs the term.
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from sentence_transformers.util import dot_score
from torch import nn

from hf_codiemb import CoDiEmbTrainer, CoDiEmbTrainingArguments
from hf_codiemb.collator import CoDiEmbDataCollator
from hf_codiemb.data import load_ir_dataset
from hf_codiemb.data.teacher_scores import check_teacher_scores
from hf_codiemb.errors import RecipeError, TrainingDataError
from hf_codiemb.losses import (
    CachedMultiPositiveInfoNCELoss,
    MultiPositiveInfoNCELoss,
    multi_positive_info_nce,
    teacher_distillation_kl,
)


def random_group(seed: int, batch: int = 4, num_pos: int = 2, num_neg: int = 3, dim: int = 5):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((batch, dim)),
        rng.standard_normal((batch, num_pos, dim)),
        rng.standard_normal((batch, num_neg, dim)),
        rng.uniform(-3, 3, (batch, num_pos + num_neg)),
    )


def closed_form(q, pos, neg, teacher, t, teacher_t):
    """KL and its gradient wrt q, pos, neg for s = q . c (numpy, float64, written out)."""
    cands = np.concatenate([pos, neg], axis=1)
    batch, group, _ = cands.shape
    value, grad_q, grad_c = 0.0, np.zeros_like(q), np.zeros_like(cands)
    for i in range(batch):
        logits = np.array([q[i] @ cands[i, k] for k in range(group)]) / t
        student = np.exp(logits - logits.max())
        student /= student.sum()
        scaled = teacher[i] / teacher_t
        target = np.exp(scaled - scaled.max())
        target /= target.sum()
        value += float(np.sum(target * (np.log(target) - np.log(student))))
        # d KL / d logit_k = student_k - target_k; logit_k = q . c_k / t
        d_logits = (student - target) / t / batch
        grad_q[i] = d_logits @ cands[i]
        grad_c[i] = np.outer(d_logits, q[i])
    num_pos = pos.shape[1]
    return value / batch, grad_q, grad_c[:, :num_pos], grad_c[:, num_pos:]


@pytest.mark.parametrize("t,teacher_t", [(0.05, 1.0), (0.5, 0.3)])
def test_value_and_gradient_equal_the_closed_form(t, teacher_t):
    q, pos, neg, teacher = random_group(1)
    inputs = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in (q, pos, neg)]
    kl = teacher_distillation_kl(
        *inputs, torch.tensor(teacher), temperature=t, teacher_temperature=teacher_t, similarity_fct=dot_score
    )
    kl.backward()
    value, grad_q, grad_pos, grad_neg = closed_form(q, pos, neg, teacher, t, teacher_t)
    assert kl.item() == pytest.approx(value, rel=1e-10)
    for tensor, expected in zip(inputs, (grad_q, grad_pos, grad_neg)):
        np.testing.assert_allclose(tensor.grad.numpy(), expected, rtol=1e-9, atol=1e-12)


def loop_kl(q, pos, neg, teacher, t, teacher_t):
    """Per-query loop with cosine similarity and explicit sums (torch float64, for autograd)."""
    terms = []
    for i in range(q.size(0)):
        cands = list(pos[i]) + ([] if neg is None else list(neg[i]))
        logits = [torch.dot(q[i], c) / (q[i].norm() * c.norm()) / t for c in cands]
        log_z = torch.log(sum(torch.exp(x) for x in logits))
        teacher_exp = [math.exp(float(s) / teacher_t) for s in teacher[i]]
        total = sum(teacher_exp)
        terms.append(sum((e / total) * (math.log(e / total) - (x - log_z)) for e, x in zip(teacher_exp, logits)))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("num_neg", [0, 3])
def test_cosine_value_and_gradient_equal_a_loop(num_neg):
    q, pos, neg, teacher = random_group(2, num_neg=num_neg)
    teacher = teacher[:, : 2 + num_neg]
    a = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in (q, pos, neg)]
    b = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in (q, pos, neg)]
    got = teacher_distillation_kl(a[0], a[1], a[2] if num_neg else None, torch.tensor(teacher), 0.1, 2.0)
    expected = loop_kl(b[0], b[1], b[2] if num_neg else None, teacher, 0.1, 2.0)
    assert got.item() == pytest.approx(expected.item(), rel=1e-10)
    got.backward()
    expected.backward()
    for x, y in zip(a, b):
        if y.grad is not None:
            torch.testing.assert_close(x.grad, y.grad, rtol=1e-9, atol=1e-12)


def test_kl_is_zero_when_the_student_matches_the_teacher():
    q, pos, neg, _ = random_group(3)
    qt, pt, nt = (torch.tensor(x) for x in (q, pos, neg))
    teacher = torch.cat([(pt * qt[:, None]).sum(-1), (nt * qt[:, None]).sum(-1)], dim=1) / 0.1  # the student's logits
    kl = teacher_distillation_kl(qt, pt, nt, teacher, temperature=0.1, teacher_temperature=1.0, similarity_fct=dot_score)
    assert abs(kl.item()) < 1e-12
    with pytest.raises(ValueError, match=r"shape \(queries, positives \+ negatives\) = \(4, 5\)"):
        teacher_distillation_kl(qt, pt, nt, teacher[:, :4])


class TinyEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(5, 4).double()

    def forward(self, features: dict) -> dict:
        return {"sentence_embedding": self.linear(features["x"])}


def batch_columns(batch=5, num_pos=2, num_neg=2):
    gen = torch.Generator().manual_seed(4)
    columns = [{"x": torch.randn(batch, 5, generator=gen, dtype=torch.float64)} for _ in range(1 + num_pos + num_neg)]
    return columns, torch.rand(batch, num_pos + num_neg, generator=gen, dtype=torch.float64) * 4


def test_loss_module_adds_the_weighted_kl_as_its_own_component():
    model = TinyEncoder()
    columns, teacher = batch_columns()
    loss_fct = MultiPositiveInfoNCELoss(model, temperature=0.05, distill_weight=0.7, teacher_temperature=0.5)
    output = loss_fct(columns, teacher)
    assert set(output) == {"info_nce", "distill_kl"}
    with torch.no_grad():
        emb = [model.linear(c["x"]) for c in columns]
    q, pos, neg = emb[0], torch.stack(emb[1:3], 1), torch.stack(emb[3:], 1)
    assert output["info_nce"].item() == pytest.approx(multi_positive_info_nce(q, pos, neg, 0.05).item(), rel=1e-12)
    assert output["distill_kl"].item() == pytest.approx(0.7 * loop_kl(q, pos, neg, teacher, 0.05, 0.5).item(), rel=1e-10)
    config = loss_fct.get_config_dict()
    assert config["distill_weight"] == 0.7 and config["teacher_temperature"] == 0.5 and "margin" not in config
    assert "2309.07597" in loss_fct.citation
    with pytest.raises(ValueError, match="needs the teacher scores"):
        loss_fct(columns, None)
    with pytest.raises(ValueError, match=r"expected \(5, 4\)"):
        loss_fct(columns, teacher[:, :3])
    with pytest.raises(ValueError, match="distill_weight must be a number >= 0"):
        MultiPositiveInfoNCELoss(model, distill_weight=-1.0)


@pytest.mark.parametrize("margin", [None, 0.2])
def test_cached_loss_equals_the_uncached_one(margin):
    columns, teacher = batch_columns(batch=5)
    results = []
    for cached in (False, True):
        model = TinyEncoder()
        kwargs = {"temperature": 0.05, "distill_weight": 0.5, "margin": margin}
        loss_fct = (
            CachedMultiPositiveInfoNCELoss(model, mini_batch_size=2, **kwargs)
            if cached
            else MultiPositiveInfoNCELoss(model, **kwargs)
        )
        output = loss_fct(columns, teacher)
        torch.stack(list(output.values())).sum().backward()  # what CoDiEmbTrainer does with a dict
        results.append(({k: v.item() for k, v in output.items()}, model.linear.weight.grad.clone()))
    (values0, grad0), (values1, grad1) = results
    assert values1 == pytest.approx(values0, rel=1e-10)
    torch.testing.assert_close(grad1, grad0, rtol=1e-10, atol=1e-12)


def test_collator_keeps_the_scores_of_the_sampled_texts():
    # Each text names its index; its teacher score is its index (+ 100 for negatives): label k must match column k.
    rows = [
        {"query": f"q{r}", "positives": [f"p{i}" for i in range(n)], "negatives": [f"n{i}" for i in range(m)],
         "positive_scores": [float(i) for i in range(n)], "negative_scores": [100.0 + i for i in range(m)],
         "dataset_name": "toy"}
        for r, (n, m) in enumerate([(3, 5), (1, 2), (2, 4), (4, 1)])
    ]  # fmt: skip
    collator = CoDiEmbDataCollator(preprocess_fn=None, num_positives=2, num_negatives=3, keep_teacher_scores=True)
    seen_repeats = False
    for _ in range(5):
        collator._rng = collator._next_batch_rng()
        for row in rows:
            expanded = collator.expand_ir_row(row)
            texts = [expanded[f"positive_{k}"] for k in range(2)] + [expanded[f"negative_{k}"] for k in range(3)]
            expected = [float(t[1:]) + (100.0 if t[0] == "n" else 0.0) for t in texts]
            assert expanded["label"] == expected
            seen_repeats |= len(set(texts)) < len(texts)  # rows with fewer texts sample with replacement
    assert seen_repeats
    # Off (the default): the scores are dropped and no label is made.
    plain = CoDiEmbDataCollator(preprocess_fn=None, num_positives=2, num_negatives=3)
    plain._rng = random.Random(0)
    expanded = plain.expand_ir_row(rows[0])
    assert "label" not in expanded and "positive_scores" not in expanded
    # The sampled texts do not depend on keeping the scores (same draws).
    collator._rng, plain._rng = random.Random(5), random.Random(5)
    kept, dropped = collator.expand_ir_row(rows[2]), plain.expand_ir_row(rows[2])
    assert {k: v for k, v in kept.items() if k != "label"} == dropped
    with pytest.raises(TrainingDataError, match=r"Training dataset 'toy', IR row with query 'q1', field 'negative_scores'"):
        collator.expand_ir_row(dict(rows[1], negative_scores=None))


def test_rows_without_scores_are_refused_with_dataset_row_and_field(tmp_path, caplog):
    from datasets import Dataset

    dataset = Dataset.from_dict(
        {
            "query": ["a", "e", "h"],
            "positives": [["b"], ["f"], ["i"]],
            "negatives": [["c", "d"], ["g"], ["j"]],
            "positive_scores": [[3.0], [2.0], None],
            "negative_scores": [[0.5, 0.1], [1.0], [0.0]],
        }
    )
    with pytest.raises(TrainingDataError, match=r"Training dataset 'flag' \(ir\), row 2, field 'positive_scores': missing"):
        check_teacher_scores("flag", dataset, num_negatives=1)
    check_teacher_scores("flag", dataset.select([0, 1]), num_negatives=1)
    with pytest.raises(TrainingDataError, match=r"row 1, field 'negative_scores': has 1 scores for 2 texts"):
        check_teacher_scores("x", dataset.select([0, 1]).map(lambda r: {"negatives": ["u", "v"]}), num_negatives=2)
    with pytest.raises(TrainingDataError, match=r"row 0, field 'positive_scores': item 0 is nan, not a finite number"):
        check_teacher_scores("x", dataset.select([0]).map(lambda r: {"positive_scores": [float("nan")]}), num_negatives=1)
    no_column = dataset.remove_columns(["negative_scores"])
    with pytest.raises(TrainingDataError, match=r"Training dataset 'y' \(ir\): no 'negative_scores' column"):
        check_teacher_scores("y", no_column, num_negatives=2)
    check_teacher_scores("y", no_column.select([0, 1]), num_negatives=0)  # no negatives sampled: none needed

    # FlagEmbedding files: pos_scores / neg_scores are read as the teacher scores; a file where only some records
    # carry them loses the columns (as before), and the warning names the first record without them.
    records = [
        {"query": "a", "pos": ["b"], "neg": ["c", "d"], "pos_scores": [3.0], "neg_scores": [0.5, 0.1]},
        {"query": "h", "pos": ["i"], "neg": ["j"]},
        {"query": "e", "pos": ["f"], "neg": ["g"], "pos_scores": [2.0], "neg_scores": [1.0]},
    ]
    path = tmp_path / "flag.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert load_ir_dataset(path).column_names == ["query", "positives", "negatives"]
    assert "'positive_scores' is present in 2 of 3 records only (the first without it: record 2)" in caplog.text
    full = tmp_path / "full.jsonl"
    full.write_text("".join(json.dumps(r) + "\n" for r in (records[0], records[2])))
    loaded = load_ir_dataset(full)
    assert loaded["positive_scores"] == [[3.0], [2.0]] and loaded["negative_scores"] == [[0.5, 0.1], [1.0]]
    check_teacher_scores("full", loaded, num_negatives=2)


def flag_dataset(rows: int = 8, with_scores: bool = True):
    from datasets import Dataset

    rng = random.Random(1)
    words = ["apple", "river", "engine", "garden", "violin", "planet", "market", "winter"]

    def sentence(n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(n))

    data = {
        "query": [sentence(3) for _ in range(rows)],
        "positives": [[sentence(4), sentence(4)] for _ in range(rows)],
        "negatives": [[sentence(5) for _ in range(3)] for _ in range(rows)],
    }
    if with_scores:
        data["positive_scores"] = [[rng.uniform(3, 6) for _ in range(2)] for _ in range(rows)]
        data["negative_scores"] = [[rng.uniform(-3, 1) for _ in range(3)] for _ in range(rows)]
    return Dataset.from_dict(data)


@pytest.mark.parametrize("mini_batch", [None, 2])
def test_trainer_step_logs_the_kl_component(tmp_path, tiny_model_dir, mini_batch):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    args = CoDiEmbTrainingArguments(
        output_dir=str(tmp_path / "run"), ir_batch_size=4, num_positives=2, num_negatives=2, max_steps=2,
        logging_steps=1, save_strategy="no", report_to=[], seed=0, use_cpu=True, disable_tqdm=True,
        distill_weight=0.5, teacher_temperature=2.0, ir_mini_batch_size=mini_batch,
    )  # fmt: skip
    trainer = CoDiEmbTrainer(model=model, args=args, train_dataset={"toy_ir": flag_dataset()})
    assert trainer.data_collator.keep_teacher_scores
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "toy_ir/loss" in entry]
    assert len(logged) == 2
    for entry in logged:
        assert entry["toy_ir/distill_kl"] > 0 and entry["toy_ir/info_nce"] > 0
        assert entry["toy_ir/loss"] == pytest.approx(entry["toy_ir/info_nce"] + entry["toy_ir/distill_kl"], abs=2e-4)


def test_trainer_refuses_a_dataset_without_scores_before_training(tmp_path, tiny_model_dir):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    args = CoDiEmbTrainingArguments(
        output_dir=str(tmp_path / "run"), ir_batch_size=4, num_negatives=2, max_steps=1, report_to=[],
        use_cpu=True, distill_weight=1.0,
    )  # fmt: skip
    with pytest.raises(TrainingDataError, match=r"Training dataset 'toy_ir' \(ir\): no 'positive_scores' column"):
        CoDiEmbTrainer(model=model, args=args, train_dataset={"toy_ir": flag_dataset(with_scores=False)})
    with pytest.raises(RecipeError, match="distill_weight.*must be a number >= 0"):
        CoDiEmbTrainingArguments(output_dir=str(tmp_path), distill_weight=-0.5, report_to=[])
    with pytest.raises(RecipeError, match="teacher_temperature.*must be a number > 0"):
        CoDiEmbTrainingArguments(output_dir=str(tmp_path), teacher_temperature=0, report_to=[])
