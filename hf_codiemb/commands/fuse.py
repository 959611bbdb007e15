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

from hf_codiemb.command_parser import CommandParser
from hf_codiemb.errors import CoDiEmbUserError, UsageError
from hf_codiemb.fusion.config import FuseConfig

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


def load_dev_sets(recipe: str) -> tuple[dict, dict]:
    """The STS and IR dev sets of a training recipe (its eval keys and prompts), as ``codiemb train`` evaluates."""
    from hf_codiemb.pipeline import load_eval_sets
    from hf_codiemb.recipe import parse_recipe

    model_args, data_args, _, _ = parse_recipe([recipe])
    return load_eval_sets(data_args, model_args)


def run(argv: list[str]) -> int:
    """Run ``codiemb fuse ARGV`` (the fusion, then the push); return the process exit code."""
    (config,) = build_parser().parse(argv)  # before the imports: `--help` stays fast
    from hf_codiemb.failures import declare_output
    from hf_codiemb.fusion import FusionError, FusionWriteError, fuse
    from hf_codiemb.fusion.errors import SelectionError
    from hf_codiemb.hub import HubPushError, PushRefusedError, check_repo_id, push_model_folder

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
        try:
            check_repo_id(config.push_to_hub)  # before the fusion, not after it
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    output = os.path.abspath(config.output_dir)
    declare_output(output, kept=lambda: f"{output} is unchanged (nothing was written there)")
    try:
        if config.search:
            from hf_codiemb.fusion.search import fusion_search

            sts_sets, ir_sets = load_dev_sets(config.eval_recipe)
            result = fusion_search(
                config.checkpoints,
                config.output_dir,
                base=config.base,
                sts_sets=sts_sets,
                ir_sets=ir_sets,
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
    except SelectionError:
        raise  # the user's to fix: one line from the console script
    except FusionWriteError:  # the output cannot be written: one line and exit status 2 (hf_codiemb.cli)
        raise
    except (FusionError, ValueError) as exc:  # the inputs are refused: the user's to fix (one line, exit status 2)
        raise CoDiEmbUserError(f"Fusion failed: {exc}") from exc
    except ImportError as exc:
        logger.error("Fusion failed: %s", exc)
        return 1
    logger.info("Fused model: %s", result.output_dir)
    if config.push_to_hub:
        try:
            url = push_model_folder(
                result.output_dir,
                config.push_to_hub,
                private=config.private,
                revision=config.revision,
                create_pr=config.create_pr,
            )
        except PushRefusedError as exc:  # the same file selection and credential checks as `codiemb push`
            logger.error("%s\nThe fused model is in %s; push it with `codiemb push` once fixed.", exc, result.output_dir)
            return 2
        except (HubPushError, FileNotFoundError, ValueError) as exc:
            logger.error("%s", exc)
            return 1
        logger.info("Pushed to %s", url)
    return 0
