"""Evaluation during training: every dev set of a recipe as one sentence-transformers evaluator with a combined score.

:class:`CoDiEmbEvaluator` runs the STS and IR evaluators of :mod:`hf_codiemb.evaluation` (the same ones as the
before/after evaluation, with the prompts training uses) and adds three combined metrics:

- ``codiemb_sts_score``: the mean Spearman (cosine) over the STS sets;
- ``codiemb_ir_score``: the mean nDCG@10 over the IR sets;
- ``codiemb_score``: ``ir_weight * codiemb_ir_score + (1 - ir_weight) * codiemb_sts_score`` (the one task's score when
  only one task has dev sets), the evaluator's ``primary_metric``.

Passed to the Trainer as ``evaluator=``, it runs at ``eval_strategy`` / ``eval_steps``; the Trainer prefixes every key
with ``eval_`` (``eval_codiemb_score``, ``eval_stsb_dev_spearman_cosine``, ``eval_scifact_dev_cosine_ndcg@10``) and logs
them to ``trainer_state.json`` and TensorBoard, so ``metric_for_best_model: codiemb_score`` drives
``load_best_model_at_end`` and early stopping.

:func:`cap_ir_corpus` bounds the cost of a large corpus: the documents relevant to an evaluated query are always kept,
the others are a seeded random sample. Scores on a capped corpus are higher than on the whole one (fewer
distractors); they serve to compare checkpoints of one run. The final evaluation of ``codiemb train`` uses the whole
corpus.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from typing import Any

from sentence_transformers.base.evaluation import SequentialEvaluator

logger = logging.getLogger(__name__)

__all__ = ["CoDiEmbEvaluator", "build_training_evaluator", "cap_ir_corpus", "combined_score"]

SCORE_KEY = "codiemb_score"
STS_SCORE_KEY = "codiemb_sts_score"
IR_SCORE_KEY = "codiemb_ir_score"


def combined_score(ir_score: float | None, sts_score: float | None, ir_weight: float) -> float:
    """``ir_weight * ir + (1 - ir_weight) * sts``; the one score that exists when a task has no dev set."""
    if ir_score is None and sts_score is None:
        raise ValueError("no IR and no STS score to combine")
    if ir_score is None:
        return float(sts_score)
    if sts_score is None:
        return float(ir_score)
    return float(ir_weight * ir_score + (1.0 - ir_weight) * sts_score)


def cap_ir_corpus(
    corpus: Mapping[str, str],
    relevant: Mapping[str, set[str]],
    max_documents: int,
    *,
    seed: int = 0,
) -> dict[str, str]:
    """At most ``max_documents`` documents of ``corpus`` (more only if the relevant ones alone exceed it).

    Every document relevant to a query in ``relevant`` is kept; the rest of the budget is a random sample (``seed``)
    of the other documents, in the corpus' order. The same inputs give the same corpus at every evaluation.
    """
    if len(corpus) <= max_documents:
        return dict(corpus)
    keep = {cid for cids in relevant.values() for cid in cids if cid in corpus}
    others = [cid for cid in corpus if cid not in keep]
    budget = max(0, max_documents - len(keep))
    keep.update(random.Random(seed).sample(others, min(budget, len(others))))
    return {cid: text for cid, text in corpus.items() if cid in keep}


class CoDiEmbEvaluator(SequentialEvaluator):
    """
    Every STS and IR dev set in one evaluator, with per-task and combined scores for model selection.

    Runs each sub-evaluator (sentence-transformers' ``EmbeddingSimilarityEvaluator`` / ``InformationRetrievalEvaluator``
    as built by :func:`hf_codiemb.evaluation.build_sts_evaluator` / :func:`~hf_codiemb.evaluation.build_ir_evaluator`),
    returns all their metrics, and adds ``codiemb_sts_score`` (mean of the STS sets' primary metric, Spearman of
    cosine similarities), ``codiemb_ir_score`` (mean of the IR sets' primary metric, nDCG@10) and ``codiemb_score``
    (their weighted mean, see :func:`combined_score`), which is the ``primary_metric``. This is ours: the paper and
    the reference code evaluate only the final model.

    Args:
        sts_evaluators: Evaluators of the STS dev sets.
        ir_evaluators: Evaluators of the IR dev sets.
        ir_weight: Weight of the IR score in ``codiemb_score`` (0..1; 0.5 weighs both tasks alike).

    Example:
        ::

            from hf_codiemb.evaluation import build_sts_evaluator
            from hf_codiemb.training_evaluation import CoDiEmbEvaluator

            evaluator = CoDiEmbEvaluator([build_sts_evaluator(sts_dev, "stsb_dev")], [], ir_weight=0.5)
            trainer = CoDiEmbTrainer(model=model, args=args, train_dataset=train, evaluator=evaluator)
    """

    def __init__(self, sts_evaluators: list[Any], ir_evaluators: list[Any], *, ir_weight: float = 0.5) -> None:
        if not sts_evaluators and not ir_evaluators:
            raise ValueError("CoDiEmbEvaluator needs at least one STS or IR evaluator")
        if not 0.0 <= ir_weight <= 1.0:
            raise ValueError(f"ir_weight must be within [0, 1], got {ir_weight}")
        super().__init__([*sts_evaluators, *ir_evaluators])
        self.sts_evaluators = list(sts_evaluators)
        self.ir_evaluators = list(ir_evaluators)
        self.ir_weight = float(ir_weight)
        self.primary_metric = SCORE_KEY

    def __call__(self, model: Any, output_path: str | None = None, epoch: float = -1, steps: int = -1) -> dict[str, float]:
        results: dict[str, float] = {}
        task_scores: dict[str, list[float]] = {"sts": [], "ir": []}
        for task, evaluators in (("sts", self.sts_evaluators), ("ir", self.ir_evaluators)):
            for evaluator in evaluators:
                metrics = evaluator(model, output_path=output_path, epoch=epoch, steps=steps)
                results.update(metrics)
                task_scores[task].append(float(metrics[evaluator.primary_metric]))
        sts = sum(task_scores["sts"]) / len(task_scores["sts"]) if task_scores["sts"] else None
        ir = sum(task_scores["ir"]) / len(task_scores["ir"]) if task_scores["ir"] else None
        if sts is not None:
            results[STS_SCORE_KEY] = sts
        if ir is not None:
            results[IR_SCORE_KEY] = ir
        results[SCORE_KEY] = combined_score(ir, sts, self.ir_weight)
        self.primary_metric = SCORE_KEY
        logger.info(
            "Dev scores at step %s: %s",
            steps,
            ", ".join(f"{key} {results[key]:.4f}" for key in (SCORE_KEY, STS_SCORE_KEY, IR_SCORE_KEY) if key in results),
        )
        return results

    def get_config_dict(self) -> dict[str, Any]:
        return {"ir_weight": self.ir_weight}


def build_training_evaluator(
    sts_sets: Mapping[str, Any],
    ir_sets: Mapping[str, Any],
    *,
    ir_weight: float = 0.5,
    max_corpus: int | None = None,
    sts_prompt: str | None = None,
    batch_size: int = 32,
    seed: int = 0,
) -> CoDiEmbEvaluator:
    """A :class:`CoDiEmbEvaluator` over the evaluation sets of :func:`hf_codiemb.pipeline.load_eval_sets`.

    Args:
        sts_sets / ir_sets: ``{name: STSEvalSet / IREvalSet}`` as ``load_eval_sets`` returns them (with their prompts).
        ir_weight: Weight of the IR score in ``codiemb_score``.
        max_corpus: Cap on the documents of each IR set's corpus (:func:`cap_ir_corpus`); ``None`` = whole corpus.
        sts_prompt: The prompt of STS sets that carry none of their own.
        batch_size: Encoding batch size.
        seed: Seed of the corpus sample.
    """
    from hf_codiemb.evaluation import build_ir_evaluator, build_sts_evaluator, ir_set_arguments, sts_set_arguments

    sts_evaluators = []
    for name, spec in sts_sets.items():
        data, prompt = sts_set_arguments(spec, sts_prompt)
        sts_evaluators.append(build_sts_evaluator(data, name, batch_size=batch_size, prompt=prompt))
    ir_evaluators = []
    for name, spec in ir_sets.items():
        arguments = ir_set_arguments(name, spec)
        if max_corpus is not None and len(arguments["corpus"]) > max_corpus:
            full = len(arguments["corpus"])
            arguments["corpus"] = cap_ir_corpus(arguments["corpus"], arguments["relevant"], max_corpus, seed=seed)
            logger.info(
                "IR dev set %s: evaluating during training on %d of its %d documents (every relevant one kept)",
                name,
                len(arguments["corpus"]),
                full,
            )
        ir_evaluators.append(build_ir_evaluator(name=name, batch_size=batch_size, **arguments))
    return CoDiEmbEvaluator(sts_evaluators, ir_evaluators, ir_weight=ir_weight)
