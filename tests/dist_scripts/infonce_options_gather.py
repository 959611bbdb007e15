"""Launched by tests/test_distributed_ir_options.py with ``torch.distributed.run --nproc_per_node 2`` (gloo, CPU).

The IR loss's options with cross-device gathering: false-negative masking judged by the model or by a guide, and
distillation from teacher scores. Each rank embeds its slice of one fixed random batch with a shared linear
"encoder", computes MultiPositiveInfoNCELoss(gather_across_devices=True) and CachedMultiPositiveInfoNCELoss (mini-
batches of 2 rows) for each configuration of :data:`CONFIGS`, back-propagates the sum of the loss components (what
CoDiEmbTrainer does), averages parameter gradients and losses over ranks (what DDP does) and sums the masked
counts. Rank 0 writes the results to ``<out_dir>/result.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from hf_codiemb.losses import CachedMultiPositiveInfoNCELoss, MultiPositiveInfoNCELoss

LOCAL_BATCH, NUM_POSITIVES, NUM_NEGATIVES, DIM_IN, DIM_OUT, GUIDE_DIM, TEMPERATURE = 3, 2, 2, 5, 4, 3, 0.05
CACHED_MINI_BATCH = 2
CONFIGS = {
    "self_absolute": {"margin": 0.3, "margin_strategy": "absolute", "in_batch_positives": "slot"},
    "guide_relative": {"margin": 0.2, "margin_strategy": "relative", "in_batch_positives": "all", "guide": True},
    "margin_and_distill": {"margin": 0.3, "distill_weight": 0.5, "teacher_temperature": 2.0},
}


class LinearEncoder(nn.Module):
    def __init__(self, dim_out: int = DIM_OUT) -> None:
        super().__init__()
        self.linear = nn.Linear(DIM_IN, dim_out).double()

    def forward(self, features: dict) -> dict:
        return {"sentence_embedding": self.linear(features["x"])}


def make_inputs(world_size: int) -> tuple[dict, dict, list[torch.Tensor], torch.Tensor]:
    """Same seed on every rank: identical weights (model and guide), global batch and teacher scores."""
    torch.manual_seed(1234)
    state = LinearEncoder().state_dict()
    guide_state = LinearEncoder(GUIDE_DIM).state_dict()
    num_columns = 1 + NUM_POSITIVES + NUM_NEGATIVES
    columns = [torch.randn(world_size * LOCAL_BATCH, DIM_IN, dtype=torch.float64) for _ in range(num_columns)]
    teacher = torch.rand(world_size * LOCAL_BATCH, NUM_POSITIVES + NUM_NEGATIVES, dtype=torch.float64) * 5
    return state, guide_state, columns, teacher


def build_loss(config: dict, state: dict, guide_state: dict, cached: bool, gather: bool):
    """The model and the loss of ``config`` (a fresh model with ``state``; a guide with ``guide_state``)."""
    model = LinearEncoder()
    model.load_state_dict(state)
    kwargs = dict(config, num_positives=NUM_POSITIVES, temperature=TEMPERATURE, gather_across_devices=gather)
    if kwargs.pop("guide", False):
        guide = LinearEncoder(GUIDE_DIM)
        guide.load_state_dict(guide_state)
        kwargs["guide"] = guide
    if cached:
        return model, CachedMultiPositiveInfoNCELoss(model, mini_batch_size=CACHED_MINI_BATCH, **kwargs)
    return model, MultiPositiveInfoNCELoss(model, **kwargs)


def run(loss_fct, columns: list[torch.Tensor], teacher: torch.Tensor, rows: slice) -> tuple[torch.Tensor, dict, int]:
    """Loss (sum of components), components and masked count of ``rows`` of the batch, after the backward."""
    output = loss_fct([{"x": column[rows]} for column in columns], teacher[rows])
    components = output if isinstance(output, dict) else {"loss": output}
    total = torch.stack(list(components.values())).sum()
    total.backward()
    masked = loss_fct.pop_metrics().get("masked_candidates", torch.tensor(-1))
    return total.detach(), {key: value.detach() for key, value in components.items()}, int(masked)


def main(out_dir: Path) -> None:
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    state, guide_state, columns, teacher = make_inputs(world_size)
    local = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    results = {}
    for name, config in CONFIGS.items():
        for cached in (False, True):
            model, loss_fct = build_loss(config, state, guide_state, cached, gather=True)
            total, components, masked = run(loss_fct, columns, teacher, local)
            grads = {}
            for param_name, param in model.named_parameters():
                grad = param.grad.clone()
                dist.all_reduce(grad)
                grads[param_name] = grad / world_size
            means = {}
            for key, value in {"total": total, **components}.items():
                value = value.clone()
                dist.all_reduce(value)
                means[key] = value / world_size
            count = torch.tensor(masked)
            dist.all_reduce(count)
            results[f"cached_{name}" if cached else name] = {"means": means, "grads": grads, "masked": int(count)}
    if rank == 0:
        torch.save(
            {"results": results, "state": state, "guide_state": guide_state, "columns": columns, "teacher": teacher},
            out_dir / "result.pt",
        )
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
