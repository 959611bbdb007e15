"""[FlagEmbedding] Distillation of teacher scores (e.g. a reranker's) into the IR loss: KL over each query's candidates.

FlagEmbedding trains its embedders with ``knowledge_distillation``: each training record carries ``pos_scores`` /
``neg_scores`` from a teacher, and with ``kd_loss_type="kl_div"`` the loss of a query is computed between the
teacher's softmax over the query's own group (its positive and its hard negatives) and the student's softmax over
the same passages, added to the contrastive loss. :class:`~hf_codiemb.losses.MultiPositiveInfoNCELoss` offers it with
``distill_weight > 0``; the group of a query is its sampled positives and its own sampled hard negatives.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from sentence_transformers.util import cos_sim
from torch import Tensor

FLAGEMBEDDING_CITATION = """
@misc{bge_embedding,
    title={C-Pack: Packaged Resources To Advance General Chinese Embedding},
    author={Shitao Xiao and Zheng Liu and Peitian Zhang and Niklas Muennighoff},
    year={2023},
    eprint={2309.07597},
    archivePrefix={arXiv},
    primaryClass={cs.CL}
}
"""


def teacher_distillation_kl(
    query_embeddings: Tensor,
    positive_embeddings: Tensor,
    negative_embeddings: Tensor | None,
    teacher_scores: Tensor,
    temperature: float = 0.02,
    teacher_temperature: float = 1.0,
    similarity_fct: Callable[[Tensor, Tensor], Tensor] = cos_sim,
) -> Tensor:
    """``KL(teacher || student)`` over each query's own candidates, averaged over the queries.

    For query ``i`` with candidates ``c_1 .. c_K`` (its ``P`` positives, then its ``N`` hard negatives) and teacher
    scores ``t_i1 .. t_iK`` in the same order::

        teacher_i = softmax(t_i / teacher_temperature)
        student_i = softmax(s(q_i, c_k) / temperature)
        loss = mean_i sum_k teacher_ik * (log teacher_ik - log student_ik)

    FlagEmbedding's ``kl_div`` computes ``-sum_k teacher_ik * log student_ik`` (the cross-entropy); the two differ by
    the teacher's entropy, a constant, so the gradients are the same, and the KL is 0 when the student matches.

    Args:
        query_embeddings: ``(B, D)``.
        positive_embeddings: ``(B, P, D)``, the positives of the same queries (not gathered).
        negative_embeddings: ``(B, N, D)`` or ``None``.
        teacher_scores: ``(B, P + N)`` teacher scores of the positives, then the negatives.
        temperature: Temperature of the student's softmax (the InfoNCE's).
        teacher_temperature: Temperature of the teacher's softmax.
        similarity_fct: Similarity matrix function.

    Returns:
        Scalar tensor.
    """
    candidates = positive_embeddings
    if negative_embeddings is not None and negative_embeddings.size(1) > 0:
        candidates = torch.cat([positive_embeddings, negative_embeddings], dim=1)
    batch_size, group_size, dim = candidates.shape
    if query_embeddings.size(0) != batch_size:
        raise ValueError(f"{query_embeddings.size(0)} queries but candidates of {batch_size} rows.")
    if teacher_scores.shape != (batch_size, group_size):
        raise ValueError(
            f"Teacher scores must have shape (queries, positives + negatives) = ({batch_size}, {group_size}), got "
            f"{tuple(teacher_scores.shape)}."
        )
    rows = torch.arange(batch_size, device=query_embeddings.device)
    similarities = similarity_fct(query_embeddings, candidates.reshape(-1, dim)).view(
        batch_size, batch_size, group_size
    )
    log_student = F.log_softmax(similarities[rows, rows] / temperature, dim=1)
    teacher = teacher_scores.detach().to(device=log_student.device, dtype=log_student.dtype)
    log_teacher = F.log_softmax(teacher / teacher_temperature, dim=1)
    return F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
