"""The data layer: training data in the unified CoDiEmb format, its one rule set, derived tasks, evaluation sets.

One record is one training example of one task (``docs/design.md``, "Dataset columns"):

- **IR** datasets have the columns ``query`` (str), ``positives`` (list[str], at least one) and ``negatives``
  (list[str], possibly empty), plus ``positive_scores`` / ``negative_scores`` (list[float]) when every record
  of the source has them.
- **STS** datasets have the columns ``sentence1`` (str), ``sentence2`` (str) and ``score`` (float).

Accepted inputs: JSON Lines in the unified format (``task``, ``query``, ``positives``, ``negatives``, optional
``positive_scores`` / ``negative_scores`` and ``instruction``; an STS triple ``(s1, s2, y)`` is ``{"task": "sts",
"query": s1, "positives": [s2], "positive_scores": [y]}``), in the FlagEmbedding format ``{query, pos, neg}``
(optional ``pos_scores`` / ``neg_scores`` / ``prompt``) for IR, in the reference's layout (``task_type``, ``query``
= ``[task instruction, instance instruction, text]``, ...); the STS Benchmark tsv and ``s1 <TAB> s2 <TAB> score``
tsv files for STS; a :class:`datasets.Dataset` with the corresponding columns. Files are read as UTF-8 (a byte
order mark is skipped); gzip-compressed files are decompressed on the fly, whatever their suffix.

Modules (one job each):

- :mod:`~hf_codiemb.data.rules`: the one rule set of a record (and :class:`DataFormatError`);
- :mod:`~hf_codiemb.data.text_files`: files as lines, JSON records and tsv fields;
- :mod:`~hf_codiemb.data.arrow_reader`: the fast, cached path (a vectorised screen; the rules re-check suspects);
- :mod:`~hf_codiemb.data.loaders`: :func:`load_ir_dataset`, :func:`load_sts_dataset`;
- :mod:`~hf_codiemb.data.suspicious`: the one count of valid but probably wrong records;
- :mod:`~hf_codiemb.data.derived`: tasks derived from STS pairs or IR records (IR evaluation tasks, training records, pairs);
- :mod:`~hf_codiemb.data.beir`: BEIR / MTEB folders (mining: :mod:`hf_codiemb.mining`);
- :mod:`~hf_codiemb.data.names`: dataset names;
- :mod:`~hf_codiemb.data.teacher_scores`: the teacher scores distillation needs on every IR record;
- :mod:`~hf_codiemb.data.eval_sets`: :class:`IREvalSet`, :class:`STSEvalSet`;
- :mod:`~hf_codiemb.data.demo`: the demo data shipped with the package.
"""

from hf_codiemb.columns import IR_COLUMNS, STS_COLUMNS, TASKS
from hf_codiemb.data.demo import demo_data_path
from hf_codiemb.data.derived import ir_task_from_sts_pairs, ir_train_from_sts_pairs, labelled_pairs_from_ir_records
from hf_codiemb.data.eval_sets import IREvalSet, STSEvalSet
from hf_codiemb.data.loaders import load_dataset_for_task, load_ir_dataset, load_sts_dataset
from hf_codiemb.data.rules import DataFormatError
from hf_codiemb.data.suspicious import suspicious_record_counts, warn_suspicious_records

__all__ = [
    "IR_COLUMNS",
    "STS_COLUMNS",
    "TASKS",
    "DataFormatError",
    "IREvalSet",
    "STSEvalSet",
    "demo_data_path",
    "ir_task_from_sts_pairs",
    "ir_train_from_sts_pairs",
    "labelled_pairs_from_ir_records",
    "load_dataset_for_task",
    "load_ir_dataset",
    "load_sts_dataset",
    "suspicious_record_counts",
    "warn_suspicious_records",
]
