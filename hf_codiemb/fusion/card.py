"""Render the model card (README.md) of a fused model from the Jinja template in ``hf_codiemb/model_cards/``.

The templates are package data (they ship in the wheel); ``model_cards/`` at the repository root links to them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

TEMPLATE_NAME = "fusion.md.j2"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def template_dir() -> Path:
    """The folder of the model-card templates, inside the installed package (``hf_codiemb/model_cards``)."""
    return Path(__file__).resolve().parents[1] / "model_cards"


def looks_like_repo_id(text: str | None) -> bool:
    """Whether ``text`` has the ``owner/name`` shape of a Hub repo id (and is not an existing local path)."""
    return bool(text) and bool(_REPO_ID.match(text)) and not Path(text).exists()


def load_eval_results(path: str | Path) -> dict[str, dict[str, float]]:
    """Read evaluation results: ``{"metric": value}`` (one row, "fused") or ``{"row": {"metric": value}}``."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a JSON object of metrics or of rows of metrics")
    if all(isinstance(value, (int, float)) for value in data.values()):
        return {"fused": data}
    if all(isinstance(value, dict) for value in data.values()):
        return data
    raise ValueError(f"{path}: expected {{metric: number}} or {{row: {{metric: number}}}}")


def eval_table(results: dict[str, dict[str, Any]]) -> str:
    """A Markdown table with one row per model and one column per metric."""
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
) -> str:
    """The README.md text. ``base_model_id`` goes into the YAML ``base_model`` field (defaults to ``base_model``
    when that is a Hub id; local paths are left out of the metadata, which the Hub would reject)."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    environment = Environment(
        loader=FileSystemLoader(str(template_dir())),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    if base_model_id is None and looks_like_repo_id(base_model):
        base_model_id = base_model
    title = model_id.split("/")[-1] if model_id else f"Fused sentence-transformers model ({method})"
    return environment.get_template(TEMPLATE_NAME).render(
        title=title,
        method=method,
        method_description=method_description,
        parameters=parameters,
        base_model=base_model,
        base_model_id=base_model_id,
        checkpoints=checkpoints,
        model_id=model_id or "path/to/fused-model",
        eval_table=eval_table(eval_results) if eval_results else None,
        stats_file=stats_file,
        plot_file=plot_file,
        license=license,
    )
