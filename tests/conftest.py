"""Shared test fixtures and helpers: tiny models, free ports, torchrun launches, the loopback Hub, and an isolated
datasets cache.

pytest puts this folder on ``sys.path`` (rootdir-relative test modules without ``__init__.py``), so test modules
import ``tiny_models``, ``hub_fixtures`` and ``conftest`` helpers directly, without path manipulation.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

# The loopback Hub fixtures (`hub`, `hub_lfs`, `hub_regular`) for every test module.
from hub_fixtures import hub, hub_lfs, hub_regular  # noqa: F401

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def shipped_training_recipes() -> list[Path]:
    """The training recipes under ``recipes/`` (what `codiemb train` takes): every YAML file but the accelerate
    configs, the fusion recipes (``fuse.yaml``, tests/test_fuse_command.py) and the `codiemb tradeoff` options files
    (``tradeoff*.yaml``, tests/test_tradeoff.py)."""
    return sorted(
        path
        for path in (REPO / "recipes").rglob("*.yaml")
        if "accelerate" not in path.parts and path.name != "fuse.yaml" and not path.name.startswith("tradeoff")
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a torchrun rendezvous or a test server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_torchrun(script_and_args: list[str], nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    """Launch ``script_and_args`` under ``torch.distributed.run`` with ``nproc`` gloo ranks on this machine.

    The scripts find ``tests/`` (tiny models) and the package through ``PYTHONPATH``; a hang becomes a test failure.
    """
    pythonpath = os.pathsep.join([str(REPO), str(TESTS), os.environ.get("PYTHONPATH", "")])
    env = dict(
        os.environ, OMP_NUM_THREADS="1", PYTHONPATH=pythonpath, CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *script_and_args,
    ]  # fmt: skip
    try:
        return subprocess.run(command, check=False, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"distributed run timed out (hang?): {error}")


def load_script(path: Path):
    """Import a launched script (e.g. ``dist_scripts/infonce_gather.py``) as a module, for its constants and helpers."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT sentence-transformer folder (mean pooling + Normalize), built once per session."""
    from tiny_models import make_tiny_model

    root = tmp_path_factory.mktemp("tiny-model")
    make_tiny_model(root)
    return root / "model"


@pytest.fixture(autouse=True, scope="session")
def _isolated_datasets_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The data loaders cache Arrow files in the datasets cache: keep the tests' out of the user's cache."""
    import datasets

    cache = tmp_path_factory.mktemp("hf-datasets-cache")
    os.environ["HF_DATASETS_CACHE"] = str(cache)
    datasets.config.HF_DATASETS_CACHE = cache
