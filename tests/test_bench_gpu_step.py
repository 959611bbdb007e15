"""The paper-scale step benchmark (tests/benchmarks/bench_gpu_step.py) runs on the CPU with its tiny config."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "benchmarks" / "bench_gpu_step.py"


def table_rows(text: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| tiny |")]


def test_tiny_run_compares_both_losses_with_plain_sentence_transformers(tmp_path):
    output = tmp_path / "gpu_step.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--steps", "2", "--output", str(output)],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = output.read_text(encoding="utf-8")
    assert "Command: `python tests/benchmarks/bench_gpu_step.py --tiny --steps 2" in text
    assert "Device: CPU" in text
    rows = [row for row in table_rows(text) if len(row) == 12]  # the step table (the collator table has 7 cells)
    by_variant = {(row[1], row[3]): row for row in rows}
    expected = {
        ("IR", "CoDiEmb"): "MultiPositiveInfoNCELoss",
        ("IR", "plain ST"): "MultipleNegativesRankingLoss",
        ("IR", "CoDiEmb, query limit 64"): "MultiPositiveInfoNCELoss",
        ("IR", "CoDiEmb, mini-batch 2"): "CachedMultiPositiveInfoNCELoss",
        ("IR", "plain ST, mini-batch 2"): "CachedMultipleNegativesRankingLoss",
        ("STS", "CoDiEmb"): "CoDiEmbSTSLoss",
        ("STS", "plain ST"): "CoSENTLoss",
    }
    assert {key: by_variant[key][4] for key in expected if key in by_variant} == expected
    # the ratio is CoDiEmb's tokens/s over the plain step's (of the same task), as the table shows them
    for task in ("IR", "STS"):
        codiemb, plain = by_variant[(task, "CoDiEmb")], by_variant[(task, "plain ST")]
        assert float(codiemb[6]) > 0 and codiemb[11] == "2"
        speed = float(codiemb[7].replace(",", "")) / float(plain[7].replace(",", ""))
        assert abs(float(codiemb[8]) - speed) < 0.01 * speed + 1e-3
        assert codiemb[5] == plain[5]  # the same texts per update
    assert by_variant[("IR", "CoDiEmb")][5] == str(4 * (1 + 2 + 4))  # tiny: 4 queries x (query + 2 pos + 4 neg)
    # the ratios are printed, and the collator's share of a step is reported
    assert re.search(r"tiny IR ckpt off CoDiEmb: tokens/s x\d+\.\d{3}", result.stdout)
    assert re.search(r"tiny STS ckpt off CoDiEmb: tokens/s x\d+\.\d{3}", result.stdout)
    assert re.search(r"\| tiny \| IR \| off \| [\d.]+ \| [\d.]+ \| [\d.]+ \| [\d.]+% \|", text)
    # the ZeRO-1 runs through accelerate launch (the GPU session's script runs them as they run here)
    zero = re.findall(r"^\| (tiny, IR [^|]+?) \| ([^|]+?) \|", text, re.MULTILINE)
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        assert zero and all(result.startswith("skipped: deepspeed is not installed") for _, result in zero), zero
    else:
        assert zero == [("tiny, IR uncached", "ok"), ("tiny, IR GradCache mini-batch 2", "ok")], zero


def test_paper_configs_have_the_published_sizes_and_recipe_batches():
    """The committed architecture configs give the published parameter counts (built on the meta device), and the
    batch settings come from each recipe."""
    import torch
    from transformers import AutoConfig, AutoModel

    sys.path.insert(0, str(SCRIPT.parent))
    import bench_gpu_step

    published = {  # total parameters (MiniCPM: 2.4B without the 283M embedding matrix, as its model card counts)
        "bge-large-zh-v1.5": (326e6, 0.0),
        "multilingual-e5-large-instruct": (560e6, 0.0),
        "minicpm-embedding": (2.44e9, 122753 * 2304),
    }
    batches = {"bge-large-zh-v1.5": (64, 512), "multilingual-e5-large-instruct": (64, 512), "minicpm-embedding": (28, 1024)}
    for name in bench_gpu_step.PAPER_ENCODERS:
        encoder = bench_gpu_step.load_encoder(name)
        config = dict(encoder.config)
        with torch.device("meta"):
            model = AutoModel.from_config(AutoConfig.for_model(config.pop("model_type"), **config))
        size, embedding = published[name]
        counted = sum(p.numel() for p in model.parameters()) - embedding
        assert abs(counted - size) / size < 0.02, (name, counted)
        settings = encoder.settings
        assert (settings["ir_batch_size"], settings["max_seq_length"]) == batches[name]
        assert (settings["num_positives"], settings["num_negatives"], settings["sts_batch_size"]) == (2, 4, 32)
