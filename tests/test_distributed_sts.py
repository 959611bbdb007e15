"""STS gathering across devices (CoDiEmbSTSLoss(gather_across_devices=True), the reference's
``sts_negatives_cross_device``): 2 gloo ranks equal one process holding the concatenated batch, loss components and
gradients, with the middle-layer InfoNCE on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import load_script, run_torchrun
from tiny_models import make_tiny_model

from hf_codiemb.losses import CoDiEmbSTSLoss

SCRIPT = Path(__file__).parent / "dist_scripts" / "sts_gather.py"


@pytest.mark.distributed
def test_gathered_sts_loss_equals_single_process(tmp_path):
    proc = run_torchrun([str(SCRIPT), str(tmp_path)], timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = torch.load(tmp_path / "result.pt")

    script = load_script(SCRIPT)
    GOLD, SENTENCES_A, SENTENCES_B = script.GOLD, script.SENTENCES_A, script.SENTENCES_B
    model = make_tiny_model(tmp_path / "single", layers=4, seed=7).double()
    features = [model.preprocess(SENTENCES_A), model.preprocess(SENTENCES_B)]
    single = CoDiEmbSTSLoss(model)(features, torch.tensor(GOLD, dtype=torch.float64))
    torch.stack(list(single.values())).sum().backward()

    assert set(result["components"]) == set(single) == {"pearson", "pro", "rank_kl", "multi_layer"}
    for key, value in single.items():
        torch.testing.assert_close(result["components"][key], value.detach(), atol=1e-8, rtol=1e-8)
    for name, param in model.named_parameters():
        expected = param.grad if param.grad is not None else torch.zeros_like(param)
        torch.testing.assert_close(result["grads"][name], expected, atol=1e-8, rtol=1e-6)
    # Gathering matters: the first rank's half alone gives a different loss.
    first_half = [model.preprocess(SENTENCES_A[:3]), model.preprocess(SENTENCES_B[:3])]
    half = CoDiEmbSTSLoss(model)(first_half, torch.tensor(GOLD[:3], dtype=torch.float64))
    assert abs(half["pearson"].item() - single["pearson"].item()) > 1e-4
