"""Tables and the IR-vs-STS trade-off plot of the study, from the per-run JSON files of :mod:`codiemb_study.runner`.

A ``<results_dir>/notes.md`` (the study's words: machine, commands, what ran) is put at the top of ``summary.md``.
For every encoder folder ``<results_dir>/<encoder>/runs``: ``<results_dir>/<encoder>/study.md`` (one row per method:
mean and sample standard deviation over seeds of the dev metrics, the geometry and the training time). For all
encoders together: ``<results_dir>/tradeoff.png`` (one panel per encoder, STS Spearman on x, IR nDCG@10 on y, one
point per method with its spread, the IR:STS ratio sweep joined as a curve from STS-only to IR-only).
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import textwrap
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from codiemb_study.methods import FUSION_ROWS, METHODS, RATIO_FUSION_ROWS, RATIO_SWEEP
from codiemb_study.runner import BASE_ROW, TRADEOFF_ROW, is_tradeoff_row

logger = logging.getLogger(__name__)

# (f) rows follow (e), whose checkpoints they fuse; the ratio sweep (g) comes next, then (h), which fuses two of its runs.
# The one-command trade-off set-up (equal-data study) comes last.
ROW_ORDER = [
    BASE_ROW, *[key for key in METHODS if key not in RATIO_SWEEP], *FUSION_ROWS, *RATIO_SWEEP, *RATIO_FUSION_ROWS,
    TRADEOFF_ROW,
]
#: One distinct filled marker per row of ROW_ORDER (the same in every panel).
MARKERS = "osDv^<>PXh*pd8H"


def row_index(key: str, keys: Sequence[str] = ()) -> int:
    """The place of a row in the tables and its marker: ROW_ORDER's, then the trade-off set-up's variants
    (``codiemb_tradeoff_<variant>``, :func:`~codiemb_study.runner.tradeoff_row_key`) after the default one, by name."""
    if key in ROW_ORDER:
        return ROW_ORDER.index(key)
    variants = sorted(k for k in {*keys, key} if k not in ROW_ORDER and is_tradeoff_row(k))
    if key not in variants:
        raise ValueError(f"Unknown study row {key!r}: not a method of codiemb_study.methods nor a trade-off variant")
    return len(ROW_ORDER) + variants.index(key)


#: (metric, column, decimals) of the geometry columns.
GEOMETRY = [
    ("geometry/anisotropy", "anisotropy", 4),
    ("geometry/effective_rank", "eff. rank", 1),
    ("geometry/condition_number", "cond. number", 0),
    ("geometry/alignment", "alignment", 4),
    ("geometry/uniformity", "uniformity", 4),
]


def load_runs(encoder_dir: Path) -> list[dict[str, Any]]:
    """Every stored run of one encoder."""
    return [json.loads(path.read_text()) for path in sorted((encoder_dir / "runs").glob("*.json"))]


def metric_keys(runs: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """The STS Spearman and IR nDCG@10 metric names present in the runs (sorted).

    The IR sets read from BEIR folders (real retrieval, the runs' ``beir_ir_sets``) come first, so the first IR
    column of the table and the IR axis of the plot are the BEIR nDCG@10 whenever the recipe evaluates on one.
    """
    keys = {key for run in runs for key in run["metrics"]}
    beir = {name for run in runs for name in run.get("beir_ir_sets") or []}
    sts = sorted(k for k in keys if k.startswith("sts/") and k.endswith("/spearman_cosine"))
    ir_keys = (k for k in keys if k.startswith("ir/") and k.endswith("/ndcg@10"))
    ir = sorted(ir_keys, key=lambda k: (k.split("/")[1] not in beir, k))
    return sts, ir


def mean_and_spread(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    values = [float(v) for v in values]
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def format_cell(values: Sequence[float], digits: int = 4) -> str:
    if not values:
        return "-"
    mean, spread = mean_and_spread(values)
    if abs(mean) >= 1e4:
        text = f"{mean:.3g}"
        return text if spread is None else f"{text} ± {spread:.2g}"
    return f"{mean:.{digits}f}" if spread is None else f"{mean:.{digits}f} ± {spread:.{digits}f}"


def group_runs(runs: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Runs grouped by method, in the study's row order."""
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[run["method"]].append(run)
    return {key: groups[key] for key in sorted(groups, key=lambda k: row_index(k, list(groups)))}


def updates_cell(group: Sequence[Mapping[str, Any]]) -> str:
    """Optimizer updates per task (IR / STS) of a method, the mean over seeds when the seeds' schedules differ."""
    counts = [run["updates"] for run in group if run.get("updates")]
    if not counts:
        return "-"
    method = METHODS.get(group[0]["method"])
    if method is not None and method.pooled:  # every batch mixes both tasks' data
        return f"{round(statistics.fmean(sum(c.values()) for c in counts))} mixed"
    means = [statistics.fmean(c.get(task, 0) for c in counts) for task in ("ir", "sts")]
    cell = " / ".join(f"{m:.0f}" for m in means)
    return cell if all(c == counts[0] for c in counts) else f"{cell} (mean)"


#: The ``device`` of a run recorded before runs named theirs: every such run ran on the project's CPU machine.
UNRECORDED_DEVICE = "cpu: the project's 2-core CPU machine"


def device_of(run: Mapping[str, Any]) -> str:
    """Where a run trained and was evaluated (its ``device`` field, or :data:`UNRECORDED_DEVICE`)."""
    return str(run.get("device", UNRECORDED_DEVICE))


def device_kind(run: Mapping[str, Any]) -> str:
    """``"GPU"`` or ``"CPU"``: the kind of machine :func:`device_of` names."""
    return "GPU" if device_of(run).startswith("cuda") else "CPU"


def time_cell(group: Sequence[Mapping[str, Any]], tag_devices: bool = False) -> str:
    """Train time (or fusion time) of a method, mean ± sd over seeds; one figure per device when ``tag_devices``
    (CPU and GPU seconds are never averaged together)."""
    key, prefix, suffix = "train_runtime_s", "", ""
    if not any(key in run for run in group):
        key, prefix, suffix = "fusion_runtime_s", "+", " (fusion)"
    by_device: dict[str, list[float]] = defaultdict(list)
    for run in group:
        if key in run:
            by_device[device_kind(run)].append(run[key])
    if not by_device:
        return "-"
    if not tag_devices:
        return f"{prefix}{format_cell([t for times in by_device.values() for t in times], 1)}{suffix}"
    return "; ".join(
        f"{prefix}{format_cell(by_device[kind], 1)}{suffix} {kind}" for kind in ("CPU", "GPU") if kind in by_device
    )


def devices_line(runs: Sequence[Mapping[str, Any]]) -> str:
    """Which machines made the runs (in first-seen order), e.g.
    ``cpu: the project's 2-core CPU machine (30 runs); cuda: NVIDIA H200 (torch 2.11.0+cu130) (13 runs)``."""
    counts = Counter(device_of(run) for run in runs)
    return "; ".join(f"{device} ({count} runs)" for device, count in counts.items())


def encoder_table(runs: Sequence[Mapping[str, Any]], geometry: bool = True) -> str:
    """The Markdown table of one encoder: one row per method, mean ± sd over seeds (geometry columns optional)."""
    geometry_columns = GEOMETRY if geometry else []
    sts_keys, ir_keys = metric_keys(runs)
    header = ["method", "seeds"]
    header += [f"STS {k.split('/')[1]} Spearman" for k in sts_keys]
    header += [f"IR {k.split('/')[1]} nDCG@10" for k in ir_keys]
    header += [label for _, label, _ in geometry_columns]
    by_epochs = any(run.get("epochs") for run in runs)  # the equal-data study: epochs and the dev-best checkpoint
    if by_epochs:
        header += ["epochs", "dev-best epoch"]
    header += ["updates IR / STS", "train time (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    tag_devices = len({device_kind(run) for run in runs}) > 1  # CPU and GPU times side by side, never averaged
    for group in group_runs(runs).values():
        seeds = sorted(run["seed"] for run in group if run["seed"] is not None)
        cells = [group[0]["label"], ", ".join(map(str, seeds)) or "-"]
        for metric in [*sts_keys, *ir_keys]:
            cells.append(format_cell([run["metrics"][metric] for run in group if metric in run["metrics"]]))
        for metric, _, digits in geometry_columns:
            cells.append(format_cell([run["metrics"][metric] for run in group if metric in run["metrics"]], digits))
        if by_epochs:
            cells += [epochs_cell(group), best_epoch_cell(group)]
        cells.append(updates_cell(group))
        cells.append(time_cell(group, tag_devices))
        lines.append("| " + " | ".join(cells) + " |")
    fused = sorted({run_name for run in runs if run["method"] in RATIO_FUSION_ROWS for run_name in run["fused_runs"]})
    if fused:
        lines += ["", f"(h) fuses the final models of the runs {', '.join(fused)} (base = the encoder), per seed."]
    return "\n".join(lines)


def _number(value: float) -> str:
    return f"{value:g}" if value == int(value) else f"{value:.2f}"


def epochs_cell(group: Sequence[Mapping[str, Any]]) -> str:
    """Epochs each seed's run trained (equal-data study); one figure when all agree."""
    trained = [run["epochs_trained"] for run in group if run.get("epochs_trained") is not None]
    return ", ".join(dict.fromkeys(_number(float(e)) for e in trained)) or "-"


def best_epoch_cell(group: Sequence[Mapping[str, Any]]) -> str:
    """The epoch of the dev-best checkpoint of each seed (by the run's ``selection_metric``), in seed order; for the
    trade-off set-up the epochs of the checkpoints its fusion took (IR-heavy best-IR / STS-heavy best-STS)."""
    cells = []
    for run in sorted(group, key=lambda r: r["seed"] if r["seed"] is not None else -1):
        if run.get("best_checkpoint_step") is not None:
            epochs = [e["epoch"] for e in run.get("dev_evaluations", []) if e["step"] == run["best_checkpoint_step"]]
            cells.append(_number(float(epochs[0])) if epochs else f"step {run['best_checkpoint_step']}")
        elif run.get("selections"):
            chosen = []
            for selection in run["selections"]:
                evaluations = run["tradeoff_runs"][selection["run"]]["dev_evaluations"]
                epoch = [e["epoch"] for e in evaluations if e["step"] == selection["step"]]
                chosen.append(_number(float(epoch[0])) if epoch else f"step {selection['step']}")
            cells.append("/".join(chosen))
    return ", ".join(cells) or "-"


#: The baselines of the headline: set-ups trained with one plain loss, as a sentence-transformers user would start
#: (InfoNCE on IR, CosineSimilarityLoss / CoSENTLoss on STS, one loss over mixed batches). (b), CoDiEmb's own STS loss
#: alone, is part of CoDiEmb and stays in the full table.
HEADLINE_BASELINES = ("ir_only", "sts_cosine", "sts_cosent", "mixed_infonce", "cosent")


def headline_table(runs: Sequence[Mapping[str, Any]]) -> str:
    """Base vs CoDiEmb (its fusion, and the fusion (h) of its IR-heavy and STS-heavy ratio runs) vs the best
    single-loss baseline on each dev set (mean ± sd over seeds).

    The best baseline is picked per metric among :data:`HEADLINE_BASELINES`, by its mean; its row names it.
    """
    sts_keys, ir_keys = metric_keys(runs)
    keys = [key for key in (sts_keys[:1] + ir_keys[:1])]
    groups = group_runs(runs)

    def values(key: str, metric: str) -> list[float]:
        return [run["metrics"][metric] for run in groups.get(key, []) if metric in run["metrics"]]

    header = ["model", "seeds"]
    header += [f"STS {k.split('/')[1]} Spearman" for k in sts_keys[:1]]
    header += [f"IR {k.split('/')[1]} nDCG@10" for k in ir_keys[:1]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def row(key: str, label: str) -> None:
        seeds = sorted(run["seed"] for run in groups[key] if run["seed"] is not None)
        lines.append("| " + " | ".join([label, ", ".join(map(str, seeds)) or "-",
                                        *(format_cell(values(key, k)) for k in keys)]) + " |")  # fmt: skip

    for key in (BASE_ROW, "codiemb", "codiemb_delta_fusion", "ratio_delta_fusion"):
        if key in groups:
            row(key, groups[key][0]["label"])
    for key in groups:
        if is_tradeoff_row(key):
            row(key, groups[key][0]["label"])
    for metric in keys:
        candidates = [key for key in HEADLINE_BASELINES if values(key, metric)]
        if candidates:
            best = max(candidates, key=lambda key: statistics.fmean(values(key, metric)))
            task = "STS" if metric.startswith("sts/") else "IR"
            row(best, f"best single-loss baseline on {task}: {groups[best][0]['label']}")
    return "\n".join(lines)


#: The specialists of issue 19's target: one per task, the best by its mean on that task's dev set.
SPECIALISTS = ("ir_only", "sts_only", "sts_cosine", "sts_cosent")
TARGET_MARGIN = 0.005  # 0.5 pt


def target_check(runs: Sequence[Mapping[str, Any]], key: str = TRADEOFF_ROW) -> str:
    """Issue 19's target for ``key`` (by default the one-command trade-off set-up), on the means over its seeds: within
    0.5 pt of the best specialist on each dev set, and above the base and mixed-batch InfoNCE on both. Empty when the
    runs lack ``key``."""
    groups = group_runs(runs)
    if key not in groups:
        return ""
    sts_keys, ir_keys = metric_keys(runs)
    metrics = [(sts_keys[0], "STS"), (ir_keys[0], "IR")]

    def mean(group_key: str, metric: str) -> float | None:
        values = [run["metrics"][metric] for run in groups.get(group_key, []) if metric in run["metrics"]]
        return statistics.fmean(values) if values else None

    lines = [f"| check ({groups[key][0]['label']}, mean over seeds) | dev set | it | reference | difference (pt) | met |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for metric, task in metrics:
        name = metric.split("/")[1]
        own = mean(key, metric)
        specialists = [k for k in SPECIALISTS if mean(k, metric) is not None]
        if specialists:
            best = max(specialists, key=lambda k: mean(k, metric))
            diff = own - mean(best, metric)
            lines.append(f"| within 0.5 pt of the best specialist on {task} ({groups[best][0]['label']}) | {name} | "
                         f"{own:.4f} | {mean(best, metric):.4f} | {100 * diff:+.2f} | "
                         f"{'yes' if diff >= -TARGET_MARGIN else '**no**'} |")  # fmt: skip
        for other in (BASE_ROW, "mixed_infonce"):
            if mean(other, metric) is None:
                continue
            diff = own - mean(other, metric)
            lines.append(f"| above {groups[other][0]['label']} | {name} | {own:.4f} | {mean(other, metric):.4f} | "
                         f"{100 * diff:+.2f} | {'yes' if diff > 0 else '**no**'} |")  # fmt: skip
    return "\n".join(lines)


def commands(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The distinct commands that produced the runs (in first-seen order)."""
    return list(dict.fromkeys(run["command"] for run in runs if run.get("command")))


def step_budget(runs: Sequence[Mapping[str, Any]]) -> str:
    """The budget of the trained runs, ``"225 updates"`` or ``"5 epochs"`` (one per encoder; the base row has none)."""
    budgets = sorted(
        {f"{run['epochs']} epoch{'s' if run['epochs'] != 1 else ''}" if run.get("epochs") else f"{run['max_steps']} updates"
         for run in runs if run["method"] != BASE_ROW}
    )  # fmt: skip
    if len(budgets) != 1:
        raise ValueError(f"Runs of {runs[0]['encoder']} mix budgets {budgets}: compare like with like")
    return budgets[0]


def budget_text(runs: Sequence[Mapping[str, Any]]) -> str:
    """The budget sentence of ``study.md``."""
    budget = step_budget(runs)
    if budget.endswith("updates"):
        return f"{budget.removesuffix(' updates')} optimizer updates per method"
    caps = sorted({run.get("eval_max_corpus") for run in runs if run.get("eval_max_corpus")})
    cap = f" (IR dev corpus capped at {caps[0]} documents during training, relevant ones kept)" if caps else ""
    return (
        f"{budget} per method over its own data (equal data); dev sets evaluated at every epoch{cap}, the dev-best "
        "checkpoint kept by the method's metric (IR only: IR nDCG@10; STS only: STS Spearman; both tasks' data: "
        "their mean) and evaluated on the whole dev sets for the cells"
    )


def plot_tradeoff(encoders: Mapping[str, Sequence[Mapping[str, Any]]], output: Path) -> Path:
    """One panel per encoder: IR nDCG@10 (y) vs STS Spearman (x), one point per method (mean, ± sd bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(encoders), figsize=(max(6.2 * len(encoders), 10.0), 5.6), squeeze=False)
    colours = plt.get_cmap("tab20")
    every_row = [key for runs in encoders.values() for key in group_runs(runs)]  # same marker in every panel
    for ax, (encoder, runs) in zip(axes[0], encoders.items()):
        sts_keys, ir_keys = metric_keys(runs)
        if not sts_keys or not ir_keys:
            ax.set_title(f"{encoder}: needs both STS and IR metrics")
            continue
        sts_key, ir_key = sts_keys[0], ir_keys[0]
        points: dict[str, tuple[float, float, float, float]] = {}
        for key, group in group_runs(runs).items():
            index = row_index(key, every_row)
            xs = [r["metrics"][sts_key] for r in group]
            ys = [r["metrics"][ir_key] for r in group]
            (x, sx), (y, sy) = mean_and_spread(xs), mean_and_spread(ys)
            points[key] = (x, y, sx or 0.0, sy or 0.0)
            ax.errorbar(x, y, xerr=sx or 0.0, yerr=sy or 0.0, fmt=MARKERS[index % len(MARKERS)], capsize=3,
                        markersize=10 if key in RATIO_FUSION_ROWS else 6, label=group[0]["label"],
                        color="black" if key == BASE_ROW else colours(index % 20))  # fmt: skip
        sweep = sorted(
            (METHODS[key].ir_share, key) for key in points if key in METHODS and METHODS[key].ir_share is not None
        )
        if len(sweep) > 1:
            ax.plot([points[k][0] for _, k in sweep], [points[k][1] for _, k in sweep], "k--", lw=0.8,
                    label="IR:STS sweep (STS only -> IR only)")  # fmt: skip
        ax.set_xlabel(f"STS Spearman ({sts_key.split('/')[1]})")
        ax.set_ylabel(f"IR nDCG@10 ({ir_key.split('/')[1]})")
        seeds = sorted({r["seed"] for r in runs if r["seed"] is not None})
        ax.set_title(f"{encoder} ({step_budget(runs)}, seeds {seeds})", fontsize=10)
        ax.grid(alpha=0.3)
    legend: dict[str, Any] = {}
    for ax in axes[0]:  # every label once, even when encoders ran different methods
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.tight_layout()
    # Long row labels (the trade-off variants) are wrapped and the legend hangs below the plots, whole.
    labels = [textwrap.fill(label, 75) for label in legend]
    fig.legend(list(legend.values()), labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=8,
               frameon=False)  # fmt: skip
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return output


def write_report(results_dir: str | os.PathLike[str]) -> list[Path]:
    """Write every encoder's ``study.md``, the shared ``summary.md`` and ``tradeoff.png``; returns the files written."""
    results_dir = Path(results_dir)
    encoders = {}
    for path in sorted(p for p in results_dir.iterdir() if (p / "runs").is_dir()):
        runs = load_runs(path)
        if any(run["method"] != BASE_ROW for run in runs):  # a base evaluation alone is not a study yet
            encoders[path.name] = runs
    if not encoders:
        raise FileNotFoundError(f"No trained study runs under {results_dir}/<encoder>/runs")
    written = []
    for encoder, runs in encoders.items():
        table = encoder_table(runs)
        trained = [run for run in runs if run["method"] != BASE_ROW]
        base_cmds = [
            cmd for cmd in commands([r for r in runs if r["method"] == BASE_ROW]) if cmd not in commands(trained)
        ]
        made_by = "\n".join(commands(trained))
        if base_cmds:
            made_by += "\n# the base row was evaluated (before any training) by:\n" + "\n".join(base_cmds)
        text = (
            f"# Study: {encoder}\n\nMade by (then `python recipes/study/run_study.py report`):\n\n```\n{made_by}\n```\n\n"
            f"Recipe `{runs[0]['recipe']}`, {budget_text(runs)}. Cells: mean ± sample "
            "standard deviation over the seeds listed. Train time: wall seconds of `trainer.train()` (the study "
            "README names the machine and what else ran on it; CPU and GPU times are shown apart).\n\n"
            f"Devices: {devices_line(runs)}.\n\n"
            f"{table}\n"
        )
        path = results_dir / encoder / "study.md"
        path.write_text(text)
        written.append(path)
    summary = ["# Study summary: STS and IR on the dev splits, every encoder", ""]
    notes = results_dir / "notes.md"  # the study's own words (machine, commands, what ran), kept across reports
    if notes.is_file():
        summary += [notes.read_text().strip(), ""]
    summary += [
        "Per-encoder tables with the geometry metrics and the commands: `<encoder>/study.md`; plot: `tradeoff.png`."
    ]
    summary += [""]
    for encoder, runs in encoders.items():
        summary += [f"## {encoder} ({step_budget(runs)} per method)", "", "Headline:", "",
                    headline_table(runs), "", "Every method:", "", encoder_table(runs, False), ""]  # fmt: skip
        for key in (k for k in group_runs(runs) if is_tradeoff_row(k)):
            summary += [f"Issue 19's target for the one-command trade-off set-up `{key}`:", "", target_check(runs, key), ""]
    (results_dir / "summary.md").write_text("\n".join(summary))
    written.append(results_dir / "summary.md")
    written.append(plot_tradeoff(encoders, results_dir / "tradeoff.png"))
    for path in written:
        logger.info("Wrote %s", path)
    return written
