from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from sentence_transformers.base.losses.gradcache import (
    CachedLossMixin,
    _validate_mini_batch_num_tokens,
    has_static_embedding_input,
)
from sentence_transformers.sentence_transformer.model import SentenceTransformer
from sentence_transformers.util import cos_sim
from torch import Tensor, nn

from ._common import function_name
from .false_negatives import MarginStrategy
from .multi_positive_info_nce import (
    InBatchPositives,
    MultiPositiveInfoNCELoss,
    masked_multi_positive_info_nce,
    multi_positive_info_nce,
)
from .teacher_distillation import teacher_distillation_kl

GRADCACHE_CITATION = """
@misc{gao2021scaling,
    title={Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup},
    author={Luyu Gao and Yunyi Zhang and Jiawei Han and Jamie Callan},
    year={2021},
    eprint={2101.06983},
    archivePrefix={arXiv},
    primaryClass={cs.LG}
}
"""


class CachedMultiPositiveInfoNCELoss(CachedLossMixin, nn.Module):
    task = "ir"  # the task whose columns it takes (hf_codiemb.training_checks.loss_task)

    def __init__(
        self,
        model: SentenceTransformer,
        num_positives: int = 2,
        temperature: float = 0.02,
        in_batch_negatives: bool = True,
        gather_across_devices: bool = False,
        similarity_fct: Callable[[Tensor, Tensor], Tensor] = cos_sim,
        in_batch_positives: InBatchPositives = "slot",
        mini_batch_size: int = 32,
        mini_batch_num_tokens: int | None = None,
        show_progress_bar: bool = False,
        margin: float | None = None,
        margin_strategy: MarginStrategy = "absolute",
        guide: nn.Module | str | None = None,
        distill_weight: float = 0.0,
        teacher_temperature: float = 1.0,
    ) -> None:
        """
        :class:`~hf_codiemb.losses.MultiPositiveInfoNCELoss` (the CoDiEmb IR objective: multi-positive InfoNCE with
        hard negatives) with gradient caching (GradCache), so that the IR batch, and with it the pool of in-batch
        negatives, is no longer bounded by the activation memory of the encoder.

        The in-batch negatives tie all rows of a batch together, so an IR batch cannot simply be split into
        gradient-accumulation steps. GradCache splits the computation instead, using sentence-transformers' own
        machinery (:class:`~sentence_transformers.base.losses.CachedLossMixin`: mini-batch slicing, the
        :class:`~sentence_transformers.base.losses.gradcache.RandContext` that replays dropout, and the backward
        hook):

            (1) embed every column (query, positives, negatives) in mini-batches of ``mini_batch_size`` rows
                without a computation graph, remembering the RNG state of each mini-batch;
            (2) compute the loss on the whole batch from these embeddings, through the same functional
                :func:`~hf_codiemb.losses.multi_positive_info_nce` as the uncached loss (the queries in chunks of
                ``mini_batch_size`` rows via its ``query_offset``, each chunk against all passages), and
                back-propagate it to the embeddings, whose gradients are cached;
            (3) when the trainer calls ``loss.backward()``, re-embed each mini-batch with a graph (same RNG state,
                hence the same dropout masks) and back-propagate its cached gradient into the model.

        Only one mini-batch of encoder activations is alive at a time, so the memory is about that of a
        ``mini_batch_size`` batch plus the embeddings and one chunk of the similarity matrix; the price is a second
        forward pass of the encoder (roughly 1.3x to 2x the step time). The loss value and the gradients are those of
        :class:`~hf_codiemb.losses.MultiPositiveInfoNCELoss` with the same arguments (up to float rounding), for both
        ``in_batch_positives`` modes, with and without hard or in-batch negatives, and with
        ``gather_across_devices`` (passages of all ranks are gathered with gradients; each rank computes the loss of
        its own queries, ``query_offset = rank * B``), and with the options of the uncached loss: false-negative
        masking (``margin``, ``margin_strategy``, ``guide``) [ours, after GISTEmbed] and distillation from teacher
        scores (``distill_weight``, ``teacher_temperature``) [FlagEmbedding]. The guide embeds the batch without
        gradient in mini-batches of ``mini_batch_size`` rows; the distillation term is computed per query chunk.

        Args:
            model: SentenceTransformer model.
            num_positives: Number of positive columns following the query column (paper: 2).
            temperature: Temperature of the softmax over cosine similarities (paper: 0.02).
            in_batch_negatives: Use the passages of the other queries as extra negatives.
            gather_across_devices: Gather passages across ranks (needs ``in_batch_negatives``; ignored otherwise).
            similarity_fct: Similarity MATRIX function, default ``util.cos_sim``.
            in_batch_positives: ``"slot"`` (default, the reference code's candidates) or ``"all"`` (ours), see
                :class:`~hf_codiemb.losses.MultiPositiveInfoNCELoss`.
            mini_batch_size: Rows embedded at once in steps (1) and (3), and query rows per loss chunk in step (2).
                It bounds the memory; larger is faster.
            mini_batch_num_tokens: If set, the embedding mini-batches are packed by their number of (non-padding)
                tokens instead of ``mini_batch_size`` rows (sentence-transformers' option of the same name).
            show_progress_bar: Show a progress bar over the mini-batches.
            margin: [ours] Remove candidates scoring above the positive minus this margin; ``None`` (default): off.
                See :class:`~hf_codiemb.losses.MultiPositiveInfoNCELoss`.
            margin_strategy: [ours] ``"absolute"`` (default) or ``"relative"``.
            guide: [ours] A frozen SentenceTransformer (or its name or path) that decides the mask; needs ``margin``.
            distill_weight: [FlagEmbedding] Weight of the teacher-score KL term (labels: the teacher scores); 0 is
                off. The forward then returns ``{"info_nce": ..., "distill_kl": ...}``.
            teacher_temperature: [FlagEmbedding] Temperature of the teacher's softmax.

        References:
            - Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup (GradCache):
              https://arxiv.org/abs/2101.06983
            - CoDiEmb: https://arxiv.org/abs/2508.11442 (reference code: TencentCloudADP/youtu-embedding,
              ``training/CoDiEmb/train/loss.py``, ``ContrastiveLoss._loss_ir``)

        Relations:
            - Same loss and gradients as :class:`~hf_codiemb.losses.MultiPositiveInfoNCELoss`, with the memory of a
              ``mini_batch_size`` batch and a second forward pass.
            - :class:`~sentence_transformers.sentence_transformer.losses.CachedMultipleNegativesRankingLoss` is the
              same technique for MultipleNegativesRankingLoss; with ``num_positives=1`` both compute the same loss
              (``scale = 1 / temperature``).

        Requirements:
            1. (query, positive_0, ..., positive_{k-1}, negative_0, ..., negative_{m-1}) tuples with
               ``k = num_positives`` and ``m >= 0`` (what ``CoDiEmbDataCollator`` produces for IR datasets).
            2. A large per-device IR batch (``ir_batch_size``) with a small ``mini_batch_size``; otherwise the
               uncached loss is faster for the same result.
            3. With ``gather_across_devices``: equal local batch sizes on every rank.
            4. Not for models whose inputs cannot be sliced along the batch (``StaticEmbedding``).

        Inputs:
            +------------------------------------------------------------------+--------+
            | Inputs                                                           | Labels |
            +==================================================================+========+
            | (query, positive_0, ..., positive_{k-1}, negative_0, ..., neg_m) | none   |
            +------------------------------------------------------------------+--------+

        Example:
            ::

                from datasets import Dataset
                from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
                from hf_codiemb.losses import CachedMultiPositiveInfoNCELoss

                model = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")
                train_dataset = Dataset.from_dict({
                    "query": ["what is the capital of France", "who wrote Hamlet"],
                    "positive_0": ["Paris is the capital of France.", "Hamlet is a play by Shakespeare."],
                    "positive_1": ["France's capital city is Paris.", "Shakespeare wrote Hamlet around 1600."],
                    "negative_0": ["Lyon is a city in France.", "Macbeth is a tragedy."],
                })
                loss = CachedMultiPositiveInfoNCELoss(model, num_positives=2, mini_batch_size=32)
                trainer = SentenceTransformerTrainer(model=model, train_dataset=train_dataset, loss=loss)
                trainer.train()

            With :class:`~hf_codiemb.trainer.CoDiEmbTrainer`, set ``ir_mini_batch_size`` in the training arguments
            (recipe) instead: the default IR loss is then this one.
        """
        super().__init__()
        if isinstance(model, nn.Sequential) and has_static_embedding_input(model):
            raise ValueError(
                f"{type(self).__name__} is not compatible with a StaticEmbedding model, whose inputs cannot be split "
                "into mini-batches; use MultiPositiveInfoNCELoss instead."
            )
        if isinstance(mini_batch_size, bool) or not isinstance(mini_batch_size, int) or mini_batch_size < 1:
            raise ValueError(f"mini_batch_size must be an integer >= 1, got {mini_batch_size!r}.")
        _validate_mini_batch_num_tokens(mini_batch_num_tokens)
        self.model = model
        # The uncached loss owns and validates the hyperparameters (and lets `loss_task` see an IR loss).
        self.loss = MultiPositiveInfoNCELoss(
            model,
            num_positives=num_positives,
            temperature=temperature,
            in_batch_negatives=in_batch_negatives,
            gather_across_devices=gather_across_devices,
            similarity_fct=similarity_fct,
            in_batch_positives=in_batch_positives,
            margin=margin,
            margin_strategy=margin_strategy,
            guide=guide,
            distill_weight=distill_weight,
            teacher_temperature=teacher_temperature,
        )
        self._metrics: dict[str, Tensor] = {}
        self._guide_embeddings: list[Tensor] | None = None
        self._distill_total: Tensor | None = None
        self._deepspeed_params: list[nn.Parameter] | None = None
        self._minibatches_embedded = self._minibatches_replayed = 0
        self.mini_batch_size = mini_batch_size
        self.mini_batch_num_tokens = mini_batch_num_tokens
        self.show_progress_bar = show_progress_bar

    # The hyperparameters live on the wrapped loss (as in sentence-transformers' cached losses).
    _delegated_to_wrapped_loss = (
        "num_positives",
        "temperature",
        "in_batch_negatives",
        "gather_across_devices",
        "similarity_fct",
        "in_batch_positives",
        "margin",
        "margin_strategy",
        "guide",
        "distill_weight",
        "teacher_temperature",
    )

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._delegated_to_wrapped_loss and isinstance(getattr(self, "loss", None), nn.Module):
            setattr(self.loss, name, value)
        else:
            super().__setattr__(name, value)

    def __getattr__(self, name: str) -> Any:
        if name in type(self)._delegated_to_wrapped_loss:
            return getattr(self._modules["loss"], name)
        return super().__getattr__(name)

    def forward(
        self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None
    ) -> Tensor | dict[str, Tensor]:
        sentence_features = list(sentence_features)
        if len(sentence_features) < 1 + self.num_positives:
            raise ValueError(
                f"{type(self).__name__} expects a query column and {self.num_positives} positive columns "
                f"(num_positives={self.num_positives}), got {len(sentence_features)} columns in total."
            )
        if self.guide is not None:
            self._guide_embeddings = self.loss.embed_with_guide(sentence_features, self.mini_batch_size)
        # Under DeepSpeed, step (3) replays the mini-batches one backward pass each: see embed_minibatch_iter.
        self._deepspeed_params = deepspeed_trainable_parameters(self.model) if torch.is_grad_enabled() else None
        mark_gradients_ready(self._deepspeed_params, True)  # a replay cut short must not leave reductions off
        self._minibatches_embedded = self._minibatches_replayed = 0
        try:
            loss = self.forward_cached(sentence_features, labels)
        finally:
            self._guide_embeddings = None
        if not self.distill_weight:
            return loss
        # The total carries the GradCache backward hook: both components are taken from it, so their sum is it.
        distill = self._distill_total
        return {"info_nce": loss - distill, "distill_kl": distill}

    def embed_minibatch_iter(
        self,
        sentence_feature: dict[str, Tensor],
        with_grad: bool,
        copy_random_state: bool,
        random_states: list[Any] | None = None,
        ranges: list[tuple[int, int]] | None = None,
    ) -> Iterator[tuple[Tensor, Any]]:
        """sentence-transformers' mini-batch embedding, counting the mini-batches of step (1) and, under DeepSpeed,
        holding ZeRO's gradient reduction back until the last mini-batch of step (3).

        Step (3) back-propagates each mini-batch on its own, so every parameter's gradient arrives once per
        mini-batch; ZeRO's gradient hooks (ZeRO-2, or ZeRO-1 with ``overlap_comm`` / ``contiguous_gradients``, as
        ``recipes/accelerate/ds_zero1.json``) reduce a parameter's gradient once per step and stop at the second
        arrival ("Gradient computed twice for this partition", sentence-transformers issue #3173). DeepSpeed's own
        tiled computations solve the same problem with the parameters' ``ds_grad_is_ready`` flag: False while the
        gradients accumulate, True for the last piece, whose arrival reduces the accumulated sum once.
        """
        for item in super().embed_minibatch_iter(sentence_feature, with_grad, copy_random_state, random_states, ranges):
            if not with_grad:
                self._minibatches_embedded += 1
            elif self._deepspeed_params is not None:
                self._minibatches_replayed += 1
                mark_gradients_ready(self._deepspeed_params, self._minibatches_replayed >= self._minibatches_embedded)
            try:
                yield item
            except GeneratorExit:  # closed (each column's iterator is, at its end; or after an error): reductions
                # back on; the next replayed mini-batch sets its own flag before its backward
                mark_gradients_ready(self._deepspeed_params, True)
                raise

    def pop_metrics(self) -> dict[str, Tensor]:
        """What the last batch measured besides the loss (``masked_candidates`` with ``margin``), then forgotten."""
        metrics, self._metrics = self._metrics, {}
        return metrics

    def calculate_loss(
        self, reps: list[list[Tensor]], labels: Tensor | None = None, *, with_backward: bool = False
    ) -> Tensor:
        """The loss of the whole batch from the per-mini-batch column embeddings ``reps[column][mini_batch]``.

        The queries are processed in chunks of ``mini_batch_size`` rows, each against all (gathered) passages, by
        :func:`multi_positive_info_nce` with ``query_offset`` pointing at the chunk's rows; chunk losses are weighted
        by their share of the batch, so their sum is the batch mean. With ``with_backward`` each chunk is
        back-propagated at once (only one chunk of the similarity matrix is alive), then the accumulated gradients
        of the stacked/gathered embeddings are sent back through the stacking and the gathering in one pass, and the
        detached total is returned.
        """
        embeddings = [torch.cat(column) for column in reps]
        queries, positives, negatives = self.loss.split_columns(embeddings)
        batch_size = queries.size(0)
        num_candidates = positives.size(1) + (0 if negatives is None else negatives.size(1))
        teacher = self.loss.teacher_scores(labels, batch_size, num_candidates) if self.distill_weight else None
        guide = None
        if self.guide is not None and self.margin is not None:
            if self._guide_embeddings is None:
                raise ValueError(f"{type(self).__name__} has a guide: call it through forward().")
            guide = self.loss.split_columns(self._guide_embeddings)
        positives, negatives, guide, offset = self.loss.gather_passages(
            queries, positives, negatives, guide, loss_name=type(self).__name__
        )

        inputs = [tensor for tensor in (queries, positives, negatives) if tensor is not None]
        if with_backward:
            # Each chunk's backward stops at these leaves; their gradients go through stack/gather once at the end
            # (one collective per gathered tensor, however many chunks).
            leaves = [tensor.detach().requires_grad_() for tensor in inputs]
        else:
            leaves = inputs
        chunk_queries, chunk_positives = leaves[0], leaves[1]
        chunk_negatives = leaves[2] if negatives is not None else None

        total = queries.new_zeros(())
        masked_total = torch.zeros((), dtype=torch.long, device=queries.device)
        distill_total = queries.new_zeros(())
        options = {
            "temperature": self.temperature,
            "in_batch_negatives": self.in_batch_negatives,
            "similarity_fct": self.similarity_fct,
            "in_batch_positives": self.in_batch_positives,
        }
        for begin in range(0, batch_size, self.mini_batch_size):
            end = min(begin + self.mini_batch_size, batch_size)
            share = (end - begin) / batch_size
            if self.margin is None:
                chunk_loss = multi_positive_info_nce(
                    chunk_queries[begin:end], chunk_positives, chunk_negatives, query_offset=offset + begin, **options
                )
            else:
                chunk_guide = None if guide is None else (guide[0][begin:end], guide[1], guide[2])
                chunk_loss, masked = masked_multi_positive_info_nce(
                    chunk_queries[begin:end], chunk_positives, chunk_negatives, query_offset=offset + begin,
                    **options, margin=self.margin, margin_strategy=self.margin_strategy, guide_embeddings=chunk_guide,
                )  # fmt: skip
                masked_total += masked
            chunk_loss = chunk_loss * share
            if teacher is not None:
                # The chunk's own rows of the (possibly gathered) passages: rows offset + begin .. offset + end.
                own = slice(offset + begin, offset + end)
                kl = teacher_distillation_kl(
                    chunk_queries[begin:end], chunk_positives[own],
                    None if chunk_negatives is None else chunk_negatives[own], teacher[begin:end],
                    temperature=self.temperature, teacher_temperature=self.teacher_temperature,
                    similarity_fct=self.similarity_fct,
                )  # fmt: skip
                kl = self.distill_weight * kl * share
                distill_total = distill_total + kl.detach()
                chunk_loss = chunk_loss + kl
            if with_backward:
                chunk_loss.backward()
                chunk_loss = chunk_loss.detach()
            total = total + chunk_loss
        if self.margin is not None:
            self._metrics = {"masked_candidates": masked_total}
        self._distill_total = distill_total

        if with_backward:
            pairs = [(tensor, leaf.grad) for tensor, leaf in zip(inputs, leaves) if leaf.grad is not None]
            torch.autograd.backward([tensor for tensor, _ in pairs], [grad for _, grad in pairs])
        return total

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "num_positives": self.num_positives,
            "temperature": self.temperature,
            "in_batch_negatives": self.in_batch_negatives,
            "gather_across_devices": self.gather_across_devices,
            "similarity_fct": function_name(self.similarity_fct),
            "in_batch_positives": self.in_batch_positives,
            "mini_batch_size": self.mini_batch_size,
            "mini_batch_num_tokens": self.mini_batch_num_tokens,
            **self.loss.option_config(),
        }

    @property
    def citation(self) -> str:
        return self.loss.citation + GRADCACHE_CITATION


def deepspeed_trainable_parameters(model: nn.Module) -> list[nn.Parameter] | None:
    """The trainable parameters of the model a ``DeepSpeedEngine`` wraps (the Trainer hands losses the wrapped
    model), or None when ``model`` is not a DeepSpeed engine (DeepSpeed is not imported for the check)."""
    if not any(cls.__name__ == "DeepSpeedEngine" for cls in type(model).__mro__):
        return None
    return [param for param in model.module.parameters() if param.requires_grad]


def mark_gradients_ready(parameters: list[nn.Parameter] | None, ready: bool) -> None:
    """Set DeepSpeed's ``ds_grad_is_ready`` on ``parameters``: ZeRO reduces a parameter's gradient when it arrives
    only while the flag is True (an absent flag counts as True)."""
    for param in parameters or ():
        param.ds_grad_is_ready = ready
