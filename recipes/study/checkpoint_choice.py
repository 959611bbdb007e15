"""Which IR-heavy checkpoint a `codiemb tradeoff` set-up would choose on the whole IR dev corpus (issue 19).

The set-up picks its IR-heavy input by the IR dev score logged during training; with ``eval_max_corpus`` that score is
measured on a capped corpus (every relevant document kept, the rest a seeded sample). This script evaluates every
saved checkpoint of each set-up's IR-heavy run on the whole dev sets (the study's own evaluation, as its rows) and
writes, per set-up and epoch, the capped score logged during training next to the whole-corpus scores, with the
checkpoint each score would choose. Training is not repeated: the checkpoints are those the runs saved, so the
"whole corpus" choice is what the same runs give when the in-run evaluation is not capped (the STS score, never
capped, and the STS-heavy run's choice are unchanged).

    PYTHONPATH=$PWD:$PWD/recipes/study python recipes/study/checkpoint_choice.py \\
        --recipe recipes/small/paraphrase-minilm-l3/scifact_stsb.yaml --epochs 5 \\
        --setup pearson-seed42=/work/runs/x1-pearson --setup pearson-seed43=/work/runs/pearson-seed43 \\
        --output recipes/study/results-equal-data-5ep/checkpoint_choice.md -- --max_seq_length 128

Per-checkpoint scores are cached in ``OUTPUT.json`` (a rerun evaluates only what is missing).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger("checkpoint_choice")


def capped_scores(run_dir: Path) -> dict[int, float]:
    """The IR score logged at each evaluation during training (step -> ``eval_codiemb_ir_score``), read as
    ``codiemb fuse`` reads a run's evaluations (:func:`hf_codiemb.fusion.selection.recorded_evaluations`)."""
    from hf_codiemb.fusion.selection import CRITERIA, recorded_evaluations

    key = CRITERIA["best_ir"]
    return {step: scores[key] for step, scores in recorded_evaluations(run_dir).items() if key in scores}


def table(rows: list[dict]) -> str:
    header = (
        "| set-up | epoch | step | IR dev, capped corpus (during training) | IR dev nDCG@10, whole corpus | "
        "STS dev Spearman | chosen on the capped corpus | chosen on the whole corpus |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for setup in dict.fromkeys(row["setup"] for row in rows):
        own = [row for row in rows if row["setup"] == setup]
        by_cap = max(own, key=lambda row: row["capped_ir"])
        by_whole = max(own, key=lambda row: row["ir"])
        for row in own:
            lines.append(
                f"| {setup} | {row['epoch']:g} | {row['step']} | {row['capped_ir']:.4f} | {row['ir']:.4f} | "
                f"{row['sts']:.4f} | {'**yes**' if row is by_cap else ''} | {'**yes**' if row is by_whole else ''} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    overrides: list[str] = []
    if "--" in argv:
        argv, overrides = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--setup", action="append", required=True, metavar="NAME=TRADEOFF_DIR")
    parser.add_argument("--output", required=True, help="the Markdown table (scores cached in OUTPUT.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from sentence_transformers import SentenceTransformer

    from codiemb_study.runner import Study
    from hf_codiemb.fusion.selection import TRAINER_STATE, checkpoint_steps
    from hf_codiemb.tradeoff import IR_HEAVY

    output = Path(args.output)
    cache_file = output.with_suffix(".json")
    cache = json.loads(cache_file.read_text(encoding="utf-8")) if cache_file.is_file() else {}
    study = Study(args.recipe, overrides, None, output.parent, output.parent / "scratch", epochs=args.epochs)
    (sts_name,), (ir_name,) = list(study.sts_sets), list(study.ir_sets)
    rows = []
    for spec in args.setup:
        setup, _, folder = spec.partition("=")
        run_dir = Path(folder) / "runs" / IR_HEAVY
        capped = capped_scores(run_dir)
        for step, checkpoint in checkpoint_steps(run_dir).items():
            if step not in capped:
                raise SystemExit(f"{checkpoint}: the run logged no dev evaluation at step {step} (eval and save steps differ)")
            key = f"{setup}/{checkpoint.name}"
            if key not in cache:
                logger.info("Evaluating %s on the whole dev sets", checkpoint)
                metrics = study.evaluate(SentenceTransformer(str(checkpoint), device="cpu"))
                cache[key] = {"ir": metrics[f"ir/{ir_name}/ndcg@10"], "sts": metrics[f"sts/{sts_name}/spearman_cosine"]}
                cache_file.write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            state = json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8"))
            rows.append({"setup": setup, "step": step, "epoch": state["epoch"], "capped_ir": capped[step], **cache[key]})
    output.write_text(
        "# IR-heavy checkpoint choice: capped vs whole dev corpus\n\n"
        f"Generated by `recipes/study/checkpoint_choice.py` from the scores cached in `{cache_file.name}`; recipe "
        f"`{args.recipe}`, overrides `{' '.join(overrides)}`. The command that evaluated them, the machine and what ran "
        "beside it: the study notes in this folder (`notes.md`).\n\n" + table(rows) + "\n",
        encoding="utf-8",
    )
    logger.info("Wrote %s", output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
