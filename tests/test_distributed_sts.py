"""STS gathering across devices (CoDiEmbSTSLoss(gather_across_devices=True), the reference's
``sts_negatives_cross_device``): 2 gloo ranks equal one process holding the concatenated batch, loss components and
gradients, with the middle-layer InfoNCE on."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_codiemb.losses import CoDiEmbSTSLoss

SCRIPT = Path(__file__).parent / "dist_scripts" / "sts_gather.py"
REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.distributed
def test_gathered_sts_loss_equals_single_process(tmp_path):
    pythonpath = f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=pythonpath)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        str(SCRIPT), str(tmp_path),
    ]  # fmt: skip
    try:
        proc = subprocess.run(
            command, check=False, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"distributed run timed out (hang?): {error}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = torch.load(tmp_path / "result.pt")

    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from sts_gather import GOLD, SENTENCES_A, SENTENCES_B
        from tiny_models import make_tiny_model
    finally:
        sys.path.remove(str(SCRIPT.parent))
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
