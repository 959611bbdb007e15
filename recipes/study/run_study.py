"""The CoDiEmb study: every method of codiemb_study.methods on one recipe, same budget, several seeds.

    # train + evaluate (resumable: runs already stored under --results-dir are skipped)
    python recipes/study/run_study.py run --recipe recipes/small/minilm-l6/scifact_stsb.yaml --seeds 42 43 44 \\
        --max-steps 225 --results-dir recipes/study/results-scifact --threads 2 -- --max_seq_length 128
    # equal data (issue 19): 5 epochs over each method's own data, dev evaluation every epoch, dev-best checkpoint
    python recipes/study/run_study.py run --recipe recipes/small/paraphrase-minilm-l3/scifact_stsb.yaml \\
        --methods ir_only sts_cosine mixed_infonce codiemb --seeds 42 --epochs 5 \\
        --results-dir recipes/study/results-equal-data --threads 2 -- --max_seq_length 128
    # the one-command trade-off set-up (`codiemb tradeoff`, same epochs and seed) as a row of that study
    python recipes/study/run_study.py collect-tradeoff --recipe recipes/small/paraphrase-minilm-l3/scifact_stsb.yaml \\
        --epochs 5 --seed 42 --tradeoff-dir outputs/study-eq/tradeoff-seed42 --tradeoff-command "codiemb tradeoff ..." \\
        --results-dir recipes/study/results-equal-data -- --max_seq_length 128
    # a trade-off set-up trained with other settings, as its own row (the settings after --, as its runs had them)
    python recipes/study/run_study.py collect-tradeoff ... --variant pearson --variant-label "Pearson-only STS loss" \
        -- --max_seq_length 128 --pro_weight 0 --rank_kl_weight 0 --multi_layer_weight 0
    # tables (mean and spread over seeds) + the IR-vs-STS trade-off plot from the stored runs
    python recipes/study/run_study.py report --results-dir recipes/study/results-scifact

Flags after ``--`` are `codiemb train` overrides applied to every run.
"""

from __future__ import annotations

import argparse
import logging
import sys

DEFAULT_RESULTS = "recipes/study/results"
DEFAULT_EVAL_MAX_CORPUS = 1000  # codiemb_study.runner.DEFAULT_EVAL_MAX_CORPUS (not imported here: --help stays fast)


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
    budget = run.add_mutually_exclusive_group(required=True)
    budget.add_argument("--max-steps", type=int, help="equal updates: optimizer updates of every run")
    budget.add_argument(
        "--epochs", type=int,
        help="equal data: epochs of every run over its own data, dev evaluation each epoch, dev-best checkpoint kept",
    )  # fmt: skip
    run.add_argument("--eval-max-corpus", type=int, default=DEFAULT_EVAL_MAX_CORPUS,
                     help="with --epochs: IR dev corpus cap during training (final scores: whole corpus); 0 = none")  # fmt: skip
    run.add_argument("--results-dir", default=DEFAULT_RESULTS)
    run.add_argument("--work-dir", default="outputs/study")
    run.add_argument("--keep-models", action="store_true",
                     help="keep each run's evaluated model in WORK_DIR/<encoder>/models/<method>-seed<seed>")  # fmt: skip
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    collect = commands.add_parser("collect-tradeoff", help="store a finished `codiemb tradeoff` as a row (--epochs)")
    collect.add_argument("--recipe", required=True)
    collect.add_argument("--epochs", type=int, required=True, help="the epochs the tradeoff runs trained")
    collect.add_argument("--seed", type=int, required=True)
    collect.add_argument("--tradeoff-dir", required=True, help="the tradeoff's --output_dir")
    collect.add_argument("--tradeoff-command", required=True, help="the command that made it (recorded)")
    collect.add_argument("--wall-seconds", type=float, default=None, help="the command's measured wall time")
    collect.add_argument("--reevaluate", action="store_true",
                         help="evaluate the fused model again (default: the fusion search's whole-dev scores)")  # fmt: skip
    collect.add_argument("--variant", default=None,
                         help="store it as the row codiemb_tradeoff_VARIANT (a set-up trained with other settings: give "
                              "them after --, as its runs had them)")  # fmt: skip
    collect.add_argument("--variant-label", default=None, help="what the variant changes (the row's label)")
    collect.add_argument("--results-dir", default=DEFAULT_RESULTS)
    collect.add_argument("--threads", type=int, default=None)
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
        study = Study(args.recipe, overrides, args.max_steps, args.results_dir, args.work_dir, epochs=args.epochs,
                      eval_max_corpus=args.eval_max_corpus or None, keep_models=args.keep_models)  # fmt: skip
        study.run(args.methods or list(METHODS), args.seeds)
        return 0
    if args.command == "collect-tradeoff":
        import torch

        from codiemb_study import Study

        if args.threads:
            torch.set_num_threads(args.threads)
        study = Study(args.recipe, overrides, None, args.results_dir, "outputs/study", epochs=args.epochs)
        study.collect_tradeoff(args.tradeoff_dir, args.seed, args.tradeoff_command, args.wall_seconds,
                               args.reevaluate, variant=args.variant, variant_label=args.variant_label)
        return 0
    from codiemb_study.report import write_report

    write_report(args.results_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
