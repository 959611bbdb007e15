"""Render the model card (README.md) of a fused model from the Jinja template in ``hf_codiemb/model_cards/``.

The card names its inputs by Hub id or folder name only (never a local absolute path), gives the base's Hub id as
``base_model`` metadata (inferred for ``packaged:``/``prepared:`` models and their folders), and carries what the
inputs' own cards say: training datasets, losses, evaluation scores.

The templates are package data (they ship in the wheel); ``model_cards/`` at the repository root links to them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from hf_codiemb.fusion.errors import FusionError

TEMPLATE_NAME = "fusion.md.j2"


def template_dir() -> Path:
    """The folder of the model-card templates, inside the installed package (``hf_codiemb/model_cards``)."""
    return Path(__file__).resolve().parents[1] / "model_cards"


# The model-index metrics a fused card repeats per input (all of an input's metrics when it has none of these).
HEADLINE_METRICS = ("spearman_cosine", "cosine_ndcg@10", "cosine_mrr@10")
_CODIEMB_ROW = re.compile(r"^\| (?P<name>[^|]+?) \| (?P<task>ir|sts) \| (?P<records>\d+) \|")
_LOSS_LINE = re.compile(r"^\* `(?P<name>[^`]+)`: (?P<loss>.+)$")


def input_card_summary(folder: str | Path | None) -> dict[str, Any] | None:
    """What the model card (README.md) of a fusion input says: base model, datasets, losses, evaluation.

    Returns:
        ``{"base_model", "datasets": [{"name", "task", "records"}], "hub_datasets", "losses": {dataset: text},
        "loss_tags", "metrics": {"dataset metric": value}}``, or ``None`` when the folder has no readable card.
    """
    if folder is None or not (Path(folder) / "README.md").is_file():
        return None
    from huggingface_hub import ModelCard

    try:
        card = ModelCard.load(Path(folder) / "README.md")
    except Exception:  # noqa: BLE001 - a card we cannot parse is a card we do not carry
        return None
    data = card.data.to_dict()
    summary: dict[str, Any] = {
        "base_model": data.get("base_model"),
        "hub_datasets": list(data.get("datasets") or []),
        "loss_tags": [tag for tag in data.get("tags") or [] if str(tag).startswith("loss:")],
        "datasets": [],
        "losses": {},
        "metrics": {},
    }
    section = card.text.split("### CoDiEmb Training", 1)[1] if "### CoDiEmb Training" in card.text else ""
    section = section.split("\n### ", 1)[0]
    subsection = ""
    for line in section.splitlines():
        if line.startswith("#### "):
            subsection = line[5:].strip()
        elif row := _CODIEMB_ROW.match(line):
            summary["datasets"].append({"name": row["name"], "task": row["task"], "records": int(row["records"])})
        elif subsection == "Losses" and (loss := _LOSS_LINE.match(line)):
            summary["losses"][loss["name"]] = loss["loss"]
    results = [result for entry in data.get("model-index") or [] for result in entry.get("results") or []]
    metrics = [
        (result.get("dataset", {}).get("type") or "", metric.get("type"), metric.get("value"))
        for result in results
        for metric in result.get("metrics") or []
    ]
    headline = [item for item in metrics if item[1] in HEADLINE_METRICS] or metrics
    summary["metrics"] = {f"{dataset} {metric}".strip(): value for dataset, metric, value in headline}
    return summary


def load_eval_results(path: str | Path) -> dict[str, dict[str, float]]:
    """Read evaluation results: ``{"metric": value}`` (one row, "fused") or ``{"row": {"metric": value}}``.

    Raises:
        FusionError: the file cannot be read, is not JSON, or holds neither shape (the message names it).
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise FusionError(f"Evaluation results {path} cannot be read ({error})") from None
    if not isinstance(data, dict) or not data:
        raise FusionError(f"{path}: expected a JSON object of metrics or of rows of metrics")
    if all(isinstance(value, (int, float)) for value in data.values()):
        return {"fused": data}
    if all(isinstance(value, dict) for value in data.values()):
        return data
    raise FusionError(f"{path}: expected {{metric: number}} or {{row: {{metric: number}}}}")


def public_names(specs: list[str]) -> list[str]:
    """The public names (Hub id or folder name) of fusion inputs, repeated names told apart (``name (2)``)."""
    from hf_codiemb.model_names import public_model_name

    return _unique([public_model_name(spec) for spec in specs])


def _unique(names: list[str]) -> list[str]:
    """``names`` with repeated ones told apart by their position (``name (2)``)."""
    counts = {name: names.count(name) for name in names}
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(f"{name} ({seen[name]})" if counts[name] > 1 else name)
    return unique


def eval_table(results: dict[str, dict[str, Any]]) -> str:
    """A Markdown table with one row per model and one column per metric (empty text when there is nothing)."""
    if not results:
        return ""
    metrics: list[str] = []
    for row in results.values():
        metrics.extend(metric for metric in row if metric not in metrics)
    lines = ["| model | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for label, row in results.items():
        cells = [_format(row.get(metric)) for metric in metrics]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _format(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def render_card(
    *,
    method: str,
    method_description: str,
    parameters: dict[str, Any],
    base_model: str | None,
    checkpoints: list[str],
    model_id: str | None = None,
    base_model_id: str | None = None,
    eval_results: dict[str, dict[str, Any]] | None = None,
    stats_file: str | None = None,
    plot_file: str | None = None,
    license: str | None = None,
    base_folder: str | Path | None = None,
    checkpoint_folders: list[str | Path] | None = None,
    choice: dict[str, Any] | None = None,
) -> str:
    """The README.md text.

    Args:
        base_model / checkpoints: the inputs as the user named them (paths, Hub ids, ``packaged:`` names); the card
            shows their public names (:func:`hf_codiemb.model_names.public_model_name`: Hub id or folder name).
        base_model_id: the YAML ``base_model`` field; default: the base's Hub id when it has one
            (:func:`hf_codiemb.model_names.infer_base_model_id`), else the one the checkpoints' cards agree on.
        base_folder / checkpoint_folders: local folders of the inputs, whose cards (README.md) are read for their
            datasets, losses and evaluation (:func:`input_card_summary`).
        choice: how the inputs and settings were chosen (the "How this model was chosen" section):
            ``{"selections": [...]}`` (checkpoints picked from a run's recorded evaluations,
            :meth:`hf_codiemb.fusion.selection.SelectedCheckpoint.to_dict`) and/or ``{"search": {...}}`` (the dev-set
            search, :func:`hf_codiemb.fusion.search.card_choice`).
    """
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    from hf_codiemb.model_names import infer_base_model_id, public_model_name

    environment = Environment(
        loader=FileSystemLoader(str(template_dir())),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    names = public_names(checkpoints)
    folders = list(checkpoint_folders or [None] * len(checkpoints))
    summaries = {name: summary for name, folder in zip(names, folders) if (summary := input_card_summary(folder))}
    if base_model_id is None and base_model is not None:
        base_model_id = infer_base_model_id(base_model)
        if base_model_id is None and base_folder is not None:
            base_model_id = infer_base_model_id(base_folder)
    if base_model_id is None:
        declared = {summary["base_model"] for summary in summaries.values() if summary.get("base_model")}
        if len(declared) == 1 and len(summaries) == len(names):
            base_model_id = declared.pop()  # every checkpoint was fine-tuned from the same Hub model
    title = model_id.split("/")[-1] if model_id else f"Fused sentence-transformers model ({method})"
    return environment.get_template(TEMPLATE_NAME).render(
        title=title,
        method=method,
        method_description=method_description,
        parameters=parameters,
        base_model=public_model_name(base_model) if base_model is not None else None,
        base_model_id=base_model_id,
        checkpoints=names,
        inputs=summaries,
        hub_datasets=sorted({dataset for summary in summaries.values() for dataset in summary["hub_datasets"]}),
        loss_tags=sorted({tag for summary in summaries.values() for tag in summary["loss_tags"]}),
        input_eval_table=eval_table({name: summary["metrics"] for name, summary in summaries.items()
                                     if summary["metrics"]}) or None,
        model_id=model_id or "path/to/fused-model",
        eval_table=eval_table(eval_results) if eval_results else None,
        stats_file=stats_file,
        plot_file=plot_file,
        license=license,
        selections=(choice or {}).get("selections") or [],
        search=(choice or {}).get("search"),
    )
