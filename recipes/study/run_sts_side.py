"""Issue 19 item 4: the STS side of CoDiEmb against CosineSimilarityLoss, one knob at a time.

    # train + evaluate the variants (resumable: runs already stored under --results-dir are skipped)
    python recipes/study/run_sts_side.py run --recipe recipes/small/paraphrase-minilm-l3/scifact_stsb.yaml \\
        --seeds 42 --max-steps 225 --threads 2
    # the table (mean ± sd over seeds per variant) from the stored runs
    python recipes/study/run_sts_side.py report

Flags after ``--`` are `codiemb train` overrides applied to every run (e.g. ``-- --max_seq_length 128``). The
variants are :data:`codiemb_study.sts_side.VARIANTS`.
"""

from __future__ import annotations

import argparse
import logging
import sys

DEFAULT_RESULTS = "recipes/study/results-sts-side"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides: list[str] = []
    if "--" in argv:
        index = argv.index("--")
        argv, overrides = argv[:index], argv[index + 1 :]
    from codiemb_study.sts_side import VARIANTS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train and evaluate the variants")
    run.add_argument("--recipe", required=True, help="the YAML recipe (its IR training data is dropped)")
    run.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="VARIANT")
    run.add_argument("--seeds", nargs="+", type=int, default=[42])
    run.add_argument("--max-steps", type=int, required=True, help="optimizer updates of every run")
    run.add_argument("--results-dir", default=DEFAULT_RESULTS)
    run.add_argument("--work-dir", default="outputs/sts-side")
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    report = commands.add_parser("report", help="the table from the stored runs")
    report.add_argument("--results-dir", default=DEFAULT_RESULTS)
    report.add_argument("--reference-dir", default="recipes/study/results-scifact",
                        help="a study results folder whose (b) / (b2) runs get rows of their own ('' = none)")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("sentence_transformers", "transformers", "datasets", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    if args.command == "run":
        import torch

        from codiemb_study.sts_side import run_variants

        if args.threads:
            torch.set_num_threads(args.threads)
        run_variants(args.recipe, overrides, args.variants, args.seeds, args.max_steps, args.results_dir,
                     args.work_dir)  # fmt: skip
        return 0
    from codiemb_study.sts_side_report import write_report

    write_report(args.results_dir, args.reference_dir or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
