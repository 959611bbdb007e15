"""Task and column names of the unified data format, defined once for the loaders, the collator and the trainer.

- IR rows: ``query`` (str), ``positives`` (list[str], at least one), ``negatives`` (list[str], may be empty or absent
  when a dataset is trained with ``num_negatives=0``).
- STS rows: ``sentence1`` (str), ``sentence2`` (str), ``score`` (float, the gold similarity).
"""

from __future__ import annotations

IR = "ir"
STS = "sts"
TASKS = (IR, STS)

IR_COLUMNS = ("query", "positives", "negatives")
# What an IR training dataset must have (``negatives`` may be absent when num_negatives = 0).
IR_REQUIRED_COLUMNS = ("query", "positives")
# IR columns holding a list of texts per row (the collator samples from them).
IR_LIST_COLUMNS = ("positives", "negatives")
STS_COLUMNS = ("sentence1", "sentence2", "score")


def task_columns(task: str) -> tuple[str, ...]:
    """The columns of a dataset of ``task`` (``"ir"`` or ``"sts"``)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    return IR_COLUMNS if task == IR else STS_COLUMNS
