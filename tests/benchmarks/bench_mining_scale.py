"""Time and peak memory of `codiemb mine`'s pipeline on a synthetic corpus (issue 22.4: mining at corpus scale).

Writes a synthetic corpus (N short random texts, JSON Lines of {"text": ...}) and Q queries with one positive each
(the trainer's IR JSON Lines), then runs what `codiemb mine --queries Q.jsonl --corpus C.jsonl` runs
(:func:`hf_codiemb.mining.load_jsonl_mining_input`, :func:`hf_codiemb.mining.mine_hard_negatives_for`), each
configuration in a fresh process, and prints one markdown row per configuration: seconds (reading, mining), the
process's resident memory after loading and its peak (``ru_maxrss``).

The encoder is the tiny random BERT of tests/tiny_models.py (2 layers, hidden 32, max_seq_length 32): the benchmark
measures the pipeline's memory and time (encoding, search, selection), not a model's quality; a real encoder adds
its encoding time and ``N x dim x 4`` bytes per copy of the corpus embeddings. The embedding cache is off.

    python tests/benchmarks/bench_mining_scale.py --sizes 100000 1000000 --search faiss exact
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VOCABULARY = [f"w{i}" for i in range(5000)]


def write_data(folder: Path, corpus_size: int, queries: int, seed: int = 0) -> tuple[Path, Path]:
    rng = random.Random(seed)
    corpus = folder / "corpus.jsonl"
    texts = []
    with corpus.open("w", encoding="utf-8") as handle:
        for i in range(corpus_size):
            text = " ".join(rng.choice(VOCABULARY) for _ in range(rng.randint(6, 12))) + f" d{i}"
            if i < queries:
                texts.append(text)
            handle.write(json.dumps({"text": text}) + "\n")
    query_file = folder / "queries.jsonl"
    with query_file.open("w", encoding="utf-8") as handle:
        for i, positive in enumerate(texts):
            query = " ".join(rng.sample(positive.split()[:-1], 4))
            handle.write(json.dumps({"query": f"{query} q{i}", "positives": [positive]}) + "\n")
    return query_file, corpus


def rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_one(corpus_size: int, queries: int, search: str, batch_size: int) -> dict:
    sys.path.insert(0, str(HERE.parent))
    from sentence_transformers import SentenceTransformer
    from tiny_models import make_tiny_model

    from hf_codiemb.mining import load_jsonl_mining_input, mine_hard_negatives_for

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_tiny_model(tmp / "tiny")
        model = SentenceTransformer(str(tmp / "tiny" / "model"), device="cpu")
        model.max_seq_length = 32
        start = time.perf_counter()
        query_file, corpus_file = write_data(tmp, corpus_size, queries)
        written = time.perf_counter() - start
        baseline = rss_mib()
        start = time.perf_counter()
        data = load_jsonl_mining_input(query_file, corpus_file)
        read = time.perf_counter() - start
        loaded = rss_mib()
        start = time.perf_counter()
        result = mine_hard_negatives_for(
            model, data, num_negatives=8, range_min=10, range_max=100, sampling_strategy="random",
            relative_margin=None, batch_size=batch_size, search=search,
        )  # fmt: skip
        mined = time.perf_counter() - start
    return {
        "corpus": corpus_size, "queries": queries, "search": result.summary["settings"]["search"],
        "search_batch_size": result.summary["settings"]["search_batch_size"], "write_s": round(written, 1),
        "read_s": round(read, 1), "mine_s": round(mined, 1), "rss_before_read_mib": round(baseline),
        "rss_after_read_mib": round(loaded), "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "negatives": result.summary["negatives"], "queries_short": result.summary["queries_short"],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="corpus sizes")
    parser.add_argument("--queries", type=int, default=10_000, help="queries (each with one positive)")
    parser.add_argument("--search", nargs="+", default=["faiss", "exact"], choices=["faiss", "exact"])
    parser.add_argument("--batch-size", type=int, default=256, help="encoding batch size")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per configuration")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.sizes[0], args.queries, args.search[0], args.batch_size)))
        return
    print(f"load average: {os.getloadavg()}, cpus: {os.cpu_count()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    print("| corpus | queries | search | search batch | read s | mine s | RSS after read MiB | peak RSS MiB | negatives |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for search in args.search:
            command = [sys.executable, __file__, "--one", "--sizes", str(size), "--queries", str(args.queries),
                       "--search", search, "--batch-size", str(args.batch_size)]  # fmt: skip
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, check=False)
            except subprocess.TimeoutExpired:
                print(f"| {size} | {args.queries} | {search} | | | > {args.timeout:.0f} (stopped) | | | |", flush=True)
                continue
            if done.returncode != 0:
                print(f"| {size} | {args.queries} | {search} | | | failed: {done.stderr.strip().splitlines()[-1]} | | | |",
                      flush=True)  # fmt: skip
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"| {row['corpus']} | {row['queries']} | {row['search']} | {row['search_batch_size']} | "
                  f"{row['read_s']} | {row['mine_s']} | {row['rss_after_read_mib']} | {row['peak_rss_mib']} | "
                  f"{row['negatives']} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
