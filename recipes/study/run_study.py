"""The CoDiEmb study: every method of codiemb_study.methods on one recipe, same step budget, several seeds.

    # train + evaluate (resumable: runs already stored under --results-dir are skipped)
    python recipes/study/run_study.py run --recipe recipes/small/minilm-l6/scifact_stsb.yaml --seeds 42 43 44 \\
        --max-steps 225 --results-dir recipes/study/results-scifact --threads 2 -- --max_seq_length 128
    # tables (mean and spread over seeds) + the IR-vs-STS trade-off plot from the stored runs
    python recipes/study/run_study.py report --results-dir recipes/study/results-scifact

Flags after ``--`` are `codiemb train` overrides applied to every run.
"""

from __future__ import annotations

import argparse
import logging
import sys

DEFAULT_RESULTS = "recipes/study/results"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides: list[str] = []
    if "--" in argv:
        index = argv.index("--")
        argv, overrides = argv[:index], argv[index + 1 :]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train and evaluate the methods")
    run.add_argument("--recipe", required=True, help="the YAML recipe every method starts from")
    run.add_argument("--methods", nargs="+", default=None, help="method keys (default: all)")
    run.add_argument("--seeds", nargs="+", type=int, default=[42])
    run.add_argument("--max-steps", type=int, required=True, help="optimizer updates of every run")
    run.add_argument("--results-dir", default=DEFAULT_RESULTS)
    run.add_argument("--work-dir", default="outputs/study")
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    report = commands.add_parser("report", help="tables and plot from the stored runs")
    report.add_argument("--results-dir", default=DEFAULT_RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("sentence_transformers", "transformers", "datasets", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    if args.command == "run":
        import torch

        from codiemb_study import METHODS, Study

        if args.threads:
            torch.set_num_threads(args.threads)
        study = Study(args.recipe, overrides, args.max_steps, args.results_dir, args.work_dir)
        study.run(args.methods or list(METHODS), args.seeds)
        return 0
    from codiemb_study.report import write_report

    write_report(args.results_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
