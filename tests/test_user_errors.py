"""Errors in the user's input: one clear line and exit status 2 from `codiemb`, raised before any work starts.

Covers recipe values (types, ranges, unknown keys and flags), model paths (missing, a file, not a model, Hub id
offline or unreachable, truncated weights), data encodings (non-UTF-8, lone surrogates, gzip, BOM, a directory),
dry runs that fail where the real run would, and the warning on suspicious data.
"""

from __future__ import annotations

import gzip
import json
import logging
import time
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from tiny_models import make_tiny_model

from hf_codiemb.arguments import ModelArguments
from hf_codiemb.cli import main
from hf_codiemb.data import (
    DataFormatError,
    load_ir_dataset,
    load_sts_dataset,
    suspicious_record_counts,
    warn_suspicious_records,
)
from hf_codiemb.errors import CoDiEmbUserError, DataError, ModelLoadError, RecipeError, TrainingDataError
from hf_codiemb.model_names import resolve_model_path
from hf_codiemb.models import load_model
from hf_codiemb.recipe import parse_recipe

IR_RECORD = {"query": "how to bake bread", "positives": ["knead the dough"], "negatives": ["stock markets fell"]}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def ir_records(count: int, negatives: bool = True) -> list[dict]:
    return [
        {"query": f"query {i}", "positives": [f"positive {i}"], "negatives": [f"negative {i}"] if negatives else []}
        for i in range(count)
    ]


def sts_records(count: int) -> list[dict]:
    return [
        {"task": "sts", "query": f"sentence {i}", "positives": [f"other {i}"], "positive_scores": [float(i % 6)]}
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    make_tiny_model(root)
    return root / "model"


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """Exit status and stderr of ``codiemb ARGV`` (the log handler writes to stderr too: keep only our lines)."""
    code = main(argv)
    err = capsys.readouterr().err
    return code, "".join(line + "\n" for line in err.splitlines() if line.startswith("codiemb"))


def dry_run_argv(tmp_path: Path, model: str | Path, *extra: str, ir: Path | None = None) -> list[str]:
    ir = ir or write_jsonl(tmp_path / "ir.jsonl", ir_records(8))
    return ["train", "--model_name_or_path", str(model), "--ir_train", str(ir), "--ir_batch_size", "2",
            "--output_dir", str(tmp_path / "out"), "--dry_run", *extra]  # fmt: skip


# --------------------------------------------------------------------------------------- one line, exit status 2


def test_data_error_is_one_line_with_the_full_path_and_exit_code_2(tmp_path, capsys, monkeypatch):
    data = tmp_path / "ir_train.jsonl"
    data.write_text(json.dumps(IR_RECORD) + "\n" + json.dumps({"query": "q", "positives": "not a list"}) + "\n")
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(["train", "--ir_train", "ir_train.jsonl", "--output_dir", str(tmp_path / "o")], capsys)
    assert code == 2
    # The full path of the file (not the dataset name 'ir_train'), the line and the field, on one line.
    assert err == (
        f"codiemb train: error: {data}, line 2, field 'positives': must be a non-empty list of strings, "
        "got str 'not a list'\n"
    )
    assert not (tmp_path / "o").exists()


def test_debug_flag_and_env_var_show_the_traceback(tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "bad.jsonl", [{"query": "q"}])
    argv = ["train", "--ir_train", str(data), "--output_dir", str(tmp_path / "o")]
    with pytest.raises(DataFormatError, match=r"bad.jsonl, line 1, field 'positives'"):
        main(["--debug", *argv])
    with pytest.raises(DataFormatError):
        main([*argv, "--debug"])
    monkeypatch.setenv("CODIEMB_DEBUG", "1")
    with pytest.raises(DataFormatError):
        main(argv)


def test_user_error_types():
    assert issubclass(DataFormatError, DataError) and issubclass(DataError, CoDiEmbUserError)
    assert issubclass(TrainingDataError, CoDiEmbUserError) and issubclass(TrainingDataError, ValueError)
    assert issubclass(RecipeError, ValueError) and issubclass(ModelLoadError, OSError)


def test_missing_data_file_and_recipe_are_user_errors(tmp_path, capsys):
    code, err = run_cli(["train", "--ir_train", str(tmp_path / "nope.jsonl"), "--output_dir", str(tmp_path)], capsys)
    assert (code, err) == (2, f"codiemb train: error: data file not found: {tmp_path / 'nope.jsonl'}\n")
    code, err = run_cli(["train", "--config", str(tmp_path / "nope.yaml")], capsys)
    assert (code, err) == (2, f"codiemb train: error: Recipe {tmp_path / 'nope.yaml'}: does not exist\n")


# ------------------------------------------------------------------------------------------------ recipe values


@pytest.mark.parametrize(
    ("yaml_line", "message"),
    [
        ("ir_batch_size: true", r"line 2, field 'ir_batch_size': must be an integer, got True \(bool\)"),
        ("sts_batch_size: 2.5", r"line 2, field 'sts_batch_size': must be an integer, got 2.5 \(float\)"),
        ("learning_rate: [1.0e-5, 2.0e-5]", r"line 2, field 'learning_rate': must be a number, got \[1e-05, 2e-05\]"),
        ("num_negatives: [4]", r"line 2, field 'num_negatives': must be an integer, got \[4\]"),
        ("max_steps: -3", r"line 2, field 'max_steps': must be > 0, or -1 \(the default\) .* got -3"),
        ("max_steps: 0", r"line 2, field 'max_steps': must be > 0"),
        ("num_train_epochs: -1", r"line 2, field 'num_train_epochs': must be a number >= 0, got -1"),
        ("num_train_epochs: 0", r"line 2, field 'num_train_epochs': is 0 and max_steps is unset"),
        ("torch_dtype: float8", r"line 2, field 'torch_dtype': must be one of float32, bfloat16, float16"),
        ("pooling: max", r"line 2, field 'pooling': must be one of cls, mean"),
        ("sts_score_range: [5, 0]", r"line 2, field 'sts_score_range': must be two numbers \[low, high\]"),
        ("ir_train: 3", r"line 2, field 'ir_train': must be a list of a string, got 3"),
        ("lora: 4", r"line 2, field 'lora': must be a mapping like"),
    ],
)
def test_bad_recipe_values_are_refused_when_parsing(tmp_path, yaml_line, message):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"# a recipe\n{yaml_line}\noutput_dir: {tmp_path / 'out'}\n")
    with pytest.raises(RecipeError, match=rf"^Recipe {recipe}, {message}"):
        parse_recipe(["--config", str(recipe)])


def test_recipe_values_that_argparse_would_convert_are_accepted(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    # YAML reads 3e-5 (no dot) as a string; argparse converts string defaults, as it would a flag.
    recipe.write_text(f"learning_rate: 3e-5\nir_train: demo:ir_train.jsonl\nmax_steps: 2\noutput_dir: {tmp_path}\n")
    _, data_args, training_args, _ = parse_recipe(["--config", str(recipe)])
    assert training_args.learning_rate == pytest.approx(3e-5)
    assert data_args.ir_train == ["demo:ir_train.jsonl"]  # one path given as a string: a one-element list
    assert training_args.max_steps == 2


def test_a_flag_overriding_a_recipe_value_is_named_as_the_command_line(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"max_steps: 5\noutput_dir: {tmp_path}\n")
    code, err = run_cli(["train", "--config", str(recipe), "--max_steps", "-5"], capsys)
    assert code == 2
    assert err.startswith("codiemb train: error: command line, field 'max_steps': must be > 0")


@pytest.mark.parametrize(
    ("flag", "suggestion"),
    [("--max_step", "--max_steps"), ("--ir_batch_sise", "--ir_batch_size"), ("--learning-rat", "--learning_rate")],
)
def test_misspelled_or_abbreviated_flag_is_refused_with_a_suggestion(tmp_path, capsys, flag, suggestion):
    code, err = run_cli(["train", flag, "5", "--output_dir", str(tmp_path), "--dry_run"], capsys)
    assert code == 2
    assert err == f"codiemb train: error: command line: unrecognized arguments: {flag} 5; did you mean {suggestion}?\n"


def test_argparse_commands_refuse_abbreviations_and_suggest(tmp_path, capsys):
    # `--output` is a prefix of `--output-dir`: never taken for it (argparse's allow_abbrev is off).
    code, err = run_cli(["evaluate", "--model", "m", "--sts-eval", "a", "--output", str(tmp_path)], capsys)
    expected = ("codiemb evaluate: error: command line: the following arguments are required: --output_dir "
                "(see `codiemb evaluate --help`)\n")
    assert (code, err) == (2, expected)
    code, err = run_cli(["evaluate", "--model", "m", "--output-dir", str(tmp_path), "--sts-evl", "a"], capsys)
    assert code == 2 and "unrecognized arguments: --sts-evl a; did you mean --sts_eval?" in err
    code, err = run_cli(["evaluate", "--output-dir", str(tmp_path)], capsys)  # --model, or a --recipe naming one
    assert code == 2 and "error: Give --model (and/or --recipe, whose model is used)" in err


def test_bad_flag_value_is_one_line(tmp_path, capsys):
    code, err = run_cli(["train", "--ir_batch_size", "2.5", "--output_dir", str(tmp_path)], capsys)
    assert code == 2
    assert err.startswith("codiemb train: error: command line: argument --ir_batch_size")
    assert "invalid int value: '2.5'" in err and err.count("\n") == 1


def test_a_loss_of_the_other_task_is_refused_before_training(tmp_path, tiny_model_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import CoSENTLoss

    from hf_codiemb import CoDiEmbTrainer, CoDiEmbTrainingArguments
    from hf_codiemb.losses import MultiPositiveInfoNCELoss

    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    datasets = {
        "ir": Dataset.from_list(ir_records(8)),
        "sts": Dataset.from_dict({"sentence1": ["a", "b"] * 4, "sentence2": ["c", "d"] * 4, "score": [1.0, 2.0] * 4}),
    }
    args = CoDiEmbTrainingArguments(output_dir=str(tmp_path / "run"), ir_batch_size=2, sts_batch_size=2,
                                    num_negatives=1, report_to=[], use_cpu=True)  # fmt: skip
    with pytest.raises(TrainingDataError, match=r"'sts' \(sts\) is given MultiPositiveInfoNCELoss, a loss for ir"):
        CoDiEmbTrainer(model=model, args=args, train_dataset=datasets,
                       loss={"ir": MultiPositiveInfoNCELoss(model), "sts": MultiPositiveInfoNCELoss(model)})  # fmt: skip
    with pytest.raises(TrainingDataError, match=r"'ir' \(ir\) is given CoSENTLoss, a loss for sts"):
        CoDiEmbTrainer(model=model, args=args, train_dataset=datasets,
                       loss={"ir": lambda m: CoSENTLoss(m), "sts": CoSENTLoss(model)})  # fmt: skip


def test_every_loss_of_ours_declares_the_task_whose_columns_it_takes(tiny_model_path):
    """Each hf_codiemb loss is checked against its dataset's task (the GradCache IR loss was once unknown, so it was
    not checked); wrappers are looked through, unknown losses are not checked."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import (
        CoSENTLoss,
        MatryoshkaLoss,
        MultipleNegativesRankingLoss,
    )

    from hf_codiemb import losses
    from hf_codiemb.training_checks import loss_task

    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    expected = {
        losses.MultiPositiveInfoNCELoss: "ir",
        losses.CachedMultiPositiveInfoNCELoss: "ir",
        losses.CoDiEmbSTSLoss: "sts",
        losses.PearsonLoss: "sts",
        losses.PROLoss: "sts",
        losses.RankKLLoss: "sts",
        losses.SoftSpearmanLoss: "sts",
    }
    wrappers = {losses.CoDiEmbMatryoshkaLoss}  # looked through: the task of the loss they wrap
    ours = {obj for obj in vars(losses).values() if isinstance(obj, type) and obj.__name__.endswith("Loss")}
    assert ours - wrappers == set(expected), "a new loss needs its task here and a `task` class attribute"
    assert loss_task(losses.CoDiEmbMatryoshkaLoss(model, losses.PearsonLoss(model), [4])) == "sts"
    for cls, task in expected.items():
        assert loss_task(cls(model)) == task, cls.__name__
    assert loss_task(MultipleNegativesRankingLoss(model)) == "ir"
    assert loss_task(CoSENTLoss(model)) == "sts"
    assert loss_task(MatryoshkaLoss(model, CoSENTLoss(model), [4])) == "sts"
    assert loss_task(torch.nn.MSELoss()) is None


# ------------------------------------------------------------------------------------ model paths and dry runs


def test_dry_run_passes_on_a_valid_recipe(tmp_path, capsys, tiny_model_path):
    assert main(dry_run_argv(tmp_path, tiny_model_path)) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["datasets"] == {"ir": {"task": "ir", "records": 8}}


def test_dry_run_fails_on_a_missing_model_folder_at_once(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    code, err = run_cli(dry_run_argv(tmp_path, "outputs/run1/checkpoint-5"), capsys)
    assert time.perf_counter() - start < 10  # no Hub retries
    assert code == 2
    assert err == (
        f"codiemb train: error: Model folder {tmp_path / 'outputs/run1/checkpoint-5'} does not exist (and "
        "'outputs/run1/checkpoint-5' is not a Hugging Face Hub model id)\n"
    )
    (tmp_path / "outputs").mkdir()  # `outputs/run1` could be a Hub id, but its first folder is here: a path
    with pytest.raises(ModelLoadError, match=r"outputs/run1 does not exist"):
        resolve_model_path("outputs/run1")


def test_dry_run_fails_on_a_model_path_that_is_a_file_or_not_a_model(tmp_path, capsys, tiny_model_path):
    weights = tiny_model_path / "model.safetensors"
    code, err = run_cli(dry_run_argv(tmp_path, weights), capsys)
    assert (code, err) == (2, (f"codiemb train: error: Model path {weights} is a file, not a model folder; give the "
                              "folder that holds the model (modules.json or config.json and the weights)\n"))  # fmt: skip
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = run_cli(dry_run_argv(tmp_path, empty), capsys)
    assert code == 2 and f"{empty} is not a model folder: it has neither modules.json" in err


def test_hub_id_while_offline_fails_in_the_dry_run_and_the_real_load(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, err = run_cli(dry_run_argv(tmp_path, "nobody-xyz/no-such-model"), capsys)
    assert code == 2
    assert "'nobody-xyz/no-such-model' is not a local folder and not in the Hugging Face cache, and offline" in err
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE=1"):
        load_model(ModelArguments(model_name_or_path="nobody-xyz/no-such-model"))


def test_hub_id_with_an_unreachable_hub_fails_at_once(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    start = time.perf_counter()
    code, err = run_cli(dry_run_argv(tmp_path, "nobody-xyz/no-such-model"), capsys)
    assert time.perf_counter() - start < 20
    assert code == 2
    assert "'nobody-xyz/no-such-model' is not a local folder and the Hub (http://127.0.0.1:9) cannot be reached" in err


def test_dry_run_fails_on_ir_data_without_negatives(tmp_path, capsys, tiny_model_path):
    ir = write_jsonl(tmp_path / "no_negatives.jsonl", ir_records(8, negatives=False))
    code, err = run_cli(dry_run_argv(tmp_path, tiny_model_path, "--num_negatives", "4", ir=ir), capsys)
    assert code == 2
    assert "'no_negatives' (ir), row 0, field 'negatives': empty but num_negatives=4" in err
    assert main(dry_run_argv(tmp_path, tiny_model_path, "--num_negatives", "0", ir=ir)) == 0


def test_dry_run_fails_when_a_dataset_cannot_fill_one_batch(tmp_path, capsys, tiny_model_path):
    code, err = run_cli(dry_run_argv(tmp_path, tiny_model_path, "--ir_batch_size", "64"), capsys)
    assert code == 2 and "'ir' (ir) has 8 examples" in err


@pytest.mark.parametrize("flag", [["--torch_dtype", "fp16"], ["--pooling", "weighted"]])
def test_dry_run_fails_on_unknown_dtype_or_pooling(tmp_path, capsys, tiny_model_path, flag):
    code, err = run_cli(dry_run_argv(tmp_path, tiny_model_path, *flag), capsys)
    assert code == 2 and f"field '{flag[0][2:]}': must be one of" in err


def copy_model(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    return target


def test_truncated_safetensors_names_the_checkpoint(tmp_path, capsys, tiny_model_path):
    model = copy_model(tiny_model_path, tmp_path / "checkpoint-7")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match=rf"Model folder {model}: weights file {weights} is truncated or corrupt"):
        load_model(ModelArguments(model_name_or_path=str(model)))
    code, err = run_cli(dry_run_argv(tmp_path, model), capsys)
    assert code == 2 and f"weights file {weights} is truncated or corrupt" in err
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="truncated or corrupt"):
        resolve_model_path(str(model))
    weights.unlink()
    with pytest.raises(ModelLoadError, match=rf"{model} has a config.json but no weights"):
        resolve_model_path(str(model))


# --------------------------------------------------------------------------------------------------- encodings


def test_non_utf8_bytes_name_the_file_line_and_field(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(IR_RECORD).encode() + b"\n" + '{"query": "caf\xe9"}'.encode("latin-1") + b"\n")
    with pytest.raises(DataFormatError, match=rf"^{path}, line 2, field 'query': is not valid UTF-8 \(byte 0xe9 at byte 15"):
        load_ir_dataset(path)
    tsv = tmp_path / "latin1.tsv"
    tsv.write_bytes(b"a\tb\t1.0\n" + "caf\xe9\tb\t2.0\n".encode("latin-1"))
    with pytest.raises(DataFormatError, match=rf"^{tsv}, line 2, field 'column 1': is not valid UTF-8"):
        load_sts_dataset(tsv)


def test_lone_surrogates_name_the_file_line_and_field(tmp_path):
    path = tmp_path / "surrogate.jsonl"
    path.write_text(json.dumps(IR_RECORD) + "\n" + '{"query": "ok", "positives": ["fine", "bad \\ud800"]}\n')
    with pytest.raises(DataFormatError, match=rf"^{path}, line 2, field 'positives': item 1 contains a lone surrogate"):
        load_ir_dataset(path)


def test_gzip_files_are_read_transparently(tmp_path):
    plain = write_jsonl(tmp_path / "ir.jsonl", ir_records(5))
    packed = tmp_path / "ir.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert load_ir_dataset(packed).to_list() == load_ir_dataset(plain).to_list()
    sts = tmp_path / "sts.tsv.gz"
    sts.write_bytes(gzip.compress(b"s1\ts2\tscore\na\tb\t1.5\nc\td\t4.0\n"))
    assert load_sts_dataset(sts).to_dict() == {"sentence1": ["a", "c"], "sentence2": ["b", "d"], "score": [1.5, 4.0]}
    sts_jsonl = tmp_path / "sts.jsonl.gz"  # the format comes from the suffix under .gz
    sts_jsonl.write_bytes(gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in sts_records(3))))
    assert load_sts_dataset(sts_jsonl)["score"] == [0.0, 1.0, 2.0]


def test_corrupt_gzip_names_the_file(tmp_path):
    packed = tmp_path / "ir.jsonl.gz"
    packed.write_bytes(gzip.compress(("".join(json.dumps(r) + "\n" for r in ir_records(400))).encode())[:300])
    with pytest.raises(DataFormatError, match=rf"^{packed}, line \d+: corrupt or truncated gzip data"):
        load_ir_dataset(packed)


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(IR_RECORD).encode() + b"\n")
    assert load_ir_dataset(path)["query"] == [IR_RECORD["query"]]
    tsv = tmp_path / "bom.tsv"
    tsv.write_bytes(b"\xef\xbb\xbfs1\ts2\tscore\na\tb\t3.0\n")  # the BOM must not hide the header
    assert load_sts_dataset(tsv).to_dict() == {"sentence1": ["a"], "sentence2": ["b"], "score": [3.0]}


def test_a_directory_given_as_a_data_file_says_so(tmp_path, capsys):
    with pytest.raises(DataError, match=rf"^{tmp_path}: is a directory, not a data file"):
        load_ir_dataset(tmp_path)
    code, err = run_cli(["train", "--sts_train", str(tmp_path), "--output_dir", str(tmp_path / "o")], capsys)
    assert code == 2 and f"error: {tmp_path}: is a directory, not a data file" in err


# -------------------------------------------------------------------------------------------- suspicious data


def test_suspicious_ir_records_are_counted_and_warned_once(tmp_path, caplog):
    records = ir_records(6)
    records += [dict(records[0]), dict(records[0])]  # two duplicates of record 0
    records.append({"query": "same", "positives": ["same", "p"], "negatives": ["n"]})  # query = a positive
    records.append({"query": "q2", "positives": ["p2"], "negatives": ["q2", "p2"]})  # query = negative, pos = neg
    path = write_jsonl(tmp_path / "ir.jsonl", records)
    with caplog.at_level(logging.WARNING, logger="hf_codiemb.data"):
        dataset = load_ir_dataset(path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        (f"{path}: suspicious data in 10 records: 2 duplicated record(s); 1 record(s) with the query equal to one of "
        "its positives; 1 record(s) with the query equal to one of its negatives; 1 record(s) with a text that is "
        "both a positive and a negative")
    ]
    assert suspicious_record_counts(dataset, "ir") == {
        "records": 10, "duplicates": 2, "query_is_positive": 1, "query_is_negative": 1, "positive_is_negative": 1,
    }  # fmt: skip


def test_all_equal_sts_scores_are_warned(tmp_path, caplog):
    records = [{"task": "sts", "query": f"s{i}", "positives": [f"t{i}"], "positive_scores": [3.0]} for i in range(5)]
    path = write_jsonl(tmp_path / "sts.jsonl", records + [records[1], {**records[2], "positives": ["s2"]}])
    with caplog.at_level(logging.WARNING, logger="hf_codiemb.data"):
        load_sts_dataset(path)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        (f"{path}: suspicious data in 7 records: 1 duplicated record(s); 1 pair(s) of two identical sentences; every "
        "gold score is equal (no signal for the STS losses; Spearman is undefined)")
    ]
    counts = warn_suspicious_records([{"sentence1": "a", "sentence2": "b", "score": 1.0}] * 2, "sts", "x")
    assert counts == {"records": 2, "duplicates": 1, "identical_pairs": 0, "distinct_scores": 1}


def test_clean_data_gives_no_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="hf_codiemb.data"):
        load_ir_dataset(write_jsonl(tmp_path / "ir.jsonl", ir_records(5)))
        load_sts_dataset(write_jsonl(tmp_path / "sts.jsonl", sts_records(5)))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
