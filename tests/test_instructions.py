"""Task instructions as the reference uses them: "Instruction: {task} Query: " on IR queries and both STS sentences,
passage prompts on passages, the same prompts at evaluation, and pooling that leaves the instruction out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_models import make_tiny_model

from hf_codiemb.arguments import DataArguments, ModelArguments
from hf_codiemb.errors import RecipeError
from hf_codiemb.evaluation import evaluate_model, evaluate_sts
from hf_codiemb.instructions import format_instruction, split_by_instruction
from hf_codiemb.models import load_model
from hf_codiemb.pipeline import load_eval_sets, load_training_data, training_prompts
from hf_codiemb.training_args import CoDiEmbTrainingArguments

SEARCH = "Given a question, retrieve passages that answer it"
PARAPHRASE = "Retrieve semantically similar text"


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
    return str(path)


@pytest.fixture
def data_files(tmp_path):
    ir = [
        {"query": f"question {i}", "positives": [f"answer {i}", f"other answer {i}"], "negatives": [f"noise {i}"],
         "instruction": SEARCH if i % 2 == 0 else PARAPHRASE}
        for i in range(8)
    ]  # fmt: skip
    sts = [
        {"task": "sts", "query": f"sentence {i}", "positives": [f"sentence {i} again"], "positive_scores": [i % 5],
         "instruction": PARAPHRASE}
        for i in range(10)
    ]  # fmt: skip
    plain_sts = tmp_path / "plain.tsv"
    plain_sts.write_text("".join(f"a {i}\tb {i}\t{i % 5}\n" for i in range(10)))
    return {
        "ir": write_jsonl(tmp_path / "ir.jsonl", ir),
        "sts": write_jsonl(tmp_path / "sts.jsonl", sts),
        "plain_sts": str(plain_sts),
    }


def test_format_instruction_is_the_reference_format():
    assert format_instruction("Find similar sentences:") == "Instruction: Find similar sentences Query: "
    assert format_instruction(" \t检索相关文章：\n", "Instruct: {instruction}\nQuery: ") == "Instruct: 检索相关文章：\nQuery: "
    with pytest.raises(ValueError, match="must contain '{instruction}'"):
        format_instruction("x", "no placeholder")


def test_split_by_instruction():
    from datasets import Dataset

    one = Dataset.from_dict({"query": ["a", "b"], "instruction": ["x", "x"]})
    (name, (dataset, instruction)), = split_by_instruction("one", one).items()
    assert (name, instruction, dataset.column_names) == ("one", "x", ["query"])
    mixed = Dataset.from_dict({"query": ["a", "b", "c"], "instruction": ["x", "y", "x"]})
    parts = split_by_instruction("mixed", mixed)
    assert {k: (v[0]["query"], v[1]) for k, v in parts.items()} == {"mixed-i0": (["a", "c"], "x"), "mixed-i1": (["b"], "y")}
    plain = Dataset.from_dict({"query": ["a"]})
    assert split_by_instruction("plain", plain) == {"plain": (plain, None)}


def test_training_prompts_follow_the_records_instructions(data_files):
    data_args = DataArguments(ir_train=[data_files["ir"]], sts_train=[data_files["sts"], data_files["plain_sts"]])
    datasets, tasks, instructions = load_training_data(data_args, num_negatives=1)
    # The IR file carries two instructions: one dataset (one prompt per batch) each.
    assert tasks == {"ir-i0": "ir", "ir-i1": "ir", "sts": "sts", "plain": "sts"}
    assert instructions == {"ir-i0": SEARCH, "ir-i1": PARAPHRASE, "sts": PARAPHRASE, "plain": None}
    assert len(datasets["ir-i0"]) == len(datasets["ir-i1"]) == 4
    assert all("instruction" not in d.column_names for d in datasets.values())

    model_args = ModelArguments(passage_prompt="Passage: ", sts_prompt="sts: ")
    args = CoDiEmbTrainingArguments(output_dir="unused", num_positives=2, num_negatives=1, report_to=[])
    prompts = training_prompts(model_args, datasets, tasks, instructions, args)
    search = f"Instruction: {SEARCH} Query: "
    paraphrase = f"Instruction: {PARAPHRASE} Query: "
    assert prompts["ir-i0"] == {
        "query": search, "positive_0": "Passage: ", "positive_1": "Passage: ", "negative_0": "Passage: "
    }  # fmt: skip
    assert prompts["ir-i1"]["query"] == paraphrase
    # The reference puts the instruction on BOTH sentences of an STS pair; without one, the model-level prompt.
    assert prompts["sts"] == {"sentence1": paraphrase, "sentence2": paraphrase}
    assert prompts["plain"] == {"sentence1": "sts: ", "sentence2": "sts: "}
    # A prompt the recipe sets itself wins.
    args.prompts = {"plain": {"sentence1": "mine: "}}
    assert training_prompts(model_args, datasets, tasks, instructions, args)["plain"] == {
        "sentence1": "mine: ", "sentence2": "sts: "
    }  # fmt: skip


def test_evaluation_uses_the_prompts_of_training(data_files, tmp_path):
    data_args = DataArguments(ir_eval=[data_files["ir"]], sts_eval=[data_files["sts"], data_files["plain_sts"]])
    model_args = ModelArguments(query_prompt="query: ", passage_prompt="passage: ")
    with pytest.raises(ValueError, match="records carry 2 instructions"):
        load_eval_sets(data_args, model_args)  # one IR eval set is encoded with one prompt
    single = tmp_path / "ir_single.jsonl"
    lines = [json.loads(line) for line in Path(data_files["ir"]).read_text().splitlines()]
    write_jsonl(single, [dict(record, instruction=SEARCH) for record in lines])
    data_args.ir_eval = [str(single)]
    sts_sets, ir_sets = load_eval_sets(data_args, model_args)
    assert ir_sets["ir_single"].query_prompt == f"Instruction: {SEARCH} Query: "
    assert ir_sets["ir_single"].corpus_prompt == "passage: "
    assert sts_sets["sts"].prompt == f"Instruction: {PARAPHRASE} Query: "
    assert sts_sets["plain"].prompt == "query: "  # sts_prompt unset: query_prompt, as in training
    assert ir_sets["plain-paraphrase-ir"].query_prompt == "query: "

    model = make_tiny_model(tmp_path / "tiny")
    results = evaluate_model(model, {"sts": sts_sets["sts"]})
    direct = evaluate_sts(model, sts_sets["sts"].data, "sts", prompt=sts_sets["sts"].prompt)
    unprompted = evaluate_sts(model, sts_sets["sts"].data, "sts")
    assert results["sts"]["sts"]["spearman_cosine"] == pytest.approx(direct["spearman_cosine"], abs=1e-9)
    assert results["sts"]["sts"]["spearman_cosine"] != pytest.approx(unprompted["spearman_cosine"], abs=1e-6)


def test_pooling_include_prompt_false_leaves_the_instruction_out(tmp_path):
    make_tiny_model(tmp_path / "tiny")
    model = load_model(ModelArguments(model_name_or_path=str(tmp_path / "tiny" / "model"), pooling_include_prompt=False))
    assert model[1].include_prompt is False
    prompt = f"Instruction: {SEARCH} Query: "
    features = model.preprocess(["what is a tiny model"], prompt=prompt)
    with torch.no_grad():
        got = model(dict(features))["sentence_embedding"][0]
        tokens = model[0].auto_model(
            input_ids=features["input_ids"], attention_mask=features["attention_mask"]
        ).last_hidden_state[0]
    length = int(features["prompt_length"])
    expected = torch.nn.functional.normalize(tokens[length:].mean(0), dim=0)  # [CLS] + instruction tokens dropped
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(RecipeError, match=r"field 'instruction_template': must contain '\{instruction\}'"):
        ModelArguments(instruction_template="no placeholder")
