"""The configuration of ``codiemb fuse`` (a fusion recipe), parsed by :class:`hf_codiemb.command_parser.CommandParser`.

Every field has a help string. A YAML file (``codiemb fuse fuse.yaml`` or ``--config fuse.yaml``) gives values for the
same fields; flags given on the command line override it (as in trl's ``TrlParser``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class FuseConfig:
    """Configuration of ``codiemb fuse``."""

    checkpoints: list[str] = field(
        default_factory=list,
        metadata={"help": "Models to fuse: local sentence-transformers folders, Hub ids (owner/name[@rev]) or LoRA "
                          "adapter folders."},
    )
    output_dir: str | None = field(default=None, metadata={"help": "Folder to write the fused model to."})
    base: str | None = field(
        default=None, metadata={"help": "The pre-trained model the checkpoints were fine-tuned from (folder or Hub id)."}
    )
    method: str = field(
        default="delta",
        metadata={"help": "Fusion method: delta (CoDiEmb), uniform, task_arithmetic, ties, dare_ties, dare_linear."},
    )
    parameters: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "The method's parameters as a YAML mapping, e.g. '{p: 1.0, granularity: element}'. Each "
                          "method declares its own (`codiemb fuse --list-methods`); unknown ones are refused."},
    )
    param: list[str] = field(
        default_factory=list,
        metadata={"help": "A method parameter NAME=VALUE (repeatable), e.g. --param p=2 --param granularity=tensor; "
                          "overrides `parameters`."},
    )
    list_methods: bool = field(default=False, metadata={"help": "List the fusion methods and their parameters."})
    overwrite: bool = field(
        default=False, metadata={"help": "Replace a non-empty output folder (never one that is, or holds, an input)."}
    )
    eval_results: str | None = field(
        default=None,
        metadata={"help": "JSON file with evaluation results for the model card: {metric: value} or "
                          "{model: {metric: value}}."},
    )
    base_model_id: str | None = field(
        default=None, metadata={"help": "Hub id for the card's base_model metadata when --base is a local folder."}
    )
    select_from: list[str] = field(
        default_factory=list,
        metadata={"help": "Training run folders to pick inputs from by their recorded evaluations (trainer_state.json "
                          "log_history); paired in order with --select (one run: every criterion from it)."},
    )
    select: list[str] = field(
        default_factory=list,
        metadata={"help": "Selection criteria, one per input: best_ir (highest eval_codiemb_ir_score), best_sts "
                          "(eval_codiemb_sts_score), best_score (eval_codiemb_score); only complete checkpoints "
                          "count. The picked checkpoints follow --checkpoints."},
    )
    search: bool = field(
        default=False,
        metadata={"help": "Search the fusion settings on the dev sets of --eval_recipe: the inputs and a fusion per "
                          "--search_p x --search_shares point are evaluated; the best by --ir_weight is written, "
                          "with fusion_search.md/.json and fusion_front.png."},
    )
    eval_recipe: str | None = field(
        default=None,
        metadata={"help": "Training recipe (YAML) whose dev sets (sts_eval, ir_eval, ir_eval_beir, ir_eval_from_sts) "
                          "and prompts the search evaluates on."},
    )
    search_p: list[float] = field(
        default_factory=lambda: [0.0, 1.0, 2.0], metadata={"help": "The p values of the fusion search."}
    )
    search_shares: list[float] = field(
        default_factory=lambda: [0.25, 0.5, 0.75],
        metadata={"help": "The first input's shares s of the search (inputs weighted (s, 1 - s); two inputs only; "
                          "none: equal shares)."},
    )
    ir_weight: float = field(
        default=0.5,
        metadata={"help": "w of the search's score w * IR (mean nDCG@10) + (1 - w) * STS (mean Spearman), in [0, 1]."},
    )
    push_to_hub: str | None = field(default=None, metadata={"help": "Push the fused model to this Hub repo (owner/name)."})
    private: bool = field(default=False, metadata={"help": "Create the Hub repo as private."})
    revision: str | None = field(default=None, metadata={"help": "Hub branch to push to (created if missing)."})
    create_pr: bool = field(default=False, metadata={"help": "Open a pull request instead of committing."})

    def method_params(self) -> dict[str, Any]:
        """The method's keyword arguments: ``parameters``, then each ``--param NAME=VALUE`` (values read as YAML).

        They are validated against the method's declared parameters when the method is built
        (:func:`hf_codiemb.fusion.registry.validate_method_params`).

        Raises:
            ValueError: a ``--param`` that is not ``NAME=VALUE``, or ``parameters`` that is not a mapping.
        """
        from hf_codiemb.errors import RecipeError
        from hf_codiemb.yaml_loader import load_yaml

        parameters = self.parameters
        if isinstance(parameters, str):  # from the command line: a YAML / JSON mapping, read with the bounded loader
            try:
                parameters = load_yaml(parameters, "--parameters")[0]
            except RecipeError as error:
                raise ValueError(f"parameters: {error}") from None
        if parameters is not None and not isinstance(parameters, dict):
            raise ValueError(f"parameters must be a mapping of name: value, got {self.parameters!r}")
        params = dict(parameters or {})
        for item in self.param:
            name, sep, value = item.partition("=")
            if not sep or not name.strip():
                raise ValueError(f"--param {item!r}: expected NAME=VALUE, e.g. --param p=2")
            try:
                params[name.strip()] = load_yaml(value, f"--param {name.strip()}")[0]
            except RecipeError as error:
                raise ValueError(f"--param {item!r}: {error}") from None
        return params
