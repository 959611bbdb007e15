"""Search fusion settings on dev sets: fuse each candidate of a grid, evaluate it, keep the best by the user's weight.

The candidates are the inputs themselves (the end points of the IR-vs-STS trade-off) and one fusion per point of the
grid of the method's parameters: ``p`` values and, for two inputs, the first input's share ``s`` (shares
``(s, 1 - s)``; with more inputs the shares stay equal). Each fusion streams into a temporary folder, is loaded,
evaluated and deleted before the next one, so memory stays at one model beyond the streaming fusion. Every candidate
gets ``ir`` (mean nDCG@10 over the IR dev sets), ``sts`` (mean Spearman over the STS dev sets) and
``score = ir_weight * ir + (1 - ir_weight) * sts`` (the ``eval_codiemb_*`` scores of evaluation during training). The
candidate with the highest score (the first one on ties) is written to the output folder by :func:`fusion.fuse`
(atomically, with ``fusion_search.md``, ``fusion_search.json``, ``fusion_front.png`` and a card saying what was
chosen and why).
"""

from __future__ import annotations

import gc
import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hf_codiemb.fusion.errors import SelectionError

if TYPE_CHECKING:
    from hf_codiemb.arguments import ModelArguments

logger = logging.getLogger(__name__)

SEARCH_TABLE = "fusion_search.md"
SEARCH_JSON = "fusion_search.json"
FRONT_PLOT = "fusion_front.png"
DEFAULT_P_VALUES = (0.0, 1.0, 2.0)
DEFAULT_SHARES = (0.25, 0.5, 0.75)
IR_METRIC = "ndcg@10"
STS_METRIC = "spearman_cosine"


@dataclass
class Candidate:
    """One evaluated candidate of the search.

    Attributes:
        label: ``"input 1 (checkpoint-30)"`` or ``"p=1, shares=0.25/0.75"``.
        kind: ``"input"`` (an input itself) or ``"fusion"``.
        parameters: the method's parameters of a fusion; ``{"input": k}`` (1-based) for an input.
        ir_score / sts_score: mean nDCG@10 over the IR dev sets / mean Spearman over the STS dev sets.
        score: ``ir_weight * ir_score + (1 - ir_weight) * sts_score``.
        metrics: per set, ``{"ir/<set>": nDCG@10, "sts/<set>": Spearman}``.
        on_front: whether no other candidate is at least as good on both tasks and better on one (Pareto front).
    """

    label: str
    kind: str
    parameters: dict[str, Any]
    ir_score: float
    sts_score: float
    score: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    on_front: bool = False


@dataclass
class SearchResult:
    """What :func:`fusion_search` produced: every candidate, the chosen one and the written model."""

    candidates: list[Candidate]
    chosen: Candidate
    ir_weight: float
    output_dir: Path


def combined_scores(results: Mapping[str, Any]) -> tuple[float, float, dict[str, float]]:
    """``(ir, sts, per-set metrics)`` of :func:`hf_codiemb.evaluation.evaluate_model`'s results: the mean nDCG@10
    over the IR sets and the mean Spearman over the STS sets."""
    per_set = {f"ir/{name}": float(metrics[IR_METRIC]) for name, metrics in results.get("ir", {}).items()}
    per_set |= {f"sts/{name}": float(metrics[STS_METRIC]) for name, metrics in results.get("sts", {}).items()}
    ir = [value for key, value in per_set.items() if key.startswith("ir/")]
    sts = [value for key, value in per_set.items() if key.startswith("sts/")]
    return sum(ir) / len(ir), sum(sts) / len(sts), per_set


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For each ``(ir, sts)`` point: True when no other point is >= on both and > on one."""
    return [
        not any(
            other[0] >= point[0] and other[1] >= point[1] and (other[0] > point[0] or other[1] > point[1])
            for other in points
        )
        for point in points
    ]


def search_grid(
    method_params: Mapping[str, Any],
    num_checkpoints: int,
    p_values: Sequence[float] = DEFAULT_P_VALUES,
    shares: Sequence[float] = DEFAULT_SHARES,
) -> list[dict[str, Any]]:
    """The fusion candidates' method parameters: ``method_params`` with each ``p`` and, for two checkpoints, each
    share ``s`` of the first as ``shares=(s, 1 - s)`` (an empty ``shares`` keeps equal shares)."""
    share_options: list[tuple[float, ...] | None] = [None]
    if num_checkpoints == 2 and shares:
        share_options = [(float(s), 1.0 - float(s)) for s in shares]
    grid = []
    for p in p_values or [method_params.get("p", 1.0)]:
        for option in share_options:
            params = dict(method_params, p=float(p))
            if option is not None:
                params["shares"] = option
            grid.append(params)
    return grid


def _check_grid(p_values: Sequence[float], shares: Sequence[float]) -> None:
    """Refuse a negative ``p`` or a share outside [0, 1]."""
    if any(p < 0 for p in p_values):
        raise SelectionError(f"--search_p values must be >= 0, got {list(p_values)}")
    if any(not 0.0 <= s <= 1.0 for s in shares):
        raise SelectionError(f"--search_shares values must lie in [0, 1], got {list(shares)}")


def candidate_label(params: Mapping[str, Any]) -> str:
    """``"p=1, shares=0.25/0.75"`` (``p`` and the shares, the search's axes)."""
    label = f"p={params['p']:g}"
    if params.get("shares") is not None:
        label += ", shares=" + "/".join(f"{share:g}" for share in params["shares"])
    return label


def fusion_search(
    checkpoints: Sequence[str | Path],
    output_dir: str | Path,
    *,
    base: str | Path,
    sts_sets: Mapping[str, Any],
    ir_sets: Mapping[str, Any],
    model_args: ModelArguments | None = None,
    method: str = "delta",
    method_params: Mapping[str, Any] | None = None,
    p_values: Sequence[float] = DEFAULT_P_VALUES,
    shares: Sequence[float] = DEFAULT_SHARES,
    ir_weight: float = 0.5,
    selections: Sequence[Mapping[str, Any]] = (),
    overwrite: bool = False,
    model_id: str | None = None,
    base_model_id: str | None = None,
    batch_size: int = 32,
    show_progress: bool = True,
) -> SearchResult:
    """Evaluate the inputs and a grid of fusions of them on the dev sets; write the best by ``ir_weight``.

    Args:
        checkpoints: the fusion inputs (at least two).
        output_dir: the chosen model's folder (with the search's table, JSON and plot).
        base: the base model of the fusion.
        sts_sets / ir_sets: the dev sets (:func:`hf_codiemb.pipeline.load_eval_sets`), at least one of each task.
        model_args: the model settings of the recipe the dev sets come from (pooling, ``torch_dtype``,
            ``max_seq_length``, ``trust_remote_code``, ``pooling_include_prompt``): every candidate is loaded with
            them by :func:`hf_codiemb.models.load_model`, as ``codiemb evaluate`` loads a model (its
            ``model_name_or_path`` and LoRA settings are not used). Unset: the defaults of
            :class:`~hf_codiemb.arguments.ModelArguments`.
        method: the fusion method whose parameters are searched (it must declare ``p``; ``shares`` for two inputs).
        method_params: the method's other parameters (``granularity``, ...), kept fixed.
        p_values / shares: the grid (``shares``: the first input's share, two inputs only).
        ir_weight: ``w`` of ``score = w * ir + (1 - w) * sts``, in [0, 1].
        selections: how the inputs were picked (:meth:`SelectedCheckpoint.to_dict`), for the card.
        overwrite, model_id, base_model_id: as for :func:`hf_codiemb.fusion.fuse`.
        batch_size: encoding batch size of the evaluation.
        show_progress: a tqdm bar over the candidates.

    Raises:
        SelectionError: fewer than two inputs, no IR or no STS dev set, an ``ir_weight`` outside [0, 1], a bad grid.
        FusionError: as :func:`hf_codiemb.fusion.fuse` (checked on the first candidate, before any evaluation).
    """
    from tqdm.auto import tqdm

    from hf_codiemb.fusion.output import check_not_an_input, check_output
    from hf_codiemb.fusion.registry import validate_method_params

    if base is None:
        raise SelectionError("The fusion search needs the base model (--base)")
    if len(checkpoints) < 2:
        raise SelectionError("The fusion search needs at least two inputs (--checkpoints or --select)")
    if not sts_sets or not ir_sets:
        raise SelectionError(
            "The fusion search needs STS and IR dev sets (sts_eval and ir_eval / ir_eval_from_sts of --eval_recipe); "
            f"got {len(sts_sets)} STS and {len(ir_sets)} IR sets"
        )
    if not 0.0 <= ir_weight <= 1.0:
        raise SelectionError(f"--ir_weight must lie in [0, 1], got {ir_weight}")
    _check_grid(p_values, shares)
    output_dir = Path(output_dir).expanduser().absolute()
    check_not_an_input(output_dir, [("base", base)] + [(f"checkpoint {i}", c) for i, c in enumerate(checkpoints, 1)])
    check_output(output_dir, overwrite)  # before the search's work, not after it
    grid = search_grid(dict(method_params or {}), len(checkpoints), p_values, shares)
    for params in grid:
        try:
            validate_method_params(method, params)
        except ValueError as exc:
            raise SelectionError(f"Fusion search over {method!r}: {exc}") from None

    from hf_codiemb.model_names import public_model_name

    names = [public_model_name(str(checkpoint)) for checkpoint in checkpoints]
    plans: list[tuple[str, str, dict[str, Any], list[str | Path], str, dict[str, Any]]] = [
        (f"input {index} ({name})", "input", {"input": index}, [checkpoint], "delta", {"p": 1.0})
        for index, (checkpoint, name) in enumerate(zip(checkpoints, names), start=1)
    ]
    plans += [(candidate_label(params), "fusion", params, list(checkpoints), method, params) for params in grid]
    candidates = []
    for label, kind, parameters, inputs, fuse_method, fuse_params in tqdm(
        plans, desc="fusion search", unit="candidate", disable=not show_progress
    ):
        ir, sts, per_set = _fuse_and_evaluate(
            base, inputs, fuse_method, fuse_params, sts_sets, ir_sets, model_args, batch_size
        )
        candidate = Candidate(label, kind, _jsonable(parameters), ir, sts, ir_weight * ir + (1 - ir_weight) * sts,
                              per_set)  # fmt: skip
        logger.info("%s: IR %.4f, STS %.4f, score %.4f", label, ir, sts, candidate.score)
        candidates.append(candidate)
    for candidate, on_front in zip(candidates, pareto_front([(c.ir_score, c.sts_score) for c in candidates])):
        candidate.on_front = on_front
    chosen = max(candidates, key=lambda c: c.score)  # the first of equal scores: max keeps the first
    logger.info("Chosen: %s (score %.4f at ir_weight %g)", chosen.label, chosen.score, ir_weight)
    _write_chosen(
        chosen, candidates, checkpoints, output_dir, base=base, method=method, ir_weight=ir_weight,
        selections=selections, dev_sets=[*sts_sets, *ir_sets], grid_axes=_axes(p_values, shares, len(checkpoints)),
        overwrite=overwrite, model_id=model_id, base_model_id=base_model_id,
    )  # fmt: skip
    return SearchResult(candidates=candidates, chosen=chosen, ir_weight=ir_weight, output_dir=output_dir)


def _fuse_and_evaluate(
    base: str | Path,
    inputs: Sequence[str | Path],
    method: str,
    params: Mapping[str, Any],
    sts_sets: Mapping[str, Any],
    ir_sets: Mapping[str, Any],
    model_args: ModelArguments | None,
    batch_size: int,
) -> tuple[float, float, dict[str, float]]:
    """Fuse ``inputs`` into a temporary folder (one input: the input itself, exactly), load it with ``model_args``'
    settings (:func:`hf_codiemb.models.load_model`), evaluate it, delete it."""
    from hf_codiemb.arguments import ModelArguments
    from hf_codiemb.evaluation import evaluate_model
    from hf_codiemb.fusion.core import fuse
    from hf_codiemb.models import load_model

    with tempfile.TemporaryDirectory(prefix="codiemb-fusion-search-") as tmp:
        folder = Path(tmp) / "candidate"
        fuse(inputs, folder, base=base, method=method, method_params=dict(params), show_progress=False)
        settings = replace(model_args or ModelArguments(), model_name_or_path=str(folder), lora_r=0)
        model = load_model(settings)  # the candidate as it is: the recipe's model settings, no new adapters
        try:
            results = evaluate_model(model, sts_sets, ir_sets, geometry_texts=[], batch_size=batch_size)
        finally:
            del model
            gc.collect()
    return combined_scores(results)


def _axes(p_values: Sequence[float], shares: Sequence[float], num_checkpoints: int) -> list[str]:
    """The grid's axes for the card: ``["p in {0, 1}", "the first input's share in {0.25, 0.75}"]``."""
    axes = ["p in {" + ", ".join(f"{p:g}" for p in p_values) + "}"]
    if num_checkpoints == 2 and shares:
        axes.append("the first input's share in {" + ", ".join(f"{s:g}" for s in shares) + "}")
    return axes


def _jsonable(params: Mapping[str, Any]) -> dict[str, Any]:
    return {key: list(value) if isinstance(value, tuple) else value for key, value in params.items()}


def search_table(candidates: Sequence[Candidate], chosen: Candidate) -> str:
    """The Markdown table of every candidate: IR, STS, score, on the front (◆), chosen (★)."""
    lines = ["| candidate | IR (nDCG@10) | STS (Spearman) | score | front | chosen |", "|---|---|---|---|---|---|"]
    for candidate in candidates:
        lines.append(
            f"| {candidate.label} | {candidate.ir_score:.4f} | {candidate.sts_score:.4f} | {candidate.score:.4f} "
            f"| {'◆' if candidate.on_front else ''} | {'★' if candidate is chosen else ''} |"
        )
    return "\n".join(lines)


def card_choice(
    chosen: Candidate,
    candidates: Sequence[Candidate],
    ir_weight: float,
    dev_sets: Sequence[str],
    grid_axes: Sequence[str],
) -> dict[str, Any]:
    """The ``search`` entry of the card's "How this model was chosen" section (:func:`fusion.card.render_card`)."""
    return {
        "ir_weight": ir_weight,
        "chosen": asdict(chosen),
        "candidates": [candidate.label for candidate in candidates],
        "dev_sets": list(dev_sets),
        "grid": list(grid_axes),
        "table": search_table(candidates, chosen),
    }


def plot_front(candidates: Sequence[Candidate], chosen: Candidate, path: Path) -> None:
    """IR vs STS of every candidate (matplotlib's Agg canvas): inputs as squares, the Pareto front as a line, the
    chosen candidate as a star."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    fusions = [c for c in candidates if c.kind == "fusion"]
    inputs = [c for c in candidates if c.kind == "input"]
    axes.scatter([c.ir_score for c in fusions], [c.sts_score for c in fusions], s=20, label="fusions")
    axes.scatter([c.ir_score for c in inputs], [c.sts_score for c in inputs], marker="s", s=40, label="inputs")
    front = sorted((c for c in candidates if c.on_front), key=lambda c: c.ir_score)
    axes.plot([c.ir_score for c in front], [c.sts_score for c in front], "k--", lw=1, label="Pareto front")
    axes.scatter([chosen.ir_score], [chosen.sts_score], marker="*", s=200, c="red", label="chosen", zorder=3)
    for candidate in candidates:
        axes.annotate(candidate.label, (candidate.ir_score, candidate.sts_score), fontsize=6)
    axes.set_xlabel("IR: mean nDCG@10 (dev)")
    axes.set_ylabel("STS: mean Spearman (dev)")
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def _write_chosen(
    chosen: Candidate,
    candidates: Sequence[Candidate],
    checkpoints: Sequence[str | Path],
    output_dir: Path,
    *,
    base: str | Path,
    method: str,
    ir_weight: float,
    selections: Sequence[Mapping[str, Any]],
    dev_sets: Sequence[str],
    grid_axes: Sequence[str],
    overwrite: bool,
    model_id: str | None,
    base_model_id: str | None,
) -> None:
    """Write the chosen candidate with :func:`fusion.fuse` (an input: fused alone, which is the input exactly), the
    search's table, JSON and plot in the same atomic write."""
    from hf_codiemb.fusion.core import fuse

    choice = {"selections": list(selections), "search": card_choice(chosen, candidates, ir_weight, dev_sets,
                                                                     grid_axes)}  # fmt: skip
    record = {
        "ir_weight": ir_weight,
        "score": "ir_weight * ir + (1 - ir_weight) * sts",
        "dev_sets": list(dev_sets),
        "selections": list(selections),
        "chosen": chosen.label,
        "candidates": [asdict(candidate) for candidate in candidates],
    }
    with tempfile.TemporaryDirectory(prefix="codiemb-fusion-search-files-") as tmp:
        files = {SEARCH_TABLE: Path(tmp) / SEARCH_TABLE, SEARCH_JSON: Path(tmp) / SEARCH_JSON}
        heading = (
            f"# Fusion search\n\nscore = {ir_weight:g} * IR + {1 - ir_weight:g} * STS on {', '.join(dev_sets)}\n\n"
        )
        files[SEARCH_TABLE].write_text(heading + search_table(candidates, chosen) + "\n", encoding="utf-8")
        files[SEARCH_JSON].write_text(json.dumps(record, indent=2), encoding="utf-8")
        try:
            plot_front(candidates, chosen, Path(tmp) / FRONT_PLOT)
            files[FRONT_PLOT] = Path(tmp) / FRONT_PLOT
        except ImportError:  # pragma: no cover - matplotlib is a dependency
            logger.warning("matplotlib is not installed: no %s", FRONT_PLOT)
        if chosen.kind == "input":
            inputs, fuse_method, params = [checkpoints[chosen.parameters["input"] - 1]], "delta", {"p": 1.0}
        else:
            inputs, fuse_method, params = list(checkpoints), method, chosen.parameters
        fuse(
            inputs, output_dir, base=base, method=fuse_method, method_params=params, overwrite=overwrite,
            model_id=model_id, base_model_id=base_model_id, choice=choice, extra_files=files,
        )  # fmt: skip
