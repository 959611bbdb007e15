"""Benchmark: ``hf_codiemb.data.load_ir_dataset`` vs ``datasets.load_dataset("json")`` on a large IR file.

Generates N IR records in the FlagEmbedding format ``{query, pos[1], neg[7]}`` (texts of 12 / 50 random words, about
2.7 KB a record) into a temporary folder outside the repository, then loads the file in FRESH subprocesses:

- ``datasets.load_dataset("json")``: datasets' own JSON builder (no validation), into an empty cache, then again
  from its cache;
- ``load_ir_dataset``: hf_codiemb's Arrow reader (read, validate, normalise to ``query/positives/negatives``, record
  hashes for the suspicious-data warning), into an empty cache, then again from its cache.

Each worker reports the wall time of the load call (imports excluded; the process wall time is reported too) and
its peak RSS (``VmHWM`` of /proc/self/status, which includes the memory-mapped cache pages the process touched).
The JSON file is read once before the runs so that both first loads find it in the page cache. Free disk space is
checked first (file + two caches); N is reduced to what fits, and the table says so.

Run (about 10 minutes for 1M records on 2 CPU cores, ~9 GB of temp disk):

    python tests/benchmarks/bench_data_loading.py --records 1000000 --output tests/benchmarks/results/data_loading.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]
logger = logging.getLogger("bench_data_loading")


# --------------------------------------------------------------------------- data
def generate(path: Path, records: int, seed: int = 0) -> None:
    """Write ``records`` FlagEmbedding IR records; texts are drawn from a pool, every query is unique."""
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(5000)]
    passages = [" ".join(rng.choices(words, k=50)) for _ in range(50_000)]
    queries = [" ".join(rng.choices(words, k=12)) for _ in range(10_000)]
    with path.open("w", encoding="utf-8") as handle:
        for i in range(records):
            picked = rng.sample(range(len(passages)), 8)
            record = {"query": f"{i} {queries[i % len(queries)]}", "pos": [passages[picked[0]]],
                      "neg": [passages[j] for j in picked[1:]]}  # fmt: skip
            handle.write(json.dumps(record) + "\n")


def bytes_per_record() -> float:
    with tempfile.TemporaryDirectory() as folder:
        sample = Path(folder) / "sample.jsonl"
        generate(sample, 2000)
        return sample.stat().st_size / 2000


# --------------------------------------------------------------------------- worker (fresh subprocess)
def _peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _worker(method: str, data: str, cache: str) -> None:
    if method == "datasets":
        import datasets
    else:
        from hf_codiemb.data import load_ir_dataset
    start = time.perf_counter()
    if method == "datasets":
        dataset = datasets.load_dataset("json", data_files=data, split="train", cache_dir=cache)
    else:
        dataset = load_ir_dataset(data, cache_dir=cache)
    seconds = time.perf_counter() - start
    sys.stdout.write(json.dumps({"seconds": seconds, "rows": dataset.num_rows, "peak_rss": _peak_rss(),
                                 "columns": dataset.column_names}) + "\n")  # fmt: skip


def run_worker(method: str, data: Path, cache: Path) -> dict[str, float]:
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    command = [sys.executable, str(HERE), "--worker", method, "--data", str(data), "--cache", str(cache)]
    start = time.perf_counter()
    completed = subprocess.run(command, env=env, capture_output=True, text=True, check=False, cwd=REPO)
    process_seconds = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(f"worker {method} failed:\n{completed.stderr[-3000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    result["process_seconds"] = process_seconds
    logger.info("%s: %s", method, result)
    return result


# --------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--workdir", default=None, help="temp folder (default: a new one in the system temp dir)")
    parser.add_argument("--output", default=None, help="write the markdown table here")
    parser.add_argument("--worker", choices=["datasets", "codiemb"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, args.data, args.cache)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="codiemb_bench_data_"))
    workdir.mkdir(parents=True, exist_ok=True)
    if REPO in workdir.resolve().parents:
        raise SystemExit(f"--workdir {workdir} is inside the repository; give a folder outside it")
    per_record = bytes_per_record()
    free = shutil.disk_usage(workdir).free
    # the JSON file, datasets' cache and ours (each about the size of the file), and 2 GB to spare
    fits = int((free - 2 * 1024**3) / (3.2 * per_record))
    records = min(args.records, max(fits, 0))
    note = ""
    if records < args.records:
        note = (f"Reduced from {args.records:,} to {records:,} records: {free / 1024**3:.1f} GiB free in {workdir}, "
                f"about {3.2 * per_record * args.records / 1024**3:.1f} GiB needed.")  # fmt: skip
        logger.warning(note)
    if records < 1000:
        raise SystemExit(f"not enough free disk in {workdir}")
    data = workdir / "ir.jsonl"
    load_before = os.getloadavg()[0]
    try:
        start = time.perf_counter()
        generate(data, records)
        logger.info("generated %d records, %.2f GB, in %.0f s", records, data.stat().st_size / 1e9,
                    time.perf_counter() - start)  # fmt: skip
        with data.open("rb") as handle:  # into the page cache, for both first loads alike
            while handle.read(64 << 20):
                pass
        caches = {method: workdir / f"cache_{method}" for method in ("datasets", "codiemb")}
        results = {}
        for phase in ("first", "cached"):
            for method in ("datasets", "codiemb"):
                results[method, phase] = run_worker(method, data, caches[method])
        table = render(results, records, data.stat().st_size, note, load_before, os.getloadavg()[0])
        sys.stdout.write(table)
        if args.output:
            Path(args.output).write_text(table)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def render(results: dict, records: int, size: int, note: str, load_before: float, load_after: float) -> str:
    import datasets
    import pyarrow

    def gib(value: float) -> str:
        return f"{value / 1024**3:.2f}"

    lines = [
        "# Data loading benchmark: `load_ir_dataset` vs `datasets.load_dataset(\"json\")`",
        "",
        (f"{records:,} IR records `{{query, pos[1], neg[7]}}` (FlagEmbedding format), {size / 1e9:.2f} GB of JSON "
        "Lines; each load in a fresh subprocess, into an empty cache (first) and again from that cache (cached). "
        "Time: the load call (imports excluded); process: the whole subprocess. Peak RSS: `VmHWM` (includes the "
        "memory-mapped pages the process touched)."),
        "",
        (f"Machine: {platform.machine()}, {os.cpu_count()} cores, load average {load_before:.1f} before the runs and "
        f"{load_after:.1f} after them (1-minute, measured), "
        f"Python {platform.python_version()}, datasets {datasets.__version__}, pyarrow {pyarrow.__version__}. "
        f"Date: {datetime.date.today().isoformat()}."),
    ]
    if note:
        lines += ["", note]
    lines += [
        "",
        ("| load | datasets (s) | codiemb (s) | time ratio | datasets process (s) | codiemb process (s) "
        "| datasets peak RSS (GiB) | codiemb peak RSS (GiB) | RSS ratio |"),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for phase in ("first", "cached"):
        base, ours = results["datasets", phase], results["codiemb", phase]
        lines.append(
            f"| {phase} | {base['seconds']:.1f} | {ours['seconds']:.1f} | {ours['seconds'] / base['seconds']:.2f}x "
            f"| {base['process_seconds']:.1f} | {ours['process_seconds']:.1f} | {gib(base['peak_rss'])} "
            f"| {gib(ours['peak_rss'])} | {ours['peak_rss'] / base['peak_rss']:.2f}x |"
        )
    first_time = results["codiemb", "first"]["seconds"] / results["datasets", "first"]["seconds"]
    first_rss = results["codiemb", "first"]["peak_rss"] / results["datasets", "first"]["peak_rss"]
    cached = results["codiemb", "cached"]["seconds"]
    lines += [
        "",
        ("Targets (issue 11): first load <= 1.3x the time "
        f"({'met' if first_time <= 1.3 else 'MISSED'}: {first_time:.2f}x) and <= 1.5x the peak RSS "
        f"({'met' if first_rss <= 1.5 else 'MISSED'}: {first_rss:.2f}x) of datasets' own load; cached reload "
        f"under 5 s ({'met' if cached < 5 else 'MISSED'}: {cached:.1f} s)."),
        "",
        (f"Command: `python tests/benchmarks/bench_data_loading.py --records {records} "
        "--output tests/benchmarks/results/data_loading.md`"),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
