"""hf_codiemb: CoDiEmb (arXiv 2508.11442) as a sentence-transformers Trainer extension."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Imported on first use (PEP 562), so `codiemb --help` and light modules do not load torch and transformers.
_LAZY = {
    "CoDiEmbDataCollator": "collator",
    "DatasetSpec": "sampler",
    "TaskBalancedBatchSampler": "sampler",
    "CoDiEmbTrainer": "trainer",
    "TrainingDataError": "errors",
    "CoDiEmbTrainingArguments": "training_args",
}

__all__ = [
    "CoDiEmbDataCollator",
    "CoDiEmbTrainer",
    "CoDiEmbTrainingArguments",
    "DatasetSpec",
    "TaskBalancedBatchSampler",
    "TrainingDataError",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"hf_codiemb.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'hf_codiemb' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
