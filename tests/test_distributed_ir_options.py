"""Cross-device gathering with the IR loss's options (false-negative masking, by the model or a guide, and
distillation from teacher scores) equals one process holding the concatenated batch: loss, components, gradients
and the number of masked candidates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import load_script, run_torchrun

SCRIPT = Path(__file__).parent / "dist_scripts" / "infonce_options_gather.py"


@pytest.mark.distributed
def test_gathered_options_equal_single_process(tmp_path):
    proc = run_torchrun([str(SCRIPT), str(tmp_path)], timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    result = torch.load(tmp_path / "result.pt")
    script = load_script(SCRIPT)
    everything = slice(None)
    for name, config in script.CONFIGS.items():
        model, loss_fct = script.build_loss(config, result["state"], result["guide_state"], cached=False, gather=False)
        total, components, masked = script.run(loss_fct, result["columns"], result["teacher"], everything)
        assert masked > 0, name  # the configurations do mask
        for key in (name, f"cached_{name}"):
            gathered = result["results"][key]
            assert gathered["masked"] == masked, key  # the ranks' counts add up to the whole batch's
            torch.testing.assert_close(gathered["means"]["total"], total, atol=1e-6, rtol=0, msg=key)
            for component, value in components.items():
                torch.testing.assert_close(gathered["means"][component], value, atol=1e-6, rtol=0, msg=component)
            for param_name, param in model.named_parameters():
                torch.testing.assert_close(gathered["grads"][param_name], param.grad, atol=1e-6, rtol=0, msg=key)
