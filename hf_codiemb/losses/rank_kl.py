from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from sentence_transformers import util
from sentence_transformers.sentence_transformer.model import SentenceTransformer
from torch import Tensor

from ._common import CODIEMB_CITATION, PairScoreLoss, function_name
from .functional import rank_kl_loss

ALL_EQUAL_GOLD: tuple[str, ...] = ("uniform_target", "zero")


def check_rank_kl_options(temperature: float, reduction: str, all_equal_gold: str, prefix: str = "") -> None:
    """Raise a ``ValueError`` naming the option (``prefix`` + its name) when a rank-KL option is out of range."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}.")
    if reduction not in ("batchmean", "sum"):
        raise ValueError(f"{prefix}reduction must be 'batchmean' or 'sum', got {reduction!r}.")
    if all_equal_gold not in ALL_EQUAL_GOLD:
        raise ValueError(f"{prefix}all_equal_gold must be one of {ALL_EQUAL_GOLD}, got {all_equal_gold!r}.")


class RankKLLoss(PairScoreLoss):
    def __init__(
        self,
        model: SentenceTransformer | None,
        temperature: float = 0.05,
        reduction: Literal["batchmean", "sum"] = "batchmean",
        similarity_fct: Callable[[Tensor, Tensor], Tensor] = util.pairwise_cos_sim,
        all_equal_gold: Literal["uniform_target", "zero"] = "uniform_target",
    ) -> None:
        """
        Rank-KL loss for Semantic Textual Similarity (STS): a KL divergence between a target distribution built from
        the gold *ranks* and the softmax of the predicted similarities. For predicted similarities ``c`` and gold
        scores ``y`` of a batch of ``n`` pairs:

        - ``r_i`` = rank of ``y_i`` among the batch, ascending, 0-based, ties sharing their average rank, divided by
          ``n - 1`` so the lowest gold score gets 0 and the highest 1;
        - ``target = softmax(r / temperature)``, ``log_pred = log_softmax(c / temperature)``;
        - ``loss = sum_i target_i * (log target_i - log_pred_i)``, divided by ``n`` for ``reduction="batchmean"``.

        ``reduction="batchmean"`` matches the reference code, which calls
        ``F.kl_div(log_pred, target, reduction="batchmean")`` on 1-D tensors (that divides the sum by ``n``);
        ``"sum"`` gives the plain KL divergence.

        Because only ranks enter the target, the loss aligns with Spearman correlation and ignores the scale of the
        gold scores. A batch of one pair gives loss 0. A batch in which every gold score is equal has no ranking
        information; what happens then is set by ``all_equal_gold``:

        - ``"uniform_target"`` (default, the reference's behaviour): every normalised rank is the same, so the target
          is uniform and the loss pulls all predictions of the batch towards equality (the reference divides the
          ranks by ``n - 1`` without a special case, which gives exactly this).
        - ``"zero"`` (ours, an option): the loss is 0 with zero gradients, so such a batch does not move the model.

        Args:
            model: SentenceTransformer model (may be ``None`` when only :meth:`compute_from_scores` is used).
            temperature: Temperature of both softmaxes (reference: 0.05).
            reduction: ``"batchmean"`` (sum / n, the reference) or ``"sum"``.
            all_equal_gold: ``"uniform_target"`` (the reference) or ``"zero"`` (ours), see above.
            similarity_fct: Function computing the PAIRWISE similarity of two embedding batches.

        References:
            - CoDiEmb: https://arxiv.org/abs/2508.11442 (reference code: TencentCloudADP/youtu-embedding,
              ``RankKLDivergenceLoss``)

        Requirements:
            - Sentence pairs with a float gold similarity score.

        Relations:
            - :class:`CoDiEmbSTSLoss` uses it as its ``rank_kl`` component (weight 5 in the reference).
            - :class:`SoftSpearmanLoss` also targets the rank order, through a differentiable rank correlation.

        Inputs:
            +--------------------------------+------------------------+
            | Inputs                         | Labels                 |
            +================================+========================+
            | (sentence_A, sentence_B) pairs | float similarity score |
            +--------------------------------+------------------------+

        Example:
            ::

                import torch
                from hf_codiemb.losses import RankKLLoss

                loss = RankKLLoss(model=None, temperature=0.05)
                predicted = torch.tensor([0.9, 0.2, 0.5, 0.5], requires_grad=True)
                value = loss.compute_from_scores(predicted, torch.tensor([5.0, 1.0, 3.0, 3.0]))
                value.backward()
        """
        super().__init__()
        check_rank_kl_options(temperature, reduction, all_equal_gold)
        self.model = model
        self.temperature = temperature
        self.reduction = reduction
        self.similarity_fct = similarity_fct
        self.all_equal_gold = all_equal_gold

    def _loss(self, predicted: Tensor, gold: Tensor) -> Tensor:
        return rank_kl_loss(predicted, gold, self.temperature, self.reduction, self.all_equal_gold)

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "reduction": self.reduction,
            "all_equal_gold": self.all_equal_gold,
            "similarity_fct": function_name(self.similarity_fct),
        }

    @property
    def citation(self) -> str:
        return CODIEMB_CITATION
