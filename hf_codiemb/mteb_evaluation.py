"""MTEB evaluation through the ``mteb`` package: named MTEB / C-MTEB tasks, and our evaluation sets as MTEB tasks.

``codiemb evaluate --mteb_tasks ...`` and ``--mteb_local`` run here (the optional extra ``hf_codiemb[mteb]``; the
package is imported only when MTEB tasks are requested). Nothing is re-implemented: retrieval, scoring and the
result files are ``mteb``'s own.

- Named tasks (``T2Retrieval``, ``ATEC``, a benchmark such as ``"MTEB(cmn, v1)"``, or ``codiemb-paper`` for the 15
  C-MTEB tasks the paper reports) load their data from the Hugging Face Hub, as ``mteb`` does. The C-MTEB tasks get
  the reference's task instructions (:data:`REFERENCE_TASK_INSTRUCTIONS`) in the recipe's ``instruction_template``,
  on queries (retrieval, reranking) or on every text (STS, classification, clustering, pair classification), as
  training puts instructions; passages get ``passage_prompt``. Other tasks get the model-level prompts.
- Local tasks: :func:`local_retrieval_task` and :func:`local_sts_task` turn an :class:`~hf_codiemb.data.IREvalSet`
  (a BEIR folder ``FOLDER:SPLIT``, a unified IR file) or an :class:`~hf_codiemb.data.STSEvalSet` (an STS file) into
  an ``mteb`` ``AbsTaskRetrieval`` / ``AbsTaskSTS`` with a ``TaskMetadata``, whose data is given in memory (its
  ``load_data`` never reaches the Hub). They are the very sets ``codiemb evaluate`` scores, with the same prompts,
  so ``mteb``'s nDCG@10 / Spearman equal ours (``tests/test_mteb_evaluation.py``: to 1e-4).
- The model is the ``SentenceTransformer`` that ``codiemb evaluate`` loaded, wrapped in ``mteb``'s
  ``SentenceTransformerEncoderWrapper``; our prompts reach it as ``mteb`` model prompts keyed
  ``"<task>-query"`` / ``"<task>-document"`` (``mteb``'s prompt types) and ``"<task>"`` (symmetric tasks).
- Results are written by ``mteb`` (its ``ResultCache`` layout, ``TaskResult`` JSON) under
  ``OUTPUT_DIR/mteb/results/<model>/<revision>/<task>.json``; :func:`mteb_summary` gives their main scores for
  ``eval_results.json``, :func:`add_mteb_results_to_card` puts them in a model card's Evaluation section (from the
  results in memory or read back with :func:`load_mteb_results`).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sentence_transformers.base.evaluation import BaseEvaluator

from hf_codiemb.data.eval_sets import IREvalSet, STSEvalSet
from hf_codiemb.errors import DataError, UsageError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

__all__ = [
    "MTEB_INSTALL_HINT",
    "PAPER_CMTEB_TASKS",
    "REFERENCE_EVAL_INSTRUCTION_TEMPLATE",
    "REFERENCE_TASK_INSTRUCTIONS",
    "MTEBEvaluation",
    "MTEBResultEvaluator",
    "add_mteb_results_to_card",
    "load_mteb_results",
    "local_retrieval_task",
    "local_sts_task",
    "mteb_card_rows",
    "mteb_summary",
    "named_task_prompts",
    "require_mteb",
    "resolve_mteb_tasks",
    "run_mteb",
]

MTEB_INSTALL_HINT = "pip install 'hf_codiemb[mteb]'"
MTEB_RESULTS_FOLDER = "mteb"
# The language of a local task: undetermined (ISO 639-3 "und"), common script; only labels the result file.
LOCAL_TASK_LANGUAGE = "und-Zyyy"
# The split of a local task whose name does not end in one (``scifact_dev`` -> "dev"): MTEB's default split.
LOCAL_TASK_DEFAULT_SPLIT = "test"
PAPER_TASKS_ALIAS = "codiemb-paper"

# The 15 C-MTEB tasks the CoDiEmb paper reports (arXiv 2508.11442): 8 retrieval (nDCG@10), 7 STS (Spearman).
PAPER_CMTEB_TASKS: tuple[str, ...] = (
    "CmedqaRetrieval", "CovidRetrieval", "DuRetrieval", "EcomRetrieval", "MedicalRetrieval", "MMarcoRetrieval",
    "T2Retrieval", "VideoRetrieval", "AFQMC", "ATEC", "BQ", "LCQMC", "PAWSX", "QBQTC", "STSB",
)  # fmt: skip

# The reference's task instructions for C-MTEB, copied from TencentCloudADP/youtu-embedding,
# evaluation/youtu_models.py (`youtu_instruction`, commit 53f3c68b1430ee1f636c183c20409359e5a8ba5b), which its
# evaluation (evaluation/run_mteb.py, benchmark "MTEB(cmn, v1)") gives mteb's instruct wrapper. A dict instructs the
# query side only (the reference's "document" entries are all empty); a string instructs every text of the task.
REFERENCE_TASK_INSTRUCTIONS: dict[str, str | dict[str, str]] = {
    "CmedqaRetrieval": {"query": "Given a Chinese community medical question, retrieve replies that best answer the question", "document": ""},
    "CovidRetrieval": {"query": "Given a question on COVID-19, retrieve news articles that answer the question", "document": ""},
    "DuRetrieval": {"query": "Given a Chinese search query, retrieve web passages that answer the question", "document": ""},
    "EcomRetrieval": {"query": "Given a user query from an e-commerce website, retrieve description sentences of relevant products", "document": ""},
    "MedicalRetrieval": {"query": "Given a medical question, retrieve user replies that best answer the question", "document": ""},
    "MMarcoRetrieval": {"query": "Given a web search query, retrieve relevant passages that answer the query", "document": ""},
    "T2Retrieval": {"query": "Given a Chinese search query, retrieve web passages that answer the question", "document": ""},
    "VideoRetrieval": {"query": "Given a video search query, retrieve the titles of relevant videos", "document": ""},
    "AFQMC": "Represent the text in conversations between users and financial customer service, retrieve semantically similar text",
    "ATEC": "Represent the text in conversations between users and financial customer service, retrieve semantically similar text",
    "BQ": "Represent the user problem descriptions when handling bank credit business, retrieve semantically similar text",
    "LCQMC": "Represent the user question descriptions on general question-answering platforms, retrieve semantically similar text",
    "PAWSX": "Represent the Chinese Translations of English Encyclopedias, retrieve semantically similar text",
    "QBQTC": "Represent the web search query, retrieve semantically similar text",
    "STSB": "Represent the short general domain sentences, retrieve semantically similar text",
    "T2Reranking": {"query": "Given a Chinese search query, retrieve web passages that answer the question", "document": ""},
    "MMarcoReranking": {"query": "Given a web search query, retrieve relevant passages that answer the query", "document": ""},
    "CMedQAv1-reranking": {"query": "Given a Chinese community medical question, retrieve replies that best answer the question", "document": ""},
    "CMedQAv2-reranking": {"query": "Given a Chinese community medical question, retrieve replies that best answer the question", "document": ""},
    "Ocnli": "Retrieve semantically similar text",
    "Cmnli": "Retrieve semantically similar text",
    "TNews": "Classify the fine-grained category of the given news title",
    "IFlyTek": "Given an App description text, find the appropriate fine-grained category",
    "Waimai": "Classify the customer review from a food takeaway platform into positive or negative",
    "OnlineShopping": "Classify the customer review for online shopping into positive or negative",
    "JDReview": "Classify the customer review for iPhone on e-commerce platform into positive or negative",
    "MultilingualSentiment": "Classify sentiment of the customer review into positive, neutral, or negative",
    "CLSClusteringS2S": "Given the papers, find the appropriate fine-grained topic or theme based on the titles",
    "CLSClusteringP2P": "Given the papers, find the appropriate fine-grained topic or theme based on the titles and abstracts",
    "ThuNewsClusteringS2S": "Identify the topic or theme of the given news articles based on the titles",
    "ThuNewsClusteringP2P": "Identify the topic or theme of the given news articles based on the titles and contents",
}
# The reference's evaluation formats an instruction as below (youtu_models.py `instruction_template`); its training
# data use "Instruction: {instruction} Query: ", which is our `instruction_template` default and what we evaluate
# with (a recipe may set this one instead).
REFERENCE_EVAL_INSTRUCTION_TEMPLATE = "Instruction: {instruction} \nQuery: "

# Metrics a card row shows besides the main score (when the task reports them).
_CARD_METRICS = {
    "retrieval": ("ndcg_at_10", "mrr_at_10", "map_at_100", "recall_at_100"),
    "semantic-similarity": ("cosine_spearman", "cosine_pearson"),
}


# --------------------------------------------------------------------------------------------------------------
# The package
# --------------------------------------------------------------------------------------------------------------


def require_mteb():
    """Import ``mteb`` (2.x), or raise a one-line :class:`UsageError` saying how to install it."""
    try:
        import mteb
    except ImportError:
        raise UsageError(f"MTEB evaluation needs the mteb package: {MTEB_INSTALL_HINT}") from None
    version = getattr(mteb, "__version__", "0")
    if not version.startswith("2."):
        raise UsageError(f"MTEB evaluation needs mteb 2.x, found mteb {version}: {MTEB_INSTALL_HINT}")
    return mteb


# --------------------------------------------------------------------------------------------------------------
# Local data as MTEB tasks
# --------------------------------------------------------------------------------------------------------------


@functools.cache
def _local_task_classes() -> tuple[type, type]:
    """The bases of local tasks: ``mteb``'s retrieval and STS tasks whose data is built in memory."""
    require_mteb()
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.sts import AbsTaskSTS

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        self.dataset = type(self).build_dataset()
        self.data_loaded = True

    retrieval = type("LocalRetrievalTask", (AbsTaskRetrieval,), {"load_data": load_data, "__module__": __name__})
    sts = type("LocalSTSTask", (AbsTaskSTS,), {"load_data": load_data, "__module__": __name__})
    return retrieval, sts


def _fingerprint(parts: Iterable[str]) -> str:
    """A short content hash: the local task's ``dataset.revision`` in its result file."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return digest.hexdigest()[:12]


def _split_of(name: str) -> str:
    """The split a set name ends with (``scifact_dev`` -> ``dev``), else :data:`LOCAL_TASK_DEFAULT_SPLIT`."""
    from hf_codiemb.data.names import GENERIC_STEMS

    head, separator, tail = name.rpartition("_")
    return tail if separator and head and tail.lower() in GENERIC_STEMS else LOCAL_TASK_DEFAULT_SPLIT


def _metadata(name: str, task_type: str, main_score: str, split: str, revision: str, language: str, what: str):
    from mteb.abstasks.task_metadata import TaskMetadata

    return TaskMetadata(
        name=name,
        description=f"Local {what} evaluation set {name!r}, built in memory by hf_codiemb (not an MTEB Hub task).",
        dataset={"path": f"local/{name}", "revision": revision},
        type=task_type,
        category="t2t",
        modalities=["text"],
        eval_splits=[split],
        eval_langs=[language],
        main_score=main_score,
    )


def local_retrieval_task(ir_set: IREvalSet, *, split: str | None = None, language: str = LOCAL_TASK_LANGUAGE):
    """An ``mteb`` retrieval task (``AbsTaskRetrieval``) holding ``ir_set`` in memory.

    The task is named as the set (``scifact_dev``); its split is the one the name ends with (else ``"test"``); its
    queries are the set's queries with a relevant document, its corpus the set's corpus, each document relevant to
    a query with grade 1 (``codiemb evaluate`` scores binary relevance); a document is its text (a BEIR title is
    already joined to it, as ``mteb`` would join it). ``dataset.revision`` is a hash of the data.

    Raises:
        UsageError: the set ranks documents with the query's own text out (an STS-derived set): ``mteb`` has no
            such rule, so its scores would differ from ours.
    """
    from datasets import Dataset

    from hf_codiemb.evaluation import identical_text_exclusions

    if ir_set.ignore_identical_text and identical_text_exclusions(ir_set.queries, ir_set.corpus, ir_set.relevant):
        raise UsageError(
            f"IR set {ir_set.name!r} leaves out documents with the query's own text (an STS-derived set), which "
            "MTEB cannot do; it is not run as an MTEB task"
        )
    retrieval_base, _ = _local_task_classes()
    split = split or _split_of(ir_set.name)
    relevant = {qid: sorted(cids) for qid, cids in ir_set.relevant.items() if cids and qid in ir_set.queries}
    query_ids = [qid for qid in ir_set.queries if qid in relevant]
    corpus_ids = list(ir_set.corpus)
    revision = _fingerprint(
        [*(f"q{qid}\t{ir_set.queries[qid]}" for qid in query_ids), *(f"d{cid}\t{ir_set.corpus[cid]}" for cid in corpus_ids),
         *(f"r{qid}\t{cid}" for qid in query_ids for cid in relevant[qid])]
    )  # fmt: skip

    def build_dataset() -> dict[str, Any]:
        return {
            "default": {
                split: {
                    "corpus": Dataset.from_dict(
                        {"id": corpus_ids, "text": [ir_set.corpus[cid] for cid in corpus_ids], "title": [""] * len(corpus_ids)}
                    ),
                    "queries": Dataset.from_dict({"id": query_ids, "text": [ir_set.queries[qid] for qid in query_ids]}),
                    "relevant_docs": {qid: dict.fromkeys(relevant[qid], 1) for qid in query_ids},
                    "top_ranked": None,
                }
            }
        }

    metadata = _metadata(ir_set.name, "Retrieval", "ndcg_at_10", split, revision, language, "retrieval")
    task_class = type(
        "LocalRetrievalTask", (retrieval_base,), {"metadata": metadata, "build_dataset": staticmethod(build_dataset)}
    )
    return task_class()


def local_sts_task(
    sts_set: STSEvalSet,
    *,
    score_range: Sequence[float] = (0.0, 5.0),
    split: str | None = None,
    language: str = LOCAL_TASK_LANGUAGE,
):
    """An ``mteb`` STS task (``AbsTaskSTS``) holding ``sts_set``'s pairs in memory (columns ``sentence1``,
    ``sentence2``, ``score``; ``score_range`` is the gold range MTEB normalises by, which leaves the correlations
    unchanged). Named and split as :func:`local_retrieval_task`; main score ``cosine_spearman``."""
    from datasets import Dataset

    from hf_codiemb.evaluation import sts_columns

    _, sts_base = _local_task_classes()
    split = split or _split_of(sts_set.name)
    sentences1, sentences2, scores = sts_columns(sts_set.data)
    revision = _fingerprint(f"{a}\t{b}\t{y!r}" for a, b, y in zip(sentences1, sentences2, scores))

    def build_dataset() -> dict[str, Any]:
        data = Dataset.from_dict({"sentence1": sentences1, "sentence2": sentences2, "score": scores})
        return {"default": {split: data}}

    low, high = (float(value) for value in score_range)
    metadata = _metadata(sts_set.name, "STS", "cosine_spearman", split, revision, language, "STS")
    task_class = type(
        "LocalSTSTask",
        (sts_base,),
        {"metadata": metadata, "build_dataset": staticmethod(build_dataset), "min_score": low, "max_score": high},
    )
    return task_class()


# --------------------------------------------------------------------------------------------------------------
# Named MTEB tasks and their prompts
# --------------------------------------------------------------------------------------------------------------


def resolve_mteb_tasks(names: Sequence[str]) -> list:
    """``mteb`` task objects of ``names``: task names, benchmark names (``"MTEB(cmn, v1)"``: its tasks), or
    ``codiemb-paper`` (:data:`PAPER_CMTEB_TASKS`), in order, each task once.

    Raises:
        UsageError: a name that is neither (with ``mteb``'s closest task names).
    """
    mteb = require_mteb()
    tasks: dict[str, Any] = {}
    for name in names:
        if name == PAPER_TASKS_ALIAS:
            found = list(mteb.get_tasks(tasks=list(PAPER_CMTEB_TASKS)))
        else:
            try:
                found = [mteb.get_task(name)]
            except KeyError as task_error:
                try:
                    found = list(mteb.get_benchmark(name).tasks)
                except (KeyError, ValueError):
                    message = str(task_error.args[0]) if task_error.args else name
                    raise UsageError(
                        f"--mteb_tasks: {message.removeprefix('KeyError: ')} (neither an MTEB task nor a benchmark)"
                    ) from None
        for task in found:
            tasks.setdefault(task.metadata.name, task)
    return list(tasks.values())


def _reference_instruction(task_name: str, prompt_type: str) -> str | None:
    instruction = REFERENCE_TASK_INSTRUCTIONS.get(task_name)
    if isinstance(instruction, dict):
        return instruction.get(prompt_type) or None
    return instruction


def named_task_prompts(task, model_args, *, instructions: bool = True) -> dict[str, str]:
    """The ``mteb`` model prompts of a named task under the recipe's model arguments.

    Retrieval and reranking tasks: ``"<task>-query"`` (the reference's instruction in ``instruction_template``, else
    ``query_prompt``) and ``"<task>-document"`` (``passage_prompt``); other tasks, which encode every text alike:
    ``"<task>"`` (the instruction, else ``sts_prompt``/``query_prompt``). Unset prompts are left out (the model's
    own prompts, if any, then apply, as in ``codiemb evaluate``).
    """
    from hf_codiemb.instructions import task_prompts

    name = task.metadata.name
    if task.metadata.simplified_task_type == "retrieval":
        instruction = _reference_instruction(name, "query") if instructions else None
        prompts = task_prompts(instruction, model_args)
        entries = {f"{name}-query": prompts.query, f"{name}-document": prompts.passage}
    else:
        instruction = _reference_instruction(name, "query") if instructions else None
        entries = {name: task_prompts(instruction, model_args).sts}
    return {key: value for key, value in entries.items() if value is not None}


def _local_prompts(ir_sets: Mapping[str, IREvalSet], sts_sets: Mapping[str, STSEvalSet]) -> dict[str, str]:
    """``mteb`` model prompts of the local tasks: each set's own prompts, as ``codiemb evaluate`` encodes it."""
    prompts: dict[str, str] = {}
    for ir_set in ir_sets.values():
        prompts.update({f"{ir_set.name}-query": ir_set.query_prompt, f"{ir_set.name}-document": ir_set.corpus_prompt})
    for sts_set in sts_sets.values():
        prompts[sts_set.name] = sts_set.prompt
    return {key: value for key, value in prompts.items() if value is not None}


# --------------------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------------------


def _model_meta(encoder, model_name: str | None):
    """``mteb``'s metadata of the wrapped model, named by its Hub id or ``local/<folder name>`` (results folder)."""
    from hf_codiemb.model_names import infer_base_model_id, public_model_name

    update: dict[str, Any] = {}
    if model_name is not None:
        public = public_model_name(model_name)
        hub_id = infer_base_model_id(model_name)
        if hub_id is not None:
            name, _, revision = public.partition("@")
            update = {"name": name, "revision": revision or "no_revision_available"}
        else:
            update = {"name": "local/" + public.replace("/", "_"), "revision": "no_revision_available"}
    elif not encoder.mteb_model_meta.name:
        update = {"name": "local/model", "revision": "no_revision_available"}
    return encoder.mteb_model_meta.model_copy(update=update) if update else encoder.mteb_model_meta


def run_mteb(
    model: SentenceTransformer,
    tasks: Sequence,
    prompts: Mapping[str, str],
    output_dir: str | os.PathLike[str],
    *,
    model_name: str | None = None,
    batch_size: int = 32,
    show_progress_bar: bool = False,
) -> list:
    """Run ``tasks`` on ``model`` with ``mteb.evaluate``; return their ``TaskResult``s, written under ``output_dir``.

    Args:
        model: the model as ``codiemb evaluate`` loads it.
        tasks: ``mteb`` tasks (named, or local from :func:`local_retrieval_task` / :func:`local_sts_task`).
        prompts: ``mteb`` model prompts (``"<task>-query"``, ``"<task>-document"``, ``"<task>"``), added to the
            model's own prompts.
        output_dir: the ``mteb`` result cache folder; results go to ``results/<model>/<revision>/<task>.json``.
        model_name: what the model was loaded from (names the results folder: a Hub id, else ``local/<folder>``).
        batch_size: the encoding batch size (``codiemb evaluate``'s evaluators use 32).

    Raises:
        DataError: a named task's data cannot be loaded (offline, or no access to its Hub dataset).
    """
    mteb = require_mteb()
    from mteb.models import SentenceTransformerEncoderWrapper

    encoder = SentenceTransformerEncoderWrapper(model)
    encoder.model_prompts = {**(encoder.model_prompts or {}), **prompts}
    encoder.mteb_model_meta = _model_meta(encoder, model_name)
    cache = mteb.ResultCache(cache_path=pathlib.Path(output_dir))
    results = []
    for task in tasks:
        try:
            task.load_data()
        except Exception as error:  # noqa: BLE001 - datasets' errors for a Hub dataset that cannot be had
            first_line = (str(error).splitlines() or [""])[0]
            raise DataError(
                f"MTEB task {task.metadata.name}: its data ({task.metadata.dataset.get('path')}) cannot be loaded "
                f"({type(error).__name__}: {first_line})"
            ) from None
        try:
            outcome = mteb.evaluate(
                encoder, task, cache=cache, overwrite_strategy="always", encode_kwargs={"batch_size": batch_size},
                co2_tracker=False, show_progress_bar=show_progress_bar,
            )  # fmt: skip
        finally:
            task.unload_data()
        results.extend(outcome.task_results)
        for result in outcome.task_results:
            logger.info("MTEB %s: %s %.4f", result.task_name, task.metadata.main_score, result.get_score())
    return results


def mteb_summary(task_results: Iterable) -> dict[str, dict[str, float]]:
    """``{task: {main score name: value}}`` (``"<split>/<subset>/<main score>"`` keys when a task has several
    splits or subsets), for ``eval_results.json``."""
    summary: dict[str, dict[str, float]] = {}
    for result in task_results:
        entries = [(split, scores) for split, rows in result.scores.items() for scores in rows]
        several = len(entries) > 1
        row = summary.setdefault(result.task_name, {})
        for split, scores in entries:
            main = scores.get("main_score")
            metric = _main_score_name(result.task_name, scores) or "main_score"
            key = f"{split}/{scores.get('hf_subset', 'default')}/{metric}" if several else metric
            row[key] = float(main) if main is not None else math.nan
    return summary


# The main scores of local tasks, tried first when a result's task is not in mteb's registry (ties are common:
# ndcg_at_5 can equal ndcg_at_10, spearman equals cosine_spearman for a cosine model).
_LOCAL_MAIN_SCORES = ("ndcg_at_10", "cosine_spearman")


@functools.cache
def _registered_main_score(task_name: str) -> str | None:
    import mteb

    try:
        return mteb.get_task(task_name).metadata.main_score
    except KeyError:
        return None


def _main_score_name(task_name: str, scores: Mapping[str, Any]) -> str | None:
    """The name of a task's main metric in one split's scores: the registered task's ``main_score``, else the
    local tasks' (``ndcg_at_10``, ``cosine_spearman``), else the first metric equal to ``main_score``."""
    registered = _registered_main_score(task_name)
    if registered in scores:
        return registered
    main = scores.get("main_score")
    candidates = [*_LOCAL_MAIN_SCORES, *(key for key in scores if key not in ("main_score", "hf_subset", "languages"))]
    return next((key for key in candidates if key in scores and scores[key] == main), None)


@dataclass
class MTEBEvaluation:
    """What ``codiemb evaluate`` asked of MTEB: named tasks, and whether its evaluation sets run as MTEB tasks.

    Built (and its task names checked, before the model is loaded) by :meth:`from_arguments`; :meth:`run` evaluates.
    """

    tasks: list = field(default_factory=list)
    local: bool = False
    instructions: bool = True

    @classmethod
    def from_arguments(cls, args: Any) -> MTEBEvaluation | None:
        """From ``codiemb evaluate``'s ``mteb_tasks``, ``mteb_local``, ``mteb_instructions``; ``None`` when no MTEB
        task is requested (``mteb`` is then never imported)."""
        names = list(getattr(args, "mteb_tasks", None) or [])
        local = bool(getattr(args, "mteb_local", False))
        if not names and not local:
            return None
        require_mteb()
        return cls(tasks=resolve_mteb_tasks(names), local=local, instructions=bool(getattr(args, "mteb_instructions", True)))

    def run(
        self,
        model: SentenceTransformer,
        model_args: Any,
        sts_sets: Mapping[str, STSEvalSet],
        ir_sets: Mapping[str, IREvalSet],
        output_dir: str | os.PathLike[str],
        *,
        sts_score_range: Sequence[float] = (0.0, 5.0),
        batch_size: int = 32,
    ) -> dict[str, dict[str, float]]:
        """Run the named tasks and (``local``) the evaluation sets as MTEB tasks; results under
        ``output_dir/mteb``, their main scores returned (:func:`mteb_summary`) and added to the model's card data.

        IR sets that leave the query's own text out (STS-derived) are skipped with a warning: MTEB cannot score
        them as we do.
        """
        tasks = list(self.tasks)
        prompts: dict[str, str] = {}
        for task in self.tasks:
            prompts.update(named_task_prompts(task, model_args, instructions=self.instructions))
        if self.local:
            if not (sts_sets or ir_sets):
                raise UsageError("--mteb_local needs evaluation sets: --sts_eval, --ir_eval, --ir_eval_beir or a recipe's")
            kept_ir = {}
            for name, ir_set in ir_sets.items():
                try:
                    tasks.append(local_retrieval_task(ir_set))
                except UsageError as reason:
                    logger.warning("%s", reason)
                    continue
                kept_ir[name] = ir_set
            tasks.extend(local_sts_task(sts_set, score_range=sts_score_range) for sts_set in sts_sets.values())
            prompts.update(_local_prompts(kept_ir, sts_sets))
        names = [task.metadata.name for task in tasks]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise UsageError(f"MTEB task names given twice (an evaluation set named as an MTEB task?): {duplicated}")
        results = run_mteb(
            model, tasks, prompts, pathlib.Path(output_dir) / MTEB_RESULTS_FOLDER,
            model_name=getattr(model_args, "model_name_or_path", None), batch_size=batch_size,
        )  # fmt: skip
        if hasattr(model, "model_card_data"):
            add_mteb_results_to_card(model.model_card_data, results)
        return mteb_summary(results)


# --------------------------------------------------------------------------------------------------------------
# Result files and the model card
# --------------------------------------------------------------------------------------------------------------


def load_mteb_results(folder: str | os.PathLike[str]) -> list:
    """The ``TaskResult``s of an ``mteb`` results folder (``OUTPUT_DIR/mteb`` of ``codiemb evaluate``, or any
    folder below it), sorted by task name."""
    require_mteb()
    from mteb import TaskResult

    root = pathlib.Path(folder)
    paths = sorted(
        path for path in root.rglob("*.json") if path.name != "model_meta.json" and path.parent.name != "predictions"
    )
    results = [TaskResult.from_disk(path) for path in paths]
    return sorted(results, key=lambda result: result.task_name)


class MTEBResultEvaluator(BaseEvaluator):
    """
    One MTEB result (a task's split and subset) as a model card sees an evaluator: the card's Evaluation section
    and model-index show it with the evaluations of sentence-transformers' evaluators.

    It does not evaluate anything (calling it returns the recorded metrics); the scores are ``mteb``'s.

    Args:
        task_name / task_type: the MTEB task (``"T2Retrieval"``, ``"Retrieval"``).
        split / subset: the split and subset the scores come from.
        main_score: the task's main metric (``"ndcg_at_10"``).
        metrics: the metrics shown, keyed ``"<name>_<metric>"`` (sentence-transformers' convention).
        config: shown under the table (``mteb`` version, split, languages).
    """

    def __init__(
        self, task_name: str, task_type: str, split: str, subset: str, main_score: str, metrics: dict[str, float],
        config: dict[str, Any],
    ) -> None:  # fmt: skip
        super().__init__()
        self.name = task_name if subset == "default" else f"{task_name}_{subset}"
        self.task_type = task_type
        self.split = split
        self.primary_metric = f"{self.name}_{main_score}"
        self.metrics = metrics
        self.config = config

    @property
    def description(self) -> str:
        """The card's heading of this row's group: ``"MTEB Retrieval"``, ``"MTEB STS"``."""
        return f"MTEB {self.task_type}"

    def __call__(self, model: Any = None, output_path: str | None = None, epoch: int = -1, steps: int = -1):
        return dict(self.metrics)

    def get_config_dict(self) -> dict[str, Any]:
        return dict(self.config)


def mteb_card_rows(task_results: Iterable) -> list[tuple[MTEBResultEvaluator, dict[str, float]]]:
    """``(evaluator, metrics)`` pairs, one per task split and subset, for a card's ``eval_results_dict``: the main
    score, then nDCG@10 / MRR@10 / MAP@100 / Recall@100 (retrieval) or cosine Spearman / Pearson (STS)."""
    require_mteb()
    import mteb

    rows = []
    for result in task_results:
        try:
            task = mteb.get_task(result.task_name)
            task_type, simplified = task.metadata.type, task.metadata.simplified_task_type
        except KeyError:  # a local task: its type from its scores
            retrieval = any("ndcg_at_10" in scores for rows_ in result.scores.values() for scores in rows_)
            task_type, simplified = ("Retrieval", "retrieval") if retrieval else ("STS", "semantic-similarity")
        for split, split_rows in result.scores.items():
            for scores in split_rows:
                main_score = _main_score_name(result.task_name, scores) or "main_score"
                names = [main_score, *(m for m in _CARD_METRICS.get(simplified, ()) if m != main_score and m in scores)]
                values = {metric: float(scores[metric]) for metric in names if metric in scores}
                if main_score not in values and scores.get("main_score") is not None:
                    values[main_score] = float(scores["main_score"])
                subset = scores.get("hf_subset", "default")
                config = {"mteb_version": result.mteb_version, "split": split, "languages": scores.get("languages")}
                evaluator = MTEBResultEvaluator(result.task_name, task_type, split, subset, main_score, {}, config)
                evaluator.metrics = {f"{evaluator.name}_{metric}": value for metric, value in values.items()}
                rows.append((evaluator, dict(evaluator.metrics)))
    return rows


def add_mteb_results_to_card(card_data: Any, task_results: Iterable) -> None:
    """Show MTEB results in a model card (sentence-transformers' card data): one row group per task type in the
    Evaluation section, and model-index entries, beside the other evaluations.

    Written to ``card_data.eval_results_dict`` directly (not ``set_evaluation_metrics``): these are final
    evaluations, not points of the training logs.
    """
    for evaluator, metrics in mteb_card_rows(task_results):
        card_data.eval_results_dict[evaluator] = metrics
