"""Copy the results of a `codiemb tradeoff` run into the study's results and write its summary (issue 19).

    python recipes/study/collect_tradeoff.py OUTPUT_DIR recipes/study/results-tradeoff/<encoder>/<seed> \
        --encoder paraphrase-minilm-l3 --command "codiemb tradeoff ..." --machine "..."

Copies (small files only, no weights): `tradeoff.md`, the fused model's card and search table/JSON/front plot, each
run's completion record, final `eval_results.json` and the `trainer_state.json` of its last checkpoint (the dev
evaluations during training). Writes `summary.md`: the dev curve of each run (every evaluation during training, on the
capped corpus when `eval_max_corpus` was set), each run's final model and the chosen fusion on the whole dev sets, next
to the specialists of the equal-updates study (`results-scifact/summary.md`, the same encoder, 225 updates). Every
number is read from the copied files.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

from hf_codiemb.tradeoff import finished_run_names

STUDY_ROWS = ("base encoder (no training)", "(a) IR only: InfoNCE", "(b2) CosineSimilarityLoss, STS only",
              "(c) mixed-task batches, one InfoNCE loss", "(e) CoDiEmb (task-balanced, task losses)",
              "(h) delta fusion (p=1, element) of the IR:STS 3:1 + 1:3 runs")  # fmt: skip


def copy_results(output: Path, dest: Path) -> None:
    """Copy the set-up's small files to ``dest`` (``tradeoff.md`` where the set-up came from one `codiemb tradeoff`)."""
    dest.mkdir(parents=True, exist_ok=True)
    if (output / "tradeoff.md").is_file():
        shutil.copy(output / "tradeoff.md", dest / "tradeoff.md")
    for name in ("README.md", "fusion_search.md", "fusion_search.json", "fusion_front.png"):
        shutil.copy(output / "model" / name, dest / ("model_card.md" if name == "README.md" else name))
    for run in finished_run_names(output / "runs"):
        folder = output / "runs" / run
        shutil.copy(output / "runs" / f"{run}.done.json", dest / f"{run}.done.json")
        shutil.copy(folder / "eval_results.json", dest / f"{run}.eval_results.json")
        last = max(folder.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
        shutil.copy(last / "trainer_state.json", dest / f"{run}.trainer_state.json")


def study_rows(summary: Path, encoder: str) -> list[str]:
    """The headline rows of ``encoder`` in the equal-updates study's summary."""
    text = summary.read_text()
    section = text.split(f"## {encoder}", 1)[1].split("\n## ", 1)[0]
    every = section.split("Every method:", 1)[1]
    return [line for line in every.splitlines() if line.startswith("| ") and line.split("|")[1].strip() in STUDY_ROWS]


def summary(dest: Path, encoder: str, study_summary: Path, command: str, machine: str) -> str:
    lines = [f"# `codiemb tradeoff` on {encoder}: SciFact + STS-B (issue 19)", "", f"Command: `{command}`", "",
             f"Machine: {machine}", "", "## Dev scores during training (every evaluation; IR on the capped corpus)", "",
             "| run | step | STS-B dev Spearman | SciFact dev nDCG@10 | codiemb_score |", "|---|---|---|---|---|"]  # fmt: skip
    for run in finished_run_names(dest):
        state = json.loads((dest / f"{run}.trainer_state.json").read_text())
        for entry in state["log_history"]:
            if "eval_codiemb_score" in entry:
                lines.append(
                    f"| {run} | {entry['step']} | {entry['eval_codiemb_sts_score']:.4f} | "
                    f"{entry['eval_codiemb_ir_score']:.4f} | {entry['eval_codiemb_score']:.4f} |"
                )
    search = json.loads((dest / "fusion_search.json").read_text())
    lines += ["", "## Whole dev sets: the fusion search's candidates (the inputs are the chosen checkpoints)", "",
              "| candidate | STS-B dev Spearman | SciFact dev nDCG@10 | score | on the front |", "|---|---|---|---|---|"]  # fmt: skip
    for candidate in search["candidates"]:
        mark = " **(chosen)**" if candidate["label"] == search["chosen"] else ""
        lines.append(
            f"| {candidate['label']}{mark} | {candidate['sts_score']:.4f} | {candidate['ir_score']:.4f} | "
            f"{candidate['score']:.4f} | {'yes' if candidate['on_front'] else ''} |"
        )
    lines += ["", "Each run's final model (whole dev sets, `eval_results.json`):", "",
              "| run | STS-B dev Spearman | SciFact dev nDCG@10 |", "|---|---|---|"]  # fmt: skip
    for run in finished_run_names(dest):
        results = json.loads((dest / f"{run}.eval_results.json").read_text())
        sts = next(iter(results["sts"].values()))["spearman_cosine"]
        ir = next(iter(results["ir"].values()))["ndcg@10"]
        lines.append(f"| {run} | {sts:.4f} | {ir:.4f} |")
    intro = f"The equal-updates study's rows for {encoder} (225 updates per run, 3 seeds; `{study_summary.as_posix()}`):"
    lines += ["", intro, "",
              "| method | seeds | STS dev Spearman | IR scifact_dev nDCG@10 | updates IR / STS | train time (s) |",
              "|---|---|---|---|---|---|", *study_rows(study_summary, encoder)]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--encoder", required=True)
    parser.add_argument("--command", required=True)
    parser.add_argument("--machine", required=True)
    parser.add_argument("--study-summary", type=Path, default=Path("recipes/study/results-scifact/summary.md"))
    args = parser.parse_args()
    copy_results(args.output, args.dest)
    text = summary(args.dest, args.encoder, args.study_summary, args.command, args.machine)
    (args.dest / "summary.md").write_text(re.sub(r"\n{3,}", "\n\n", text))


if __name__ == "__main__":
    main()
