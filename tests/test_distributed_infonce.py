"""Cross-device gathering of MultiPositiveInfoNCELoss (and its cached version) equals one process holding the
concatenated batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import load_script, run_torchrun

from hf_codiemb.losses import MultiPositiveInfoNCELoss

SCRIPT = Path(__file__).parent / "dist_scripts" / "infonce_gather.py"


@pytest.mark.distributed
def test_gathered_loss_and_grads_equal_single_process(tmp_path):
    proc = run_torchrun([str(SCRIPT), str(tmp_path)], timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    result = torch.load(tmp_path / "result.pt")
    script = load_script(SCRIPT)
    MODES, NUM_POSITIVES, TEMPERATURE, LinearEncoder = (
        script.MODES, script.NUM_POSITIVES, script.TEMPERATURE, script.LinearEncoder
    )
    singles = {}
    for mode in MODES:  # the reference's per-slot candidates and our all-positives variant
        model = LinearEncoder()
        model.load_state_dict(result["state"])
        loss = MultiPositiveInfoNCELoss(
            model, num_positives=NUM_POSITIVES, temperature=TEMPERATURE, in_batch_positives=mode
        )
        single = loss([{"x": column} for column in result["columns"]], None)
        single.backward()
        singles[mode] = single.item()

        # The uncached loss and its GradCache version, gathered over 2 ranks, equal one process on the whole batch.
        for key in (mode, f"cached_{mode}"):
            torch.testing.assert_close(result["modes"][key]["loss"], single.detach(), atol=1e-6, rtol=0, msg=key)
            for name, param in model.named_parameters():
                torch.testing.assert_close(result["modes"][key]["grads"][name], param.grad, atol=1e-6, rtol=0)
        # Gathering matters: the local-only loss of a rank differs from the gathered one.
        local_only = loss([{"x": column[:3]} for column in result["columns"]], None)
        assert abs(local_only.item() - single.item()) > 1e-3
    assert abs(singles["slot"] - singles["all"]) > 1e-3  # the two modes are different losses at k+ = 2

    for rank in range(2):
        for prefix in ("", "cached_"):
            message = (tmp_path / f"{prefix}error_rank{rank}.txt").read_text()
            assert "same local batch size" in message and "rank 1: batch=2" in message, message
            name = "CachedMultiPositiveInfoNCELoss" if prefix else "MultiPositiveInfoNCELoss"
            assert f"{name}(gather_across_devices=True)" in message, message  # the loss the user configured
