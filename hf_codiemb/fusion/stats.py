"""Per-layer statistics of the fusion weights (JSON + a PNG plot)."""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from hf_codiemb.model_folder import SAFETENSORS_WEIGHTS_FILE

_LAYER = re.compile(r"^(.*?\blayers?\.\d+)\.")


def layer_of(tensor_name: str, group: str = SAFETENSORS_WEIGHTS_FILE) -> str:
    """The layer a tensor belongs to: ``encoder.layer.3`` for ``encoder.layer.3.attention...``, else its first
    name component (``embeddings``, ``pooler``); prefixed with the module folder for non-root weight files."""
    match = _LAYER.match(tensor_name)
    layer = match.group(1) if match else tensor_name.split(".")[0]
    folder = str(Path(group).parent)
    return layer if folder in ("", ".") else f"{folder}/{layer}"


class WeightStatistics:
    """Accumulates, per tensor and per layer, the mean fusion weight of each checkpoint."""

    def __init__(self, checkpoint_labels: list[str]) -> None:
        self.labels = checkpoint_labels
        self.tensors: dict[str, list[float]] = OrderedDict()
        self._layers: dict[str, tuple[torch.Tensor, int]] = OrderedDict()

    def add(self, group: str, name: str, weight_sums: torch.Tensor, numel: int) -> None:
        """Record the summed weights (``(K,)``) of a whole tensor of ``numel`` elements."""
        sums = weight_sums.detach().to(torch.float64).cpu()
        key = name if group == SAFETENSORS_WEIGHTS_FILE else f"{group}:{name}"
        self.tensors[key] = (sums / max(numel, 1)).tolist()
        layer = layer_of(name, group)
        total, count = self._layers.get(layer, (torch.zeros_like(sums), 0))
        self._layers[layer] = (total + sums, count + numel)

    def layers(self) -> list[dict[str, Any]]:
        return [
            {"layer": layer, "numel": count, "mean_weight": (total / max(count, 1)).tolist()}
            for layer, (total, count) in self._layers.items()
        ]

    def to_dict(self, method: str, parameters: dict[str, Any]) -> dict[str, Any]:
        return {
            "method": method,
            "parameters": parameters,
            "checkpoints": self.labels,
            "layers": self.layers(),
            "tensors": self.tensors,
        }

    def save(self, folder: Path, method: str, parameters: dict[str, Any]) -> list[str]:
        """Write ``fusion_weights.json`` and ``fusion_weights.png`` into ``folder``; return the file names."""
        data = self.to_dict(method, parameters)
        (folder / "fusion_weights.json").write_text(json.dumps(data, indent=2))
        files = ["fusion_weights.json"]
        if self._layers and plot_layer_weights(data, folder / "fusion_weights.png"):
            files.append("fusion_weights.png")
        return files


def preload_plotting() -> None:
    """Import matplotlib's Agg canvas in a background thread (about a second), so that it overlaps the fusion's
    tensor work instead of adding to it; :func:`plot_layer_weights` waits for it. Idempotent."""
    global _PRELOAD
    if _PRELOAD is None:
        _PRELOAD = threading.Thread(target=_import_plotting, name="fusion-import-matplotlib", daemon=True)
        _PRELOAD.start()


def _import_plotting() -> bool:
    try:
        import matplotlib.backends.backend_agg
        import matplotlib.figure  # noqa: F401
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        return False
    return True


_PRELOAD: threading.Thread | None = None


def plot_layer_weights(data: dict[str, Any], path: Path) -> bool:
    """Plot the mean weight of each checkpoint per layer (matplotlib's Agg canvas, no pyplot state); False if
    matplotlib is unavailable."""
    if _PRELOAD is not None:
        _PRELOAD.join()
    if not _import_plotting():  # pragma: no cover - matplotlib is a dependency
        return False
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layers = data["layers"]
    names = [row["layer"] for row in layers]
    figure = Figure(figsize=(max(6.0, 0.45 * len(names)), 4.0))
    FigureCanvasAgg(figure)
    axis = figure.add_subplot()
    for index, label in enumerate(data["checkpoints"]):
        axis.plot(range(len(names)), [row["mean_weight"][index] for row in layers], marker="o", label=label)
    if data["checkpoints"]:
        axis.axhline(1.0 / len(data["checkpoints"]), color="grey", linestyle="--", linewidth=0.8, label="uniform")
    axis.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    axis.set_ylabel("mean fusion weight")
    axis.set_title(f"Fusion weights per layer ({data['method']})")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return True
