"""Benchmark: peak memory and step time of CachedMultiPositiveInfoNCELoss (GradCache) vs MultiPositiveInfoNCELoss.

One forward + backward of the IR loss (no optimizer step) on the packaged all-MiniLM-L6-v2, IR batches of
``B`` queries x (query, 1 positive, ``--negatives`` hard negatives), short synthetic sentences (6-14 words,
``--max-seq-length`` tokens at most), dropout on (train mode). Every configuration runs in a fresh subprocess, whose peak resident set size
(``resource.getrusage(...).ru_maxrss``: imports + model + one small warm-up step + the timed step) is the memory
figure; the RSS just before the timed step is reported too, so the step's own share is visible.

The uncached loss is run at growing batches until its peak RSS passes ``--memory-cap-gb``; the largest batch under
the cap is its row in the comparison. The cached loss runs at ``--batches`` (256, 1024) with ``--mini-batches``
(32, 64). Whole run: about 5-8 minutes on 2 shared CPU cores.

One torch thread by default: on this shared 2-core machine (load average 8-10 from other engineers' jobs) two
threads made every small operation wait for the slower thread, which penalised the many small mini-batch
operations of the cached loss (IR batch 64, mini-batch 32, same process, alternating: cached 2.6-3.3x the uncached
step time with 2 threads, 1.1-1.3x with 1 thread).

    OMP_NUM_THREADS=1 python tests/benchmarks/bench_cached_info_nce.py --output tests/benchmarks/results/cached_info_nce.md
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

logger = logging.getLogger("bench_cached_info_nce")

WORDS = ["the", "a", "of", "river", "engine", "garden", "violin", "planet", "market", "winter", "doctor", "camera", "ocean", "bridge", "protein", "cell", "study", "patients", "treatment", "increased", "reduced", "expression", "gene", "model", "data", "results", "effect", "level", "risk", "analysis", "group", "clinical", "response", "signal", "pathway", "factor", "human", "mouse", "tissue", "blood", "brain", "heart", "liver", "immune", "virus", "infection"]


def sentences(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) for _ in range(count)]


def rss_gb() -> float:
    """Current resident set size of this process (Linux /proc), in GB."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e9


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # ru_maxrss is in KiB on Linux


def worker(loss_name: str, batch: int, mini_batch: int | None, negatives: int, max_seq_length: int) -> dict:
    """One configuration, in this (fresh) process: a warm-up step at batch 8, then one timed forward + backward."""
    import torch
    from sentence_transformers import SentenceTransformer

    from hf_codiemb.losses import CachedMultiPositiveInfoNCELoss, MultiPositiveInfoNCELoss

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tiny_models import packaged_minilm_path

    torch.manual_seed(0)
    model = SentenceTransformer(str(packaged_minilm_path()), device="cpu")
    model.max_seq_length = max_seq_length
    model.train()
    kwargs = {"num_positives": 1, "temperature": 0.02}
    if loss_name == "cached":
        loss_fct = CachedMultiPositiveInfoNCELoss(model, mini_batch_size=mini_batch, **kwargs)
    else:
        loss_fct = MultiPositiveInfoNCELoss(model, **kwargs)
    columns = [sentences(batch, seed=column) for column in range(2 + negatives)]

    def step(rows: int) -> tuple[float, float]:
        features = [model.preprocess(column[:rows]) for column in columns]
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        loss = loss_fct(features, None)
        loss.backward()
        return time.perf_counter() - start, loss.item()

    step(8)  # warm-up: first-call overheads, gradient buffers allocated
    rss_before = rss_gb()
    seconds, loss_value = step(batch)
    return {
        "loss_name": loss_name,
        "batch": batch,
        "mini_batch": mini_batch,
        "negatives": negatives,
        "seconds": seconds,
        "loss": loss_value,
        "rss_before_gb": rss_before,
        "peak_rss_gb": peak_rss_gb(),
        "sequences": batch * (2 + negatives),
    }


def run_config(loss_name: str, batch: int, mini_batch: int | None, args: argparse.Namespace) -> dict:
    command = [
        sys.executable, __file__, "--worker", loss_name, "--batch", str(batch), "--negatives", str(args.negatives),
        "--max-seq-length", str(args.max_seq_length),
    ]  # fmt: skip
    if mini_batch is not None:
        command += ["--mini-batch", str(mini_batch)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(command, check=False, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{loss_name} batch {batch} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    logger.info("%s", result)
    return result


def render(results: list[dict], cap: float, args: argparse.Namespace, command: str, wall: float) -> str:
    uncached = [r for r in results if r["loss_name"] == "uncached"]
    fitting = [r for r in uncached if r["peak_rss_gb"] <= cap]
    reference = max(fitting, key=lambda r: r["batch"]) if fitting else None
    lines = [
        "# CachedMultiPositiveInfoNCELoss (GradCache) vs MultiPositiveInfoNCELoss: peak memory and step time",
        "",
        (f"Command ({date.today().isoformat()}, 2-core x86_64 CPU shared with other engineers, **no GPU available**; "
        f"Python {platform.python_version()}, torch threads {args.threads}):"),
        "",
        "```",
        command,
        "```",
        "",
        (f"One forward + backward of the IR loss (no optimizer step), all-MiniLM-L6-v2 (packaged, 22.7M parameters) "
        f"in train mode (dropout on), each query with 1 positive + {args.negatives} hard negative(s) (so "
        f"{2 + args.negatives} sequences per query), synthetic 6-14 word sentences, max_seq_length "
        f"{args.max_seq_length}, temperature 0.02, in-batch negatives on. One fresh process per row; peak RSS = "
        "`ru_maxrss` of that process (imports + model + warm-up + the step); 'RSS before' = just before the timed "
        f"step. Memory cap for the uncached search: **{cap:.2f} GB** peak RSS. One timed step per row (a shared "
        "machine: times are indicative, within maybe +-15%)."),
        "",
        ("| loss | IR batch | mini-batch | sequences | step time (s) | s / 1k sequences | RSS before (GB) "
        "| peak RSS (GB) | step's extra RSS (GB) | loss value |"),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        name = "cached" if r["loss_name"] == "cached" else "uncached"
        lines.append(
            f"| {name} | {r['batch']} | {r['mini_batch'] or '-'} | {r['sequences']} | {r['seconds']:.2f} "
            f"| {1000 * r['seconds'] / r['sequences']:.2f} | {r['rss_before_gb']:.2f} | {r['peak_rss_gb']:.2f} "
            f"| {r['peak_rss_gb'] - r['rss_before_gb']:.2f} | {r['loss']:.5f} |"
        )
    lines += ["", "Side by side (ratios against the uncached loss at the largest batch under the cap, "]
    if reference is None:
        lines[-1] += "none: no uncached batch fits the cap):"
    else:
        lines[-1] += f"batch {reference['batch']}, peak {reference['peak_rss_gb']:.2f} GB):"
        lines += [
            "",
            ("| loss | IR batch | mini-batch | in-batch candidates per query | peak RSS / reference "
            "| step's extra RSS / reference | time per sequence / reference |"),
            "|---|---|---|---|---|---|---|",
        ]
        ref_extra = reference["peak_rss_gb"] - reference["rss_before_gb"]
        ref_per_seq = reference["seconds"] / reference["sequences"]
        for r in [reference, *[r for r in results if r["loss_name"] == "cached"]]:
            extra = r["peak_rss_gb"] - r["rss_before_gb"]
            candidates = r["batch"] * (1 + r["negatives"])
            lines.append(
                f"| {r['loss_name']} | {r['batch']} | {r['mini_batch'] or '-'} | {candidates} "
                f"| {r['peak_rss_gb'] / reference['peak_rss_gb']:.2f} | {extra / ref_extra:.2f} "
                f"| {(r['seconds'] / r['sequences']) / ref_per_seq:.2f} |"
            )
    lines += [
        "",
        ("Loss values of different rows are not comparable: different batches, and dropout masks drawn per "
        "mini-batch (cached) or per merged forward (uncached). The equality of the two losses (value and "
        "gradients, dropout replayed) is checked in float64 by tests/test_losses_cached_info_nce.py."),
    ]
    lines += ["", f"Whole benchmark: {wall / 60:.1f} min wall time."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", choices=["cached", "uncached"], help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mini-batch", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--negatives", type=int, default=1, help="Hard negatives per query.")
    parser.add_argument("--max-seq-length", type=int, default=32)
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 1024], help="IR batches of the cached loss.")
    parser.add_argument("--mini-batches", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--uncached-batches", type=int, nargs="+", default=[32, 64, 128, 256, 512, 1024])
    parser.add_argument("--memory-cap-gb", type=float, default=1.5, help="Peak RSS cap for the uncached loss.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=None, help="Write the markdown table here.")
    args = parser.parse_args()
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        result = worker(args.worker, args.batch, args.mini_batch, args.negatives, args.max_seq_length)
        sys.stdout.write(json.dumps(result) + "\n")
        return

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    command = f"OMP_NUM_THREADS={args.threads} python " + " ".join(
        [str(Path(sys.argv[0]).resolve().relative_to(Path.cwd())) if Path(sys.argv[0]).is_absolute() else sys.argv[0]]
        + sys.argv[1:]
    )
    start = time.perf_counter()
    results = []
    for batch in sorted(args.uncached_batches):
        result = run_config("uncached", batch, None, args)
        results.append(result)
        if result["peak_rss_gb"] > args.memory_cap_gb:
            break  # the next larger batch needs even more
    for batch in args.batches:
        for mini in args.mini_batches:
            results.append(run_config("cached", batch, mini, args))
    table = render(results, args.memory_cap_gb, args, command, time.perf_counter() - start)
    if args.output:
        args.output.write_text(table)
        logger.info("wrote %s", args.output)
    sys.stdout.write(table)


if __name__ == "__main__":
    main()
