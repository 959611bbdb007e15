"""CoDiEmbTrainer under torchrun with 2 CPU processes (gloo): every rank on the same dataset at every step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_torchrun

SCRIPT = Path(__file__).parent / "dist_scripts" / "train_two_ranks.py"


@pytest.mark.distributed
def test_two_ranks_share_the_dataset_of_every_step_and_log_per_task_losses(tmp_path):
    proc = run_torchrun([str(SCRIPT), str(tmp_path)], timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["world_size"] == 2 for r in ranks)
    seen0, seen1 = ranks[0]["seen"], ranks[1]["seen"]
    # A whole epoch: every block of the schedule, 2 micro-batches (accumulation) per rank per block.
    assert len(seen0) == len(seen1) == ranks[0]["sampler_len"] // 2 == 2 * len(ranks[0]["schedule"])
    assert ranks[0]["schedule"] == ranks[1]["schedule"]
    assert {"toy_ir", "toy_sts"} == set(ranks[0]["schedule"])
    for a, b in zip(seen0, seen1):
        assert a["dataset"] == b["dataset"], (a, b)
        assert a["step"] == b["step"]
        assert a["size"] == b["size"] == {"toy_ir": 3, "toy_sts": 5}[a["dataset"]]
    # Both micro-batches of one optimizer update are of one dataset, in the order of the schedule.
    for update, dataset in enumerate(ranks[0]["schedule"]):
        assert [s["dataset"] for s in seen0[2 * update : 2 * update + 2]] == [dataset, dataset]
        assert {s["step"] for s in seen0[2 * update : 2 * update + 2]} == {update}
    assert ranks[0]["global_step"] == len(ranks[0]["schedule"])
    logged = {key for entry in ranks[0]["log_history"] for key in entry}
    assert {"toy_ir/loss", "toy_sts/loss", "toy_sts/pearson", "toy_sts/pro", "toy_sts/rank_kl"} <= logged
