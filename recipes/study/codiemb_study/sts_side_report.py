"""The table of issue 19 item 4 (:mod:`codiemb_study.sts_side`) from the stored run files: ``<results_dir>/summary.md``.

One section per encoder, one row per variant: STS-B dev Spearman (cosine), mean ± sample sd over seeds, its paired
difference from (b) and from (b2) (mean over the seeds both have), Pearson, the training time and the seeds; then the
machine (``machines/<encoder>.json``), the devices named by the run files and every distinct command.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from codiemb_study.report import devices_line, format_cell, metric_keys
from codiemb_study.sts_side import BASE_VARIANT, VARIANTS

REFERENCES = ("b", "b2")
#: The study runs that are (b) and (b2) in another results folder (the SciFact study): ``{variant: method}``.
REFERENCE_METHODS = {"b": "sts_only", "b2": "sts_cosine"}
DEFAULT_REFERENCE_DIR = "recipes/study/results-scifact"


def load_variant_runs(results_dir: Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``{encoder: {variant: [run, ...]}}`` of every stored run file (the base row under :data:`BASE_VARIANT`)."""
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for variant in [BASE_VARIANT, *VARIANTS]:
        for path in sorted((results_dir / variant).glob("*/runs/*.json")):
            run = json.loads(path.read_text())
            runs.setdefault(run["encoder"], {}).setdefault(variant, []).append(run)
    return runs


def load_reference_runs(reference_dir: Path, encoder: str) -> dict[str, list[dict[str, Any]]]:
    """The (b) and (b2) runs of ``encoder`` stored by the study in ``reference_dir`` (``{variant: [run, ...]}``)."""
    found = {}
    for variant, method in REFERENCE_METHODS.items():
        paths = sorted((reference_dir / encoder / "runs").glob(f"{method}-seed*.json"))
        if paths:
            found[variant] = [json.loads(path.read_text()) for path in paths]
    return found


def paired_difference(runs: Sequence[Mapping[str, Any]], reference: Sequence[Mapping[str, Any]], metric: str) -> str:
    """Mean over the seeds both groups have of ``run - reference`` on ``metric``, in points (x100), e.g. ``"+0.42"``."""
    ref = {run["seed"]: run["metrics"][metric] for run in reference}
    diffs = [run["metrics"][metric] - ref[run["seed"]] for run in runs if run["seed"] in ref]
    if not diffs:
        return "-"
    return f"{100 * statistics.fmean(diffs):+.2f}"


#: Middle-layer thresholds whose share of positives :func:`threshold_shares` reports (the variants' values).
THRESHOLDS = (1.0, 2.5, 4.0)


def threshold_shares(recipe: str | Path, thresholds: Sequence[float] = THRESHOLDS) -> str:
    """How many of the recipe's STS training pairs the middle-layer InfoNCE keeps as rows (gold ``>=`` threshold)
    at each threshold, read from its ``sts_train`` files, e.g. ``"1.0: 4,812 of 5,749 (83.7%); ..."``."""
    from hf_codiemb.data import load_sts_dataset
    from hf_codiemb.recipe import parse_recipe, resolve_data_path

    _, data_args, _, _ = parse_recipe(["--config", str(recipe)])
    scores = [
        float(score)
        for path in data_args.sts_train
        for score in load_sts_dataset(resolve_data_path(path), score_range=tuple(data_args.sts_score_range))["score"]
    ]
    low, high = data_args.sts_score_range
    cells = []
    for threshold in thresholds:
        kept = sum(score >= threshold for score in scores)
        fraction = (threshold - low) / (high - low)
        cells.append(f"{threshold:.1f} ({fraction:.1f} of the range): {kept:,} of {len(scores):,} ({100 * kept / len(scores):.1f}%)")
    return "; ".join(cells)


def encoder_section(
    encoder: str,
    groups: Mapping[str, Sequence[Mapping[str, Any]]],
    results_dir: Path,
    reference: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    reference_name: str = "",
) -> str:
    """The Markdown section of one encoder: the table, the machine, the devices and the commands.

    ``reference``: (b) / (b2) runs from another results folder (``reference_name``), shown as their own rows and
    used for the 'vs' columns (marked †) where this folder has no run of that variant.
    """
    reference = reference or {}
    every = [run for group in groups.values() for run in group]
    spearman = metric_keys(every)[0][0]  # the recipe's (first) STS dev set
    pearson = spearman.replace("/spearman_cosine", "/pearson_cosine")
    lines = [
        f"## {encoder}",
        "",
        f"STS dev set: `{spearman.split('/')[1]}`; {every[0]['max_steps']} optimizer updates per run.",
        "",
        "| variant | STS dev Spearman | vs (b), pt | vs (b2), pt | STS dev Pearson | train time (s) | seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    base = groups.get(BASE_VARIANT, [])
    if base:
        lines.append(f"| base encoder (no training) | {format_cell([r['metrics'][spearman] for r in base])} | - | - "
                     f"| {format_cell([r['metrics'][pearson] for r in base])} | - | - |")  # fmt: skip
    rows = [(f"`{key}`: {variant.label}", key, groups.get(key, [])) for key, variant in VARIANTS.items()]
    rows += [(f"{VARIANTS[key].label.split(' ')[0]} as stored in `{reference_name}`", f"ref-{key}", runs)
             for key, runs in reference.items()]  # fmt: skip
    for label, key, group in rows:
        group = sorted(group, key=lambda run: run["seed"])
        if not group:
            continue
        diffs = []
        for ref in REFERENCES:
            if key in (ref, f"ref-{ref}"):
                diffs.append("-")
            elif groups.get(ref):
                diffs.append(paired_difference(group, groups[ref], spearman))
            elif reference.get(ref):
                diffs.append(paired_difference(group, reference[ref], spearman) + " †")
            else:
                diffs.append("-")
        cells = [
            label,
            format_cell([run["metrics"][spearman] for run in group]),
            *diffs,
            format_cell([run["metrics"][pearson] for run in group]),
            format_cell([run["train_runtime_s"] for run in group], 1),
            ", ".join(str(run["seed"]) for run in group),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Runs: {len(every)}; devices: {devices_line(every)}."]
    if reference:
        shown = [run for runs in reference.values() for run in runs]
        lines.append(f"Rows from `{reference_name}`: {len(shown)} runs; devices: {devices_line(shown)}; † = the "
                     f"difference is against those runs (same seeds), this folder having no run of that variant.")  # fmt: skip
    recipe = every[0].get("recipe")
    if recipe and Path(recipe).is_file():
        lines.append(f"STS training pairs the middle-layer InfoNCE treats as positives, per threshold: "
                     f"{threshold_shares(recipe)}.")  # fmt: skip
    for machine in sorted((results_dir / "machines").glob(f"{encoder}-*.json")):
        info = json.loads(machine.read_text())
        lines.append(
            f"Machine ({info['device']}): {info['cpu']}, {info['cpu_count']} cores (the CPU machine is shared with "
            f"other developers' work: its train times are a ranking, not a benchmark); torch {info['torch']}, "
            f"transformers {info['transformers']}, sentence-transformers {info['sentence_transformers']}, "
            f"Python {info['python']}."
        )
    commands = sorted({run["command"] for run in every if run.get("command")})
    lines += ["", "Commands:", "", "```bash", *commands, "```", ""]
    return "\n".join(lines)


def write_report(results_dir: str | Path, reference_dir: str | Path | None = DEFAULT_REFERENCE_DIR) -> Path:
    """Write ``<results_dir>/summary.md`` from the stored runs and return its path; the (b) / (b2) runs of the same
    encoders stored in ``reference_dir`` (the SciFact study) get rows of their own (``None``: no such rows)."""
    root = Path(results_dir)
    ref_root = Path(reference_dir) if reference_dir else None
    runs = load_variant_runs(root)
    if not runs:
        raise FileNotFoundError(f"No run files under {root}/<variant>/<encoder>/runs: run the variants first")
    parts = [
        "# Why CoDiEmb's STS side trails CosineSimilarityLoss (issue 19, item 4)",
        "",
        (
            "Generated by `python recipes/study/run_sts_side.py report` from the run files next to it (do not edit "
            "by hand). STS-only training, evaluated on the recipe's STS dev set; mean ± sample sd over seeds; 'vs' "
            "columns: mean over the shared seeds of the per-seed difference, in Spearman points (x100)."
        ),
        "",
        *[
            encoder_section(
                encoder,
                groups,
                root,
                load_reference_runs(ref_root, encoder) if ref_root else None,
                ref_root.as_posix() if ref_root else "",
            )
            for encoder, groups in sorted(runs.items())
        ],
    ]
    path = root / "summary.md"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
