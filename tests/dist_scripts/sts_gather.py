"""Launched by tests/test_distributed_sts.py with ``torch.distributed.run --nproc_per_node 2`` (gloo, CPU).

Every rank builds the same tiny BERT sentence-transformer (same seed), embeds its half of one fixed STS batch, computes
CoDiEmbSTSLoss(gather_across_devices=True) with the middle-layer InfoNCE on, back-propagates, and averages parameter
gradients and the loss over ranks (what DDP does). Rank 0 saves the averaged loss components and gradients to
``<out_dir>/result.pt``; the test compares them with one process on the concatenated batch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from tiny_models import make_tiny_model

from hf_codiemb.losses import CoDiEmbSTSLoss

SENTENCES_A = ["a man plays a guitar", "the cat sleeps", "rain falls", "two dogs run", "a red car", "kids play"]
SENTENCES_B = ["someone plays music", "a cat is asleep", "it rains", "a plane lands", "a blue bike", "children play"]
GOLD = [4.5, 4.0, 3.2, 0.4, 0.9, 4.8]
LOCAL_BATCH = 3


def make_loss(model) -> CoDiEmbSTSLoss:
    return CoDiEmbSTSLoss(model, gather_across_devices=True)


def main(out_dir: Path) -> None:
    rank = int(os.environ["RANK"])
    # Built before the process group exists: transformers' save_pretrained writes only on the main process of a group.
    model = make_tiny_model(out_dir / f"model_rank{rank}", layers=4, seed=7).double()
    dist.init_process_group("gloo")
    world_size = dist.get_world_size()
    local = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    features = [model.preprocess(SENTENCES_A[local]), model.preprocess(SENTENCES_B[local])]
    components = make_loss(model)(features, torch.tensor(GOLD[local], dtype=torch.float64))
    loss = torch.stack(list(components.values())).sum()
    loss.backward()
    grads = {}
    for name, param in model.named_parameters():
        grad = param.grad.clone() if param.grad is not None else torch.zeros_like(param)
        dist.all_reduce(grad)
        grads[name] = grad / world_size
    values = {key: value.detach().clone() for key, value in components.items()}
    for value in values.values():
        dist.all_reduce(value)
        value /= world_size
    if rank == 0:
        torch.save({"components": values, "grads": grads}, out_dir / "result.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
