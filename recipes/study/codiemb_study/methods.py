"""The training set-ups compared by the CoDiEmb study (issue 5): CoDiEmb and the simpler alternatives.

Every method starts from the same recipe (model, data, optimisation, step budget) and changes only what defines it:
which data it trains on, how batches are formed and which loss each batch gets.

| key | what it trains | batches | loss |
|---|---|---|---|
| ``ir_only`` | the IR records | IR | :class:`~hf_codiemb.losses.MultiPositiveInfoNCELoss` |
| ``sts_only`` | the STS pairs | STS | :class:`~hf_codiemb.losses.CoDiEmbSTSLoss` |
| ``mixed_infonce`` | IR records + STS pairs as IR records | mixed (one shuffled pool) | InfoNCE for all |
| ``cosent`` | STS pairs (scores to [0, 1]) + IR records as 1/0 pairs | mixed (one shuffled pool) | CoSENT for all |
| ``sts_cosine`` | the STS pairs (scores to [0, 1]) | STS | sentence-transformers ``CosineSimilarityLoss`` |
| ``sts_cosent`` | the STS pairs (scores to [0, 1]) | STS | sentence-transformers ``CoSENTLoss`` |
| ``codiemb`` | both | one task per batch (task-balanced) | the task's loss |
| ``ratio_ir3_sts1`` etc. | both | one task per batch, IR:STS share of updates fixed | the task's loss |

How STS pairs become IR records for ``mixed_infonce``: :func:`hf_codiemb.data.ir_train_from_sts_pairs` (pairs scored
>= 4 give query -> partner, low-scored partners are the hard negatives), the usual way a single contrastive loss is
fed STS data. On STS-B English, whose IR task is itself built that way, those records repeat the IR records.

How IR records become pairs for ``cosent``: :func:`hf_codiemb.data.labelled_pairs_from_ir_records` (query-positive
scored 1, query-negative scored 0); STS scores are rescaled from ``sts_score_range`` to [0, 1] so that the two kinds
of pairs share one scale inside a mixed batch.

``sts_cosine`` and ``sts_cosent`` are the plain sentence-transformers STS losses a user would pick first, on the STS
data alone with the same budget: gold scores rescaled from ``sts_score_range`` to [0, 1] (``CosineSimilarityLoss``
regresses the cosine onto that value; ``CoSENTLoss`` only uses the order of the scores, which the rescaling keeps).

(h) is not a training method: :data:`RATIO_FUSION_ROWS` fuse the final models of the IR-heavy and STS-heavy runs of
the ratio sweep (:data:`RATIO_FUSION_INPUTS`, same seed) by delta fusion and by a uniform soup (base = the encoder).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from datasets import Dataset, concatenate_datasets

from hf_codiemb.columns import IR_COLUMNS, STS_COLUMNS
from hf_codiemb.data import ir_train_from_sts_pairs, labelled_pairs_from_ir_records


@dataclass
class MethodSetup:
    """What one method trains on: named datasets, their tasks and an optional loss (default: each task's loss)."""

    datasets: dict[str, Dataset]
    tasks: dict[str, str]
    loss: Callable[[Any], Any] | None = None


@dataclass(frozen=True)
class StudyMethod:
    """A method of the study: its key, its label in tables and plots, and how it builds its training set-up."""

    key: str
    label: str
    build: Callable[[Mapping[str, Dataset], Mapping[str, str], Any, tuple[float, float]], MethodSetup]
    task_ratio: str | None = None  # the IR:STS share of updates (``task_ratio`` argument); None = proportional
    ir_share: float | None = None  # the IR share of updates in the ratio sweep (None: not part of the sweep)
    pooled: bool = False  # batches drawn from one pool of both tasks' data (no per-task update count)


def _of_task(datasets: Mapping[str, Dataset], tasks: Mapping[str, str], task: str) -> dict[str, Dataset]:
    selected = {name: dataset for name, dataset in datasets.items() if tasks[name] == task}
    if not selected:
        raise ValueError(f"The recipe has no {task.upper()} training data, which this method needs")
    return selected


def _single_task(task: str):
    def build(datasets, tasks, args, score_range) -> MethodSetup:
        selected = _of_task(datasets, tasks, task)
        return MethodSetup(selected, {name: task for name in selected})

    return build


def _both_tasks(datasets, tasks, args, score_range) -> MethodSetup:
    _of_task(datasets, tasks, "ir"), _of_task(datasets, tasks, "sts")
    return MethodSetup(dict(datasets), dict(tasks))


def _mixed_infonce(datasets, tasks, args, score_range) -> MethodSetup:
    ir = list(_of_task(datasets, tasks, "ir").values())
    sts_as_ir = [
        ir_train_from_sts_pairs(sts, num_negatives=max(args.num_negatives, 1), seed=args.seed)
        for sts in _of_task(datasets, tasks, "sts").values()
    ]
    pool = concatenate_datasets([d.select_columns(list(IR_COLUMNS)) for d in ir + sts_as_ir])
    return MethodSetup({"mixed": pool}, {"mixed": "ir"})


def _unit_scores(datasets: Mapping[str, Dataset], tasks: Mapping[str, str], score_range) -> dict[str, Dataset]:
    """The recipe's STS pairs with their gold scores rescaled from ``score_range`` to [0, 1]."""
    low, high = score_range
    if not high > low:
        raise ValueError(f"sts_score_range must have high > low to rescale STS scores, got {score_range}")
    return {
        name: d.select_columns(list(STS_COLUMNS)).map(lambda row: {"score": (row["score"] - low) / (high - low)})
        for name, d in _of_task(datasets, tasks, "sts").items()
    }


def _sts_only_with(loss_name: str):
    """A method training a plain sentence-transformers STS loss on the STS pairs alone (scores in [0, 1])."""

    def build(datasets, tasks, args, score_range) -> MethodSetup:
        from sentence_transformers.sentence_transformer import losses

        sts = _unit_scores(datasets, tasks, score_range)
        return MethodSetup(sts, {name: "sts" for name in sts}, loss=getattr(losses, loss_name))

    return build


def _cosent(datasets, tasks, args, score_range) -> MethodSetup:
    from sentence_transformers.sentence_transformer.losses import CoSENTLoss

    sts = list(_unit_scores(datasets, tasks, score_range).values())
    ir_pairs = [
        labelled_pairs_from_ir_records(d, num_negatives=args.num_negatives)
        for d in _of_task(datasets, tasks, "ir").values()
    ]
    pool = concatenate_datasets(sts + ir_pairs)
    return MethodSetup({"cosent": pool}, {"cosent": "sts"}, loss=CoSENTLoss)


#: The ratio sweep (g): IR share of optimizer updates; (a) and (b) are its end points (shares 1 and 0).
RATIO_SWEEP = {"ratio_ir3_sts1": (3, 1), "ratio_ir1_sts1": (1, 1), "ratio_ir1_sts3": (1, 3)}

METHODS: dict[str, StudyMethod] = {
    method.key: method
    for method in [
        StudyMethod("ir_only", "(a) IR only: InfoNCE", _single_task("ir"), ir_share=1.0),
        StudyMethod("sts_only", "(b) STS only: CoDiEmb STS loss", _single_task("sts"), ir_share=0.0),
        StudyMethod("sts_cosine", "(b2) CosineSimilarityLoss, STS only", _sts_only_with("CosineSimilarityLoss")),
        StudyMethod("sts_cosent", "(b3) CoSENTLoss, STS only", _sts_only_with("CoSENTLoss")),
        StudyMethod("mixed_infonce", "(c) mixed-task batches, one InfoNCE loss", _mixed_infonce, pooled=True),
        StudyMethod("cosent", "(d) CoSENT only (mixed batches)", _cosent, pooled=True),
        StudyMethod("codiemb", "(e) CoDiEmb (task-balanced, task losses)", _both_tasks),
        *[
            StudyMethod(key, f"(g) CoDiEmb IR:STS = {ir}:{sts}", _both_tasks, f"ir:{ir},sts:{sts}", ir / (ir + sts))
            for key, (ir, sts) in RATIO_SWEEP.items()
        ],
    ]
}

#: Rows computed from the checkpoints of the ``codiemb`` run (no extra training): (f) and its uniform-soup control.
FUSION_ROWS = {
    "codiemb_delta_fusion": "(f) CoDiEmb + delta fusion (p=1, element)",
    "codiemb_uniform_soup": "(f') CoDiEmb + uniform soup (control)",
}

#: The ratio-sweep runs whose final models (h) fuses: the IR-heavy (3:1) and the STS-heavy (1:3) run of one seed.
RATIO_FUSION_INPUTS = ("ratio_ir3_sts1", "ratio_ir1_sts3")
#: Rows computed from the final models of :data:`RATIO_FUSION_INPUTS` (no extra training): (h) and its control.
RATIO_FUSION_ROWS = {
    "ratio_delta_fusion": "(h) delta fusion (p=1, element) of the IR:STS 3:1 + 1:3 runs",
    "ratio_uniform_soup": "(h') uniform soup of the IR:STS 3:1 + 1:3 runs (control)",
}
