"""The training step's own code reads no device tensor on the host between the forward and the backward.

On a GPU every such read (``bool(tensor)``, ``.item()``, ``.tolist()``, ...) waits for the queued kernels and leaves
the GPU idle while the host queues the next ones (issue 20, item 3). The CPU cannot show the stall, so this test
counts the reads themselves: every call of those ``torch.Tensor`` methods made from a file of ``hf_codiemb`` while
the trainer computes a batch's loss and runs its backward. The non-finite check and the logs read the loss once
per micro-batch after the backward (``CoDiEmbTrainer.settle_batch``), where transformers reads the loss anyway.
"""

from __future__ import annotations

import contextlib
import traceback
from collections import Counter
from pathlib import Path

import pytest
import torch
from test_trainer import ir_dataset, make_args, sts_dataset
from tiny_models import make_tiny_model

import hf_codiemb
from hf_codiemb import CoDiEmbTrainer

PACKAGE = str(Path(hf_codiemb.__file__).parent)
HOST_READS = ("__bool__", "item", "tolist", "__float__", "__int__", "__index__", "numpy")


@contextlib.contextmanager
def host_reads_from_package():
    """Count the host reads of tensors made by code of hf_codiemb: {(method, file, line): calls}."""
    reads: Counter[tuple[str, str, int]] = Counter()
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def counting(name):
        def read(self, *args, **kwargs):
            caller = traceback.extract_stack(limit=2)[0]
            if caller.filename.startswith(PACKAGE):
                reads[(name, Path(caller.filename).relative_to(PACKAGE).as_posix(), caller.lineno)] += 1
            return originals[name](self, *args, **kwargs)

        return read

    for name in HOST_READS:
        setattr(torch.Tensor, name, counting(name))
    try:
        yield reads
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)


@pytest.mark.parametrize("task", ["ir", "sts"])
def test_compute_loss_and_backward_read_nothing_on_the_host(tmp_path, task):
    model = make_tiny_model(tmp_path)
    trainer = CoDiEmbTrainer(
        model=model, args=make_args(tmp_path), train_dataset={"ir": ir_dataset(), "sts": sts_dataset()}
    )
    batch = next(b for b in trainer.get_train_dataloader() if b["dataset_name"] == task)
    model.train()
    with host_reads_from_package() as reads:
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
    # The STS losses check that gold scores are finite when those are in host memory (here, on the CPU); on an
    # accelerator the labels are on the device and the check is skipped (the trainer checked the data before).
    allowed = {("__bool__", "losses/functional.py")}
    assert {(name, path) for name, path, _ in reads} <= allowed, dict(reads)
    assert trainer._pending_batch is not None and trainer._pending_batch.dataset_name == task
    # The batch's components reach the logs only once settled (after the backward), and then without a read.
    assert not trainer._loss_sums["train"]
    with host_reads_from_package() as reads:
        assert trainer.settle_batch(trainer._pending_batch) is False
    assert list(reads.values()) == [1]  # the one bool(non-finite flag)
    assert f"{task}/loss" in trainer._loss_sums["train"]
