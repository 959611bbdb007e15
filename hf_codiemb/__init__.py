"""hf_codiemb: CoDiEmb (arXiv 2508.11442) as a sentence-transformers Trainer extension."""

from hf_codiemb.collator import CoDiEmbDataCollator
from hf_codiemb.sampler import DatasetSpec, TaskBalancedBatchSampler
from hf_codiemb.trainer import CoDiEmbTrainer, TrainingDataError
from hf_codiemb.training_args import CoDiEmbTrainingArguments

__version__ = "0.1.0"

__all__ = [
    "CoDiEmbDataCollator",
    "CoDiEmbTrainer",
    "CoDiEmbTrainingArguments",
    "DatasetSpec",
    "TaskBalancedBatchSampler",
    "TrainingDataError",
]
