"""Task instructions as the CoDiEmb reference uses them, turned into sentence-transformers prompts.

The reference puts each record's task instruction, formatted ``"Instruction: {task} Query: "``, in front of the
IR query and of BOTH sentences of an STS pair; passages get a per-encoder passage prefix (bge: ``"Passage: "``,
e5 / MiniCPM: none), and mean pooling leaves the instruction tokens out (here: ``Pooling(include_prompt=False)``,
the recipe key ``pooling_include_prompt: false``).

sentence-transformers applies prompts per dataset and column (``SentenceTransformerTrainingArguments.prompts``) and
its pooling excludes one prompt length per batch, so an instruction must be the same for every record of a batch.
The task-balanced sampler draws every batch from one dataset; a data file whose records carry several instructions
is therefore split into one dataset per instruction (:func:`split_by_instruction`), each with its own prompt.

Precedence, for training and evaluation alike (:func:`task_prompts`): the records' own ``instruction`` field, else
the recipe's model-level ``query_prompt`` / ``sts_prompt`` (raw prompts, e.g. e5's ``"query: "``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from datasets import Dataset

logger = logging.getLogger(__name__)

INSTRUCTION_COLUMN = "instruction"
REFERENCE_INSTRUCTION_TEMPLATE = "Instruction: {instruction} Query: "


def format_instruction(instruction: str, template: str = REFERENCE_INSTRUCTION_TEMPLATE) -> str:
    """The prompt of a task instruction: ``template`` with ``{instruction}`` filled in.

    Like the reference, surrounding whitespace, tabs, newlines, spaces and colons of the instruction are stripped
    first (``"Find the answer:"`` -> ``"Instruction: Find the answer Query: "``).
    """
    if "{instruction}" not in template:
        raise ValueError(f"instruction_template must contain '{{instruction}}', got {template!r}")
    return template.format(instruction=instruction.strip("\t\n :"))


def split_by_instruction(name: str, dataset: Dataset) -> dict[str, tuple[Dataset, str | None]]:
    """Split a dataset by its records' ``instruction`` column: ``{dataset name: (dataset, instruction)}``.

    A dataset without the column, or whose records share one instruction, keeps its name; with several
    instructions the parts are named ``"{name}-i{k}"`` in order of first appearance (logged). The returned datasets
    no longer have the ``instruction`` column (it is not a model input).
    """
    if INSTRUCTION_COLUMN not in dataset.column_names:
        return {name: (dataset, None)}
    values = dataset[INSTRUCTION_COLUMN]
    groups: dict[str | None, list[int]] = {}
    for index, value in enumerate(values):
        groups.setdefault(value or None, []).append(index)
    stripped = dataset.remove_columns(INSTRUCTION_COLUMN)
    if len(groups) == 1:
        return {name: (stripped, next(iter(groups)))}
    logger.info(
        "Dataset %s: %d different instructions, split into %d datasets (one prompt per batch): %s",
        name,
        len(groups),
        len(groups),
        ", ".join(f"{name}-i{k} ({len(rows)} records)" for k, rows in enumerate(groups.values())),
    )
    return {f"{name}-i{k}": (stripped.select(rows), instruction) for k, (instruction, rows) in enumerate(groups.items())}


def dataset_instruction(dataset: Dataset) -> str | None:
    """The one instruction of a dataset's records (evaluation sets), or ``None`` without the column.

    Raises:
        ValueError: the records carry more than one instruction (one evaluation set is encoded with one prompt).
    """
    if INSTRUCTION_COLUMN not in dataset.column_names:
        return None
    values = {value or None for value in dataset[INSTRUCTION_COLUMN]}
    if len(values) > 1:
        raise ValueError(
            f"an evaluation set is encoded with one prompt, but its records carry {len(values)} instructions "
            f"(e.g. {sorted(v for v in values if v)[:2]}); split it into one file per instruction"
        )
    return values.pop()


@dataclass(frozen=True)
class TaskPrompts:
    """The prompts of one dataset: IR queries, IR passages, and both sentences of STS pairs."""

    query: str | None
    passage: str | None
    sts: str | None

    def columns(self, task: str, num_positives: int, num_negatives: int) -> dict[str, str]:
        """Per-column prompts of a training dataset of ``task``, in the collator's column names."""
        columns: dict[str, str] = {}
        if task == "ir":
            if self.query:
                columns["query"] = self.query
            if self.passage:
                for i in range(num_positives):
                    columns[f"positive_{i}"] = self.passage
                for i in range(num_negatives):
                    columns[f"negative_{i}"] = self.passage
        elif self.sts:
            columns = {"sentence1": self.sts, "sentence2": self.sts}
        return columns


def task_prompts(instruction: str | None, model_args) -> TaskPrompts:
    """The prompts of a dataset with task ``instruction`` (or none) under the recipe's model arguments.

    With an instruction, the query and both STS sentences get ``model_args.instruction_template`` filled with it
    (the reference's format); without one, the model-level ``query_prompt`` and ``sts_prompt`` (falling back to
    ``query_prompt``) apply. Passages always get ``passage_prompt``.
    """
    if instruction:
        prompt = format_instruction(instruction, model_args.instruction_template)
        return TaskPrompts(query=prompt, passage=model_args.passage_prompt, sts=prompt)
    return TaskPrompts(
        query=model_args.query_prompt, passage=model_args.passage_prompt, sts=model_args.effective_sts_prompt
    )
