"""Matryoshka embeddings around a CoDiEmb loss: the task's loss at several leading dimensions of the embedding."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss
from sentence_transformers.sentence_transformer.losses.matryoshka import ForwardDecorator
from torch import Tensor, nn


class CoDiEmbMatryoshkaLoss(MatryoshkaLoss):
    """
    sentence-transformers' :class:`~sentence_transformers.sentence_transformer.losses.MatryoshkaLoss` for losses that
    return their components as a ``dict`` (the CoDiEmb STS loss always, the IR loss with distillation): the wrapped
    loss is computed on the embeddings truncated to each of ``matryoshka_dims`` (the model is run once, its outputs
    reused), and every component comes back weighted under ``"dim_{d}/{component}"``, so the trainer's sum of the
    components is ``sum_d w_d * loss_d`` and each one is logged. Labels are passed unchanged (CoDiEmb's labels are
    gold or teacher scores, never embeddings). [ours: the wrapping; the method is Matryoshka Representation Learning]

    Losses that re-embed during the backward pass (GradCache: ``CachedMultiPositiveInfoNCELoss``) are refused: the
    forward cache this uses is gone by then.

    References:
        - Kusupati et al., Matryoshka Representation Learning, arXiv 2205.13147.
        - sentence-transformers' MatryoshkaLoss.

    Args:
        model: The SentenceTransformer model.
        loss: The loss computed at each dimension (e.g. :class:`~hf_codiemb.losses.CoDiEmbSTSLoss`).
        matryoshka_dims: Embedding dimensions, e.g. ``[384, 256, 128, 64]`` (none above the model's).
        matryoshka_weights: Weight of each dimension's loss (default 1 each).

    Inputs:
        As ``loss`` takes them.

    Relations:
        - With a single dimension equal to the model's, this is ``loss`` itself (its components renamed).

    Example:
        ::

            from sentence_transformers import SentenceTransformer
            from hf_codiemb.losses import CoDiEmbMatryoshkaLoss, CoDiEmbSTSLoss

            model = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")
            loss = CoDiEmbMatryoshkaLoss(model, CoDiEmbSTSLoss(model), [384, 256, 128, 64])
    """

    def __init__(
        self,
        model: SentenceTransformer,
        loss: nn.Module,
        matryoshka_dims: Sequence[int],
        matryoshka_weights: Sequence[float] | None = None,
    ) -> None:
        if getattr(loss, "uses_gradient_cache", False):
            raise ValueError(
                f"{type(loss).__name__} re-embeds during the backward pass (gradient cache), which Matryoshka "
                "training cannot truncate: unset ir_mini_batch_size or matryoshka_dims"
            )
        super().__init__(model, loss, list(matryoshka_dims), matryoshka_weights, n_dims_per_step=-1)

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> dict[str, Tensor]:
        sentence_features = list(sentence_features)
        original_forward = self.model.forward
        components: dict[str, Tensor] = {}
        try:
            decorated_forward = ForwardDecorator(original_forward)
            self.model.forward = decorated_forward
            for dim, weight in zip(self.matryoshka_dims, self.matryoshka_weights):
                decorated_forward.set_dim(dim)
                output = self.loss(sentence_features, labels)
                for key, value in (output if isinstance(output, dict) else {"loss": output}).items():
                    components[f"dim_{dim}/{key}"] = weight * value
        finally:
            self.model.forward = original_forward
        return components

    def pop_metrics(self) -> dict[str, Tensor]:
        """The wrapped loss's metrics of the last batch (e.g. masked candidates), if it records any."""
        pop = getattr(self.loss, "pop_metrics", None)
        return pop() if callable(pop) else {}
