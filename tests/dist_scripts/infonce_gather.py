"""Launched by tests/test_distributed_infonce.py with ``torch.distributed.run --nproc_per_node 2`` (gloo, CPU).

Each rank embeds its slice of one fixed random batch with a shared linear "encoder", computes
MultiPositiveInfoNCELoss(gather_across_devices=True) for each ``in_batch_positives`` mode (the reference's "slot"
and our "all"), and the same with CachedMultiPositiveInfoNCELoss (GradCache, mini-batches of 2 rows, which do not
divide the local batch of 3), back-propagates, and averages parameter gradients and losses over ranks (what DDP
does). Rank 0 writes the results to ``<out_dir>/result.pt``. Then each rank checks that unequal
local batch sizes raise a clear error and writes the message to ``<out_dir>/error_rank<r>.txt``.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from hf_codiemb.losses import CachedMultiPositiveInfoNCELoss, MultiPositiveInfoNCELoss

LOCAL_BATCH, NUM_POSITIVES, NUM_NEGATIVES, DIM_IN, DIM_OUT, TEMPERATURE = 3, 2, 2, 5, 4, 0.05
MODES = ("slot", "all")
CACHED_MINI_BATCH = 2


class LinearEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(DIM_IN, DIM_OUT).double()

    def forward(self, features: dict) -> dict:
        return {"sentence_embedding": self.linear(features["x"])}


def make_inputs(world_size: int) -> tuple[dict, list[torch.Tensor]]:
    """Same seed on every rank: identical initial weights and identical global batch."""
    torch.manual_seed(1234)
    state = LinearEncoder().state_dict()
    num_columns = 1 + NUM_POSITIVES + NUM_NEGATIVES
    columns = [torch.randn(world_size * LOCAL_BATCH, DIM_IN, dtype=torch.float64) for _ in range(num_columns)]
    return state, columns


def main(out_dir: Path) -> None:
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    state, columns = make_inputs(world_size)
    local = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    results = {}
    for mode, cached in itertools.product(MODES, (False, True)):
        model = LinearEncoder()
        model.load_state_dict(state)
        kwargs = {"num_positives": NUM_POSITIVES, "temperature": TEMPERATURE, "gather_across_devices": True}
        if cached:
            loss_fct = CachedMultiPositiveInfoNCELoss(
                model, mini_batch_size=CACHED_MINI_BATCH, in_batch_positives=mode, **kwargs
            )
        else:
            loss_fct = MultiPositiveInfoNCELoss(model, in_batch_positives=mode, **kwargs)
        loss = loss_fct([{"x": column[local]} for column in columns], None)
        loss.backward()
        grads = {}
        for name, param in model.named_parameters():
            grad = param.grad.clone()
            dist.all_reduce(grad)
            grads[name] = grad / world_size
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        mean_loss /= world_size
        results[mode if not cached else f"cached_{mode}"] = {"loss": mean_loss, "grads": grads}
    if rank == 0:
        torch.save(
            {"modes": results, "state": state, "columns": columns, "world_size": world_size}, out_dir / "result.pt"
        )

    # Unequal local batches: rank 1 drops a row. Every rank must raise the same clear error (no hang).
    rows = LOCAL_BATCH - 1 if rank == 1 else LOCAL_BATCH
    for prefix, loss_fct in (
        ("", MultiPositiveInfoNCELoss(model, num_positives=NUM_POSITIVES, gather_across_devices=True)),
        ("cached_", CachedMultiPositiveInfoNCELoss(model, num_positives=NUM_POSITIVES, gather_across_devices=True)),
    ):
        try:
            loss_fct([{"x": column[local][:rows]} for column in columns], None)
            message = "no error"
        except ValueError as error:
            message = str(error)
        (out_dir / f"{prefix}error_rank{rank}.txt").write_text(message)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
