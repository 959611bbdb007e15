"""``codiemb fuse``: fuse fine-tuned checkpoints (CoDiEmb delta-guided fusion or a baseline), optionally push.

Examples::

    codiemb fuse --base base-model --checkpoints run-a run-b --output-dir fused --param p=1.0
    codiemb fuse recipes/default/fuse.yaml --push-to-hub user/codiemb-fused   # a fusion recipe (YAML)
    codiemb fuse --base B --checkpoints "outputs/run/checkpoint-*" --output-dir fused   # every checkpoint of a run
    codiemb fuse --list-methods
    # inputs picked from the runs' recorded dev evaluations, settings searched on the recipe's dev sets:
    codiemb fuse --base B --select_from runs/ir-heavy runs/sts-heavy --select best_ir best_sts \
        --search --eval_recipe recipes/small/minilm-l6/config.yaml --ir_weight 0.5 --output_dir fused
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from hf_codiemb.command_parser import CommandParser
from hf_codiemb.errors import UsageError
from hf_codiemb.fusion.config import FuseConfig

if TYPE_CHECKING:  # the model settings' module imports torch: `codiemb fuse --help` stays fast
    from hf_codiemb.arguments import ModelArguments

logger = logging.getLogger(__name__)


def build_parser() -> CommandParser:
    """The parser of ``codiemb fuse``: :class:`FuseConfig`'s fields, the fusion recipe as ``--config`` or positional."""
    return CommandParser([FuseConfig], prog="codiemb fuse", description=__doc__, config_positional=True)


def expand_checkpoints(patterns: list[str]) -> list[str]:
    """Checkpoint paths, with glob patterns (``run/checkpoint-*``) expanded in step order (``checkpoint-2`` before
    ``checkpoint-10``); a pattern that matches nothing is kept as given, so the fusion names it as missing."""
    import glob
    import re

    def step_order(path: str) -> tuple:
        return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path))

    expanded: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern), key=step_order) if glob.has_magic(pattern) else []
        expanded.extend(matches or [pattern])
    return expanded


def describe_methods() -> str:
    """Every fusion method with its declared parameters (``codiemb fuse --list-methods``)."""
    from hf_codiemb.fusion.registry import method_class, registered_methods

    lines = []
    for name in registered_methods():
        cls = method_class(name)
        lines.append(f"{name}: {cls.description}")
        for spec in cls.parameter_specs:
            choices = f", one of {list(spec.choices)}" if spec.choices else ""
            lines.append(f"    {spec.name} ({spec.type.__name__}, default {spec.default!r}{choices}): {spec.help}")
    return "\n".join(lines)


def load_dev_sets(recipe: str) -> tuple[dict, dict, ModelArguments]:
    """The STS and IR dev sets of a training recipe (its eval keys and prompts), as ``codiemb train`` evaluates, and
    its model settings (pooling, dtype, max length, ...), with which the fusion search loads every candidate."""
    from hf_codiemb.pipeline import load_eval_sets
    from hf_codiemb.recipe import parse_recipe

    model_args, data_args, _, _ = parse_recipe([recipe])
    sts_sets, ir_sets = load_eval_sets(data_args, model_args)
    return sts_sets, ir_sets, model_args


def run(argv: list[str]) -> int:
    """Run ``codiemb fuse ARGV`` (the fusion, then the push); return the process exit code (1: the Hub failed).

    What the user gave wrong (a missing or incompatible input, an output folder that is an input, a bad parameter, a
    bad repo id) raises a :class:`~hf_codiemb.errors.CoDiEmbUserError` (:class:`~hf_codiemb.fusion.FusionError`,
    ...): one line from the console script, exit status 2.
    """
    (config,) = build_parser().parse(argv)  # before the imports: `--help` stays fast
    from hf_codiemb.failures import declare_output
    from hf_codiemb.fusion import fuse
    from hf_codiemb.hub import check_repo_id

    try:
        method_params = config.method_params()
    except ValueError as exc:
        raise UsageError(f"Invalid fuse configuration: {exc}") from None
    if config.list_methods:
        import sys

        sys.stdout.write(describe_methods() + "\n")
        return 0
    config.checkpoints = expand_checkpoints(config.checkpoints)
    selections: list[dict] = []
    if config.select_from or config.select:
        from hf_codiemb.fusion.selection import select_checkpoints

        selected = select_checkpoints(config.select_from, config.select)
        config.checkpoints += [str(item.path) for item in selected]
        selections = [item.to_dict() for item in selected]
    if not config.checkpoints or not config.output_dir:
        raise UsageError(
            "fuse needs --checkpoints (or --select_from and --select) and --output_dir (or a fusion recipe that sets "
            "them)"
        )
    if config.search and not config.eval_recipe:
        raise UsageError("--search needs --eval_recipe RECIPE.yaml (the training recipe whose dev sets to evaluate on)")
    if config.push_to_hub:
        check_repo_id(config.push_to_hub)  # before the fusion, not after it
    output = os.path.abspath(config.output_dir)
    declare_output(output, kept=lambda: f"{output} is unchanged (nothing was written there)")
    if config.search:
        from hf_codiemb.fusion.search import fusion_search

        sts_sets, ir_sets, model_args = load_dev_sets(config.eval_recipe)
        result = fusion_search(
            config.checkpoints,
            config.output_dir,
            base=config.base,
            sts_sets=sts_sets,
            ir_sets=ir_sets,
            model_args=model_args,
            method=config.method,
            method_params=method_params,
            p_values=config.search_p,
            shares=config.search_shares,
            ir_weight=config.ir_weight,
            selections=selections,
            overwrite=config.overwrite,
            model_id=config.push_to_hub,
            base_model_id=config.base_model_id,
        )
        logger.info("Chosen by the fusion search: %s", result.chosen.label)
    else:
        result = fuse(
            config.checkpoints,
            config.output_dir,
            base=config.base,
            method=config.method,
            method_params=method_params,
            overwrite=config.overwrite,
            eval_results=config.eval_results,
            model_id=config.push_to_hub,
            base_model_id=config.base_model_id,
            choice={"selections": selections} if selections else None,
        )
    logger.info("Fused model: %s", result.output_dir)
    return push_fused_model(result.output_dir, config) if config.push_to_hub else 0


def push_fused_model(folder: str | os.PathLike[str], config: FuseConfig) -> int:
    """Push the fused ``folder`` to ``config.push_to_hub`` with ``codiemb push``'s file selection and checks; return
    the exit code (1: the Hub failed; what the user can fix raises, saying where the fused model is)."""
    from hf_codiemb.hub import PUSH_REMEDY, HubPushError, PushRefusedError, push_model_folder

    try:
        url = push_model_folder(
            folder, config.push_to_hub, private=config.private, revision=config.revision, create_pr=config.create_pr
        )
    except PushRefusedError as exc:  # the same file selection and credential checks as `codiemb push`
        remedy = f"{PUSH_REMEDY} The fused model is in {folder}; push it with `codiemb push` once fixed."
        raise PushRefusedError(exc.folder, exc.findings, remedy) from None
    except HubPushError as exc:  # not the user's input: the whole message, with the command to rerun
        logger.error("%s", exc)
        return 1
    logger.info("Pushed to %s", url)
    return 0
