"""MTEB evaluation through the mteb package (hf_codiemb.mteb_evaluation; `codiemb evaluate --mteb_tasks/--mteb_local`).

Offline: local tasks are our evaluation sets given to mteb in memory (SciFact dev and STS-B dev from ../shared/data,
capped for time, every relevant document kept); named tasks are checked up to their Hub data, which cannot be had
here. The checks of issue 22: mteb's nDCG@10 and Spearman equal `codiemb evaluate`'s on the same data, model and
prompts; mteb's result files are written; the model card shows them.
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

import pytest

from hf_codiemb.cli import main
from hf_codiemb.errors import UsageError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
QUERIES = 20  # SciFact dev queries (with all their relevant abstracts)
OTHER_DOCUMENTS = 30  # abstracts that are relevant to none of them
STS_PAIRS = 100
PROMPTS = ["--query_prompt", "query: ", "--passage_prompt", "passage: "]

needs_mteb = pytest.mark.skipif(
    __import__("importlib").util.find_spec("mteb") is None, reason="mteb is not installed (pip install '.[mteb]')"
)
needs_shared = pytest.mark.skipif(
    not (SHARED_DATA / "scifact").is_dir() or not (SHARED_DATA / "stsb-en").is_dir(),
    reason="../shared/data/scifact or ../shared/data/stsb-en is absent",
)


def _capped_scifact(folder: Path) -> None:
    """A BEIR folder with the first QUERIES SciFact dev queries, their relevant abstracts and OTHER_DOCUMENTS more."""
    source = SHARED_DATA / "scifact"
    header, *rows = (source / "qrels" / "dev.tsv").read_text(encoding="utf-8").splitlines()
    query_ids = list(dict.fromkeys(row.split("\t")[0] for row in rows))[:QUERIES]
    rows = [row for row in rows if row.split("\t")[0] in query_ids]
    relevant = {row.split("\t")[1] for row in rows}
    corpus = [json.loads(line) for line in (source / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    others = [doc["_id"] for doc in corpus if doc["_id"] not in relevant]
    keep = relevant | set(random.Random(0).sample(others, OTHER_DOCUMENTS))
    queries = [json.loads(line) for line in (source / "queries.jsonl").read_text(encoding="utf-8").splitlines()]
    (folder / "qrels").mkdir(parents=True)
    (folder / "qrels" / "dev.tsv").write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus if d["_id"] in keep), "utf-8")
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries if q["_id"] in query_ids), "utf-8")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """`codiemb evaluate --mteb_local` of the packaged MiniLM on capped SciFact dev and STS-B dev, with prompts."""
    root = tmp_path_factory.mktemp("mteb")
    _capped_scifact(root / "scifact")
    (root / "stsb-en").mkdir()
    lines = (SHARED_DATA / "stsb-en" / "dev.tsv").read_text(encoding="utf-8").splitlines()[:STS_PAIRS]
    (root / "stsb-en" / "dev.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    output = root / "eval"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        status = main([
            "evaluate", "--model", "packaged:all-minilm-l6-v2", "--ir_eval_beir", f"{root / 'scifact'}:dev",
            "--sts_eval", str(root / "stsb-en" / "dev.tsv"), "--ir_eval_from_sts", "false", "--mteb_local", *PROMPTS,
            "--model_card", "--output_dir", str(output),
        ])  # fmt: skip
    assert status == 0
    ours = json.loads((output / "eval_results.json").read_text(encoding="utf-8"))
    files = {path.stem: path for path in (output / "mteb" / "results").rglob("*.json") if path.name != "model_meta.json"}
    return output, ours, files


def _mteb_scores(path: Path, split: str = "dev") -> dict:
    (row,) = json.loads(path.read_text(encoding="utf-8"))["scores"][split]
    return row


@needs_mteb
@needs_shared
def test_mteb_ndcg_at_10_equals_codiemb_evaluate_on_the_same_beir_folder(evaluated):
    _, ours, files = evaluated
    theirs = _mteb_scores(files["scifact_dev"])
    assert ours["ir"]["scifact_dev"]["num_queries"] == QUERIES
    assert theirs["ndcg_at_10"] == pytest.approx(ours["ir"]["scifact_dev"]["ndcg@10"], abs=1e-4)
    assert theirs["mrr_at_10"] == pytest.approx(ours["ir"]["scifact_dev"]["mrr@10"], abs=1e-4)
    assert theirs["recall_at_100"] == pytest.approx(ours["ir"]["scifact_dev"]["recall@100"], abs=1e-4)
    assert theirs["main_score"] == theirs["ndcg_at_10"]
    assert ours["mteb"]["scifact_dev"] == {"ndcg_at_10": theirs["ndcg_at_10"]}  # also in eval_results.json


@needs_mteb
@needs_shared
def test_mteb_spearman_equals_ours_on_the_same_sts_file(evaluated):
    _, ours, files = evaluated
    theirs = _mteb_scores(files["stsb-en_dev"])
    assert ours["sts"]["stsb-en_dev"]["num_pairs"] >= STS_PAIRS - 2  # the file's header line; a pair may be refused
    assert theirs["cosine_spearman"] == pytest.approx(ours["sts"]["stsb-en_dev"]["spearman_cosine"], abs=1e-4)
    assert theirs["cosine_pearson"] == pytest.approx(ours["sts"]["stsb-en_dev"]["pearson_cosine"], abs=1e-4)
    assert ours["mteb"]["stsb-en_dev"]["cosine_spearman"] == pytest.approx(theirs["cosine_spearman"], abs=1e-6)


@needs_mteb
@needs_shared
def test_mteb_result_files_are_mteb_task_results(evaluated):
    import mteb

    output, _, files = evaluated
    assert set(files) == {"scifact_dev", "stsb-en_dev"}
    folder = files["scifact_dev"].parent
    assert folder.relative_to(output / "mteb" / "results").parts == (
        "sentence-transformers__all-MiniLM-L6-v2", "no_revision_available",
    )  # fmt: skip
    meta = json.loads((folder / "model_meta.json").read_text(encoding="utf-8"))
    assert meta["name"] == "sentence-transformers/all-MiniLM-L6-v2"
    result = mteb.TaskResult.from_disk(files["scifact_dev"])
    assert result.task_name == "scifact_dev"
    assert result.mteb_version == mteb.__version__
    assert len(result.dataset_revision) == 12  # a hash of the data given in memory
    assert result.get_score() == pytest.approx(_mteb_scores(files["scifact_dev"])["ndcg_at_10"])


@needs_mteb
@needs_shared
def test_model_card_shows_the_mteb_results(evaluated):
    from sentence_transformers.base.model_card import generate_model_card

    from hf_codiemb.arguments import ModelArguments
    from hf_codiemb.models import load_model
    from hf_codiemb.mteb_evaluation import add_mteb_results_to_card, load_mteb_results

    output, _, files = evaluated
    results = load_mteb_results(output / "mteb")
    assert [result.task_name for result in results] == ["scifact_dev", "stsb-en_dev"]
    model = load_model(ModelArguments())  # its card data is hf_codiemb's (CoDiEmbModelCardData)
    model.model_card_data.codiemb.update(world_size=1, gradient_accumulation_steps=1)  # as the trainer fills them
    add_mteb_results_to_card(model.model_card_data, results)
    card = generate_model_card(model)
    ndcg = _mteb_scores(files["scifact_dev"])["ndcg_at_10"]
    spearman = _mteb_scores(files["stsb-en_dev"])["cosine_spearman"]
    evaluation = card[card.index("## Evaluation") :]
    assert "#### MTEB Retrieval" in evaluation and "#### MTEB STS" in evaluation
    assert "`scifact_dev`" in evaluation and "`stsb-en_dev`" in evaluation
    assert re.search(rf"\| \*\*ndcg_at_10\*\* +\| \*\*{ndcg:.4f}\*\* +\|", evaluation)
    assert re.search(rf"\| \*\*cosine_spearman\*\* +\| \*\*{spearman:.4f}\*\* +\|", evaluation)
    header = card[: card.index("---", 3)]  # the YAML metadata: model-index entries for the Hub
    assert "type: mteb-retrieval" in header and f"value: {ndcg}" in header
    # `codiemb evaluate --model_card` wrote that card for the user: MTEB's scores and ours, no training section (the
    # evaluated model was not trained here).
    written = (output / "model_card.md").read_text(encoding="utf-8")
    assert re.search(rf"\| \*\*ndcg_at_10\*\* +\| \*\*{ndcg:.4f}\*\* +\|", written[written.index("#### MTEB Retrieval") :])
    assert "type: mteb-retrieval" in written and "### CoDiEmb Training" not in written


@needs_mteb
def test_named_tasks_get_the_reference_instructions_in_the_recipe_template():
    from hf_codiemb.arguments import ModelArguments
    from hf_codiemb.mteb_evaluation import (
        PAPER_CMTEB_TASKS,
        REFERENCE_TASK_INSTRUCTIONS,
        named_task_prompts,
        resolve_mteb_tasks,
    )

    args = ModelArguments(query_prompt="query: ", passage_prompt="passage: ")
    t2, atec, scifact = resolve_mteb_tasks(["T2Retrieval", "ATEC", "SciFact"])
    assert named_task_prompts(t2, args) == {
        "T2Retrieval-query": "Instruction: Given a Chinese search query, retrieve web passages that answer the question "
        "Query: ",
        "T2Retrieval-document": "passage: ",
    }
    assert named_task_prompts(atec, args) == {
        "ATEC": "Instruction: Represent the text in conversations between users and financial customer service, "
        "retrieve semantically similar text Query: "
    }
    # No reference instruction (an English task), or instructions off: the model-level prompts.
    assert named_task_prompts(scifact, args) == {"SciFact-query": "query: ", "SciFact-document": "passage: "}
    assert named_task_prompts(atec, args, instructions=False) == {"ATEC": "query: "}
    assert named_task_prompts(atec, ModelArguments(), instructions=False) == {}  # the model's own prompts then
    # The paper's 15 tasks: one name expands to them, each known to mteb and instructed by the reference.
    paper = resolve_mteb_tasks(["codiemb-paper", "ATEC"])
    assert [task.metadata.name for task in paper] == list(PAPER_CMTEB_TASKS)
    assert set(PAPER_CMTEB_TASKS) <= set(REFERENCE_TASK_INSTRUCTIONS)
    assert [task.metadata.name for task in resolve_mteb_tasks(["MTEB(cmn, v1)"])][:2] == ["T2Retrieval", "MMarcoRetrieval"]


@needs_mteb
def test_an_unknown_mteb_task_is_a_usage_error_with_mteb_suggestion():
    from hf_codiemb.mteb_evaluation import resolve_mteb_tasks

    with pytest.raises(UsageError, match=r"'T2Retreival' not found\. Did you mean: 'T2Retrieval'\?"):
        resolve_mteb_tasks(["T2Retreival"])


@needs_mteb
def test_a_named_task_whose_hub_data_cannot_be_had_is_one_line(tmp_path, tiny_model_dir, monkeypatch, capsys):
    import datasets
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    status = main(["evaluate", "--model", str(tiny_model_dir), "--mteb_tasks", "ATEC", "--output_dir", str(tmp_path)])
    error_lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert status == 2
    assert len(error_lines) == 1
    assert error_lines[0].startswith("codiemb evaluate: error: MTEB task ATEC: its data (C-MTEB/ATEC) cannot be loaded")


def test_without_mteb_installed_an_mteb_request_is_one_line_and_nothing_else_needs_it(tmp_path, monkeypatch, capsys):
    from hf_codiemb.commands.evaluate import build_parser
    from hf_codiemb.mteb_evaluation import MTEBEvaluation

    monkeypatch.setitem(sys.modules, "mteb", None)  # `import mteb` now raises ImportError
    plain, _, _ = build_parser().parse(["--model", "m", "--sts_eval", "f", "--output_dir", "o"])
    assert MTEBEvaluation.from_arguments(plain) is None  # no MTEB option: mteb is never imported
    status = main([
        "evaluate", "--model", "packaged:all-minilm-l6-v2", "--sts_eval", "demo:sts_dev.jsonl", "--mteb_local",
        "--output_dir", str(tmp_path / "eval"),
    ])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert err == "codiemb evaluate: error: MTEB evaluation needs the mteb package: pip install 'hf_codiemb[mteb]'"
    assert not (tmp_path / "eval").exists()  # refused before the model was loaded or anything written


@needs_mteb
def test_local_tasks_carry_the_sets_prompts_and_refuse_sts_derived_sets():
    from datasets import Dataset

    from hf_codiemb.data import IREvalSet, STSEvalSet
    from hf_codiemb.mteb_evaluation import _local_prompts, local_retrieval_task, local_sts_task

    ir = IREvalSet("beir_dev", {"q1": "a cat"}, {"d1": "a kitten", "d2": "stocks"}, {"q1": {"d1"}}, "query: ", None,
                   ignore_identical_text=False)  # fmt: skip
    sts = STSEvalSet("pairs", Dataset.from_dict({"sentence1": ["a"], "sentence2": ["b"], "score": [3.0]}), "sts: ")
    assert _local_prompts({"beir_dev": ir}, {"pairs": sts}) == {"beir_dev-query": "query: ", "pairs": "sts: "}
    task = local_retrieval_task(ir)
    assert (task.metadata.name, task.metadata.eval_splits, task.metadata.main_score) == ("beir_dev", ["dev"], "ndcg_at_10")
    task.load_data()
    split = task.dataset["default"]["dev"]
    assert split["relevant_docs"] == {"q1": {"d1": 1}} and split["corpus"]["text"] == ["a kitten", "stocks"]
    sts_task = local_sts_task(sts, score_range=(0, 5))
    assert (sts_task.metadata.eval_splits, sts_task.metadata.main_score) == (["test"], "cosine_spearman")
    # An STS-derived set ranks without the query's own sentence: mteb cannot, so it is not an MTEB task.
    derived = IREvalSet("pairs-paraphrase-ir", {"q1": "a cat"}, {"q1": "a cat", "d1": "a kitten"}, {"q1": {"d1"}})
    with pytest.raises(UsageError, match="leaves out documents with the query's own text"):
        local_retrieval_task(derived)
