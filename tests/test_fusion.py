"""Tests of hf_codiemb.fusion: the arithmetic against NumPy, the streaming pipeline, bad inputs, the CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hub_fixtures import minilm_path, perturbed_copy, save_tiny_tokenizer, tiny_hf_model
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hf_codiemb.fusion import (
    DeltaGuidedFusion,
    FusionError,
    FusionWriteError,
    delta_fuse,
    delta_guided_weights,
    fuse,
    get_method,
    registered_methods,
)
from hf_codiemb.fusion.methods.mergekit_methods import mergekit_available
from hf_codiemb.fusion.safetensors_io import StreamingSafetensorsWriter


# --------------------------------------------------------------------------- NumPy reference
def numpy_delta_fuse(base: np.ndarray, checkpoints: list[np.ndarray], p: float, granularity: str = "element",
                     eps: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    """Direct computation of METHOD.md section 6 in float64."""
    base = base.astype(np.float64)
    deltas = np.stack([c.astype(np.float64) - base for c in checkpoints])
    if granularity == "tensor":
        magnitudes = np.sqrt((deltas.reshape(len(checkpoints), -1) ** 2).sum(axis=1))
        magnitudes = magnitudes.reshape((-1,) + (1,) * base.ndim)
    else:
        magnitudes = np.abs(deltas)
    powered = magnitudes**p
    weights = powered / (powered.sum(axis=0, keepdims=True) + eps)
    weights = np.broadcast_to(weights, deltas.shape)
    return base + (weights * deltas).sum(axis=0), weights


def _random(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.fixture
def tensors() -> tuple[torch.Tensor, list[torch.Tensor]]:
    base = _random((7, 5), 0)
    return base, [base + 0.1 * _random((7, 5), seed) for seed in (1, 2, 3)]


@pytest.mark.parametrize("p", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("granularity", ["element", "tensor"])
def test_delta_matches_numpy(tensors, p, granularity):
    base, checkpoints = tensors
    method = DeltaGuidedFusion(p=p, granularity=granularity)
    norms = torch.stack([torch.linalg.vector_norm(c - base) for c in checkpoints])
    merged = method.merge(base, checkpoints, delta_norms=norms).merged
    expected, _ = numpy_delta_fuse(base.numpy(), [c.numpy() for c in checkpoints], p, granularity)
    # eps acts on max-normalised magnitudes (see delta_guided_weights), hence a 1e-9 tolerance.
    np.testing.assert_allclose(merged.numpy(), expected, rtol=1e-7, atol=1e-9)


def test_p0_is_plain_average(tensors):
    base, checkpoints = tensors
    merged = DeltaGuidedFusion(p=0.0).merge(base, checkpoints).merged
    np.testing.assert_allclose(merged.numpy(), np.mean([c.numpy() for c in checkpoints], axis=0), atol=1e-12)


def test_single_checkpoint_is_returned_exactly(tensors):
    base, checkpoints = tensors
    for granularity in ("element", "tensor"):
        norms = torch.linalg.vector_norm(checkpoints[0] - base).reshape(1)
        merged = DeltaGuidedFusion(granularity=granularity).merge(base, checkpoints[:1], delta_norms=norms).merged
        np.testing.assert_allclose(merged.numpy(), checkpoints[0].numpy(), rtol=0, atol=1e-12)


def test_equal_deltas_return_the_checkpoint(tensors):
    base, checkpoints = tensors
    merged = DeltaGuidedFusion(p=1.5).merge(base, [checkpoints[0]] * 3).merged
    np.testing.assert_allclose(merged.numpy(), checkpoints[0].numpy(), atol=1e-12)


@pytest.mark.parametrize("p", [0.0, 1.0, 3.0, 50.0])
def test_element_weights_sum_to_one(tensors, p):
    base, checkpoints = tensors
    magnitudes = torch.stack([(c - base).abs() for c in checkpoints])
    weights = delta_guided_weights(magnitudes, p)
    np.testing.assert_allclose(weights.sum(0).numpy(), 1.0, atol=1e-9)
    assert (weights >= 0).all()


def test_all_zero_deltas_give_uniform_weights_and_the_base(tensors):
    base, _ = tensors
    weights = delta_guided_weights(torch.zeros(3, 7, 5, dtype=torch.float64), p=1.0)
    np.testing.assert_allclose(weights.numpy(), 1 / 3)
    output = DeltaGuidedFusion().merge(base, [base.clone(), base.clone()])
    assert torch.equal(output.merged, base)
    np.testing.assert_allclose(output.weight_sums.numpy(), base.numel() / 2)


def test_large_p_takes_the_largest_move(tensors):
    base, checkpoints = tensors
    merged = DeltaGuidedFusion(p=200.0).merge(base, checkpoints).merged
    deltas = torch.stack([c - base for c in checkpoints])
    largest = deltas.gather(0, deltas.abs().argmax(0, keepdim=True))[0]
    top2 = deltas.abs().topk(2, dim=0).values
    clear = top2[0] > 1.1 * top2[1]  # where one move is clearly the largest
    assert clear.sum() > 20
    np.testing.assert_allclose(merged[clear].numpy(), (base + largest)[clear].numpy(), atol=1e-6)


def test_registry_and_bad_parameters():
    assert {"delta", "uniform", "task_arithmetic", "ties", "dare_ties", "dare_linear"} <= set(registered_methods())
    with pytest.raises(ValueError, match="Unknown fusion method"):
        get_method("nope")
    with pytest.raises(ValueError, match="granularity"):
        DeltaGuidedFusion(granularity="row")
    with pytest.raises(ValueError, match="p must be"):
        DeltaGuidedFusion(p=-1)


def test_streaming_writer_round_trip(tmp_path):
    tensors = {"a": torch.randn(5, 3), "b": torch.arange(4, dtype=torch.int64), "c": torch.randn(2).to(torch.bfloat16),
               "empty": torch.zeros(0, 3), "scalar": torch.tensor(2.5)}
    writer = StreamingSafetensorsWriter(tmp_path / "x.safetensors", [(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()])
    writer.write("a", tensors["a"][:2])
    writer.write("a", tensors["a"][2:])
    for name in ("b", "c", "empty", "scalar"):
        writer.write(name, tensors[name])
    writer.close()
    loaded = load_file(tmp_path / "x.safetensors")
    for name, tensor in tensors.items():
        assert torch.equal(loaded[name], tensor), name


# --------------------------------------------------------------------------- pipeline on real folders
@pytest.fixture(scope="module")
def minilm_checkpoints(tmp_path_factory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("minilm")
    return minilm_path(), [perturbed_copy(minilm_path(), root / f"ck{seed}", seed) for seed in (1, 2)]


def _expected_tensor(base: Path, checkpoints: list[Path], name: str, p: float, granularity: str) -> np.ndarray:
    base_tensor = load_file(base / "model.safetensors")[name].numpy()
    others = [load_file(c / "model.safetensors")[name].numpy() for c in checkpoints]
    return numpy_delta_fuse(base_tensor, others, p, granularity)[0]


def test_delta_fuse_minilm_folder(minilm_checkpoints, tmp_path):
    from sentence_transformers import SentenceTransformer

    base, checkpoints = minilm_checkpoints
    result = delta_fuse(base, checkpoints, tmp_path / "fused", p=1.0, show_progress=False,
                        eval_results={"fused": {"sts_spearman": 0.81}, "ck1": {"sts_spearman": 0.8}})
    out = result.output_dir
    for name in ("modules.json", "1_Pooling/config.json", "tokenizer.json", "config.json", "model.safetensors",
                 "fusion_weights.json", "fusion_weights.png", "fusion_config.json", "README.md"):
        assert (out / name).is_file(), name
    fused = load_file(out / "model.safetensors")
    assert torch.equal(fused["embeddings.position_ids"], load_file(base / "model.safetensors")["embeddings.position_ids"])
    for name in ("encoder.layer.0.attention.self.query.weight", "pooler.dense.bias"):
        np.testing.assert_allclose(fused[name].numpy(), _expected_tensor(base, checkpoints, name, 1.0, "element"),
                                   rtol=1e-5, atol=1e-6)
    stats = json.loads((out / "fusion_weights.json").read_text())
    assert [row["layer"] for row in stats["layers"]][:2] == ["embeddings", "encoder.layer.0"]
    for row in stats["layers"]:
        assert sum(row["mean_weight"]) == pytest.approx(1.0, abs=1e-5)
    card = (out / "README.md").read_text()
    front_matter = card.split("---")[1]
    assert "library_name: sentence-transformers" in front_matter
    for tag in ("- sentence-transformers", "- codiemb", "- merge"):
        assert tag in front_matter
    assert "2508.11442" in card and "| fused | 0.8100 |" in card and "granularity" in card
    assert not list(tmp_path.glob(".fused.*"))  # no staging folder left
    model = SentenceTransformer(str(out), device="cpu")
    assert model.encode(["a sentence"]).shape == (1, 384)


def test_tensor_granularity_and_chunking(minilm_checkpoints, tmp_path):
    base, checkpoints = minilm_checkpoints
    delta_fuse(base, checkpoints, tmp_path / "whole", granularity="tensor", show_progress=False)
    delta_fuse(base, checkpoints, tmp_path / "chunked", granularity="tensor", chunk_elements=1000,
               show_progress=False)
    whole, chunked = load_file(tmp_path / "whole/model.safetensors"), load_file(tmp_path / "chunked/model.safetensors")
    name = "embeddings.word_embeddings.weight"
    np.testing.assert_allclose(whole[name].numpy(), _expected_tensor(base, checkpoints, name, 1.0, "tensor"),
                               rtol=1e-5, atol=1e-6)
    for key in whole:
        torch.testing.assert_close(whole[key], chunked[key], rtol=1e-6, atol=1e-7)


def test_baselines(minilm_checkpoints, tmp_path):
    base, checkpoints = minilm_checkpoints
    name = "encoder.layer.1.output.dense.weight"
    inputs = [load_file(c / "model.safetensors")[name] for c in checkpoints]
    fuse(checkpoints, tmp_path / "soup", method="uniform", show_progress=False)
    torch.testing.assert_close(load_file(tmp_path / "soup/model.safetensors")[name], sum(inputs) / 2)
    fuse(checkpoints, tmp_path / "ta", base=base, method="task_arithmetic", method_params={"scaling": 0.5},
         show_progress=False)
    torch.testing.assert_close(load_file(tmp_path / "ta/model.safetensors")[name], sum(inputs) / 2,
                               rtol=1e-5, atol=1e-6)
    if mergekit_available():
        fuse(checkpoints, tmp_path / "ties", base=base, method="ties", method_params={"density": 0.5},
             show_progress=False)
        assert load_file(tmp_path / "ties/model.safetensors")[name].shape == inputs[0].shape


def numpy_model_stock(base: np.ndarray, checkpoints: list[np.ndarray], filter_wise: bool) -> np.ndarray:
    """Model Stock (arXiv 2403.19522, eq. 6) in float64: t = K cos / (1 + (K - 1) cos), cos the mean pairwise cosine
    of the task vectors (per tensor, or per output row), merged = t * mean_k theta_k + (1 - t) * theta_0."""
    rows = base.reshape(base.shape[0], -1) if filter_wise and base.ndim > 1 else base.reshape(1, -1)
    deltas = [c.reshape(rows.shape).astype(np.float64) - rows for c in checkpoints]
    cosines = [
        (a * b).sum(axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-6)
        for i, a in enumerate(deltas) for b in deltas[i + 1:]
    ]  # fmt: skip
    cos = np.clip(np.mean(cosines, axis=0), -1, 1)[:, None]
    k = len(checkpoints)
    t = k * cos / (1 + (k - 1) * cos)
    average = np.mean([c.reshape(rows.shape) for c in checkpoints], axis=0)
    return (t * average + (1 - t) * rows).reshape(base.shape)


@pytest.mark.skipif(not mergekit_available(), reason="mergekit>=0.1.5 not installed")
@pytest.mark.parametrize("granularity", ["tensor", "filter"])
def test_model_stock_through_mergekit_matches_numpy(minilm_checkpoints, tmp_path, granularity):
    base, checkpoints = minilm_checkpoints
    fuse(checkpoints, tmp_path / "stock", base=base, method="model_stock", method_params={"granularity": granularity},
         show_progress=False)  # fmt: skip
    fused = load_file(tmp_path / "stock/model.safetensors")
    for name in ("encoder.layer.1.output.dense.weight", "encoder.layer.0.attention.self.query.bias"):
        expected = numpy_model_stock(load_file(base / "model.safetensors")[name].numpy(),
                                     [load_file(c / "model.safetensors")[name].numpy() for c in checkpoints],
                                     granularity == "filter")  # fmt: skip
        np.testing.assert_allclose(fused[name].numpy(), expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(FusionError, match="needs the base and at least 2 checkpoints"):
        fuse(checkpoints[:1], tmp_path / "one", base=base, method="model_stock", show_progress=False)


@pytest.mark.skipif(not mergekit_available(), reason="mergekit>=0.1.5 not installed")
def test_per_input_weights_through_mergekit_linear(minilm_checkpoints, tmp_path):
    _, checkpoints = minilm_checkpoints
    name = "encoder.layer.1.output.dense.weight"
    inputs = [load_file(c / "model.safetensors")[name].double() for c in checkpoints]
    fuse(checkpoints, tmp_path / "lin", method="linear", method_params={"weights": [3.0, 1.0]}, show_progress=False)
    torch.testing.assert_close(load_file(tmp_path / "lin/model.safetensors")[name].double(),
                               (3 * inputs[0] + inputs[1]) / 4, rtol=1e-5, atol=1e-7)  # fmt: skip
    fuse(checkpoints, tmp_path / "sum", method="linear", method_params={"weights": "0.5,0.25", "normalize": "false"},
         show_progress=False)  # fmt: skip
    torch.testing.assert_close(load_file(tmp_path / "sum/model.safetensors")[name].double(),
                               0.5 * inputs[0] + 0.25 * inputs[1], rtol=1e-5, atol=1e-7)  # fmt: skip
    with pytest.raises(FusionError, match="3 weights given for 2 checkpoints"):
        fuse(checkpoints, tmp_path / "bad", method="linear", method_params={"weights": [1, 1, 1]}, show_progress=False)
    assert not (tmp_path / "bad").exists()


@pytest.mark.skipif(not mergekit_available(), reason="mergekit>=0.1.5 not installed")
def test_mergekit_plugin_matches_streaming_fusion(minilm_checkpoints, tmp_path):
    from sentence_transformers import SentenceTransformer

    from hf_codiemb.fusion import register_mergekit_method

    base, checkpoints = minilm_checkpoints
    name = register_mergekit_method()
    merged = SentenceTransformer.merge([str(c) for c in checkpoints], method=name, base_model=str(base),
                                       parameters={"p": 1.0}, device="cpu")
    delta_fuse(base, checkpoints, tmp_path / "fused", show_progress=False)
    streamed = load_file(tmp_path / "fused/model.safetensors")
    state = merged[0].auto_model.state_dict()
    for key in ("encoder.layer.2.attention.output.dense.weight", "embeddings.word_embeddings.weight"):
        torch.testing.assert_close(state[key], streamed[key], rtol=1e-6, atol=1e-7)


def test_lora_checkpoint_is_merged_into_its_base(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    base = tiny_hf_model(tmp_path / "base")
    regular = perturbed_copy(base, tmp_path / "regular", seed=3)
    model = get_peft_model(AutoModel.from_pretrained(base), LoraConfig(r=2, target_modules=["query", "value"]))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.1)
    model.save_pretrained(tmp_path / "lora")
    merged_reference = model.merge_and_unload().state_dict()

    delta_fuse(base, [tmp_path / "lora", regular], tmp_path / "fused", show_progress=False)
    fused = load_file(tmp_path / "fused/model.safetensors")
    name = "encoder.layer.0.attention.self.query.weight"
    expected, _ = numpy_delta_fuse(load_file(base / "model.safetensors")[name].numpy(),
                                   [merged_reference[name].numpy(), load_file(regular / "model.safetensors")[name].numpy()],
                                   1.0)
    np.testing.assert_allclose(fused[name].numpy(), expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- bad inputs
def _assert_nothing_written(output: Path) -> None:
    assert not output.exists()
    assert not list(output.parent.glob(f".{output.name}.*"))


def test_mismatched_shapes_are_rejected_before_writing(tmp_path):
    base = tiny_hf_model(tmp_path / "base")
    good = perturbed_copy(base, tmp_path / "good", seed=1)
    bad = perturbed_copy(base, tmp_path / "bad", seed=2)
    state = load_file(bad / "model.safetensors")
    state["pooler.dense.bias"] = torch.zeros(17)
    save_file(state, bad / "model.safetensors")
    with pytest.raises(FusionError, match=r"checkpoint 2 \(.*bad\).*'pooler.dense.bias'.*shape"):
        delta_fuse(base, [good, bad], tmp_path / "out", show_progress=False)
    _assert_nothing_written(tmp_path / "out")


def test_mismatched_dtypes_and_names_are_rejected(tmp_path):
    base = tiny_hf_model(tmp_path / "base")
    half = perturbed_copy(base, tmp_path / "half", seed=1)
    save_file({k: v.half() if v.is_floating_point() else v for k, v in load_file(half / "model.safetensors").items()},
              half / "model.safetensors")
    with pytest.raises(FusionError, match="checkpoint 1.*dtype F16"):
        delta_fuse(base, [half], tmp_path / "out", show_progress=False)
    renamed = perturbed_copy(base, tmp_path / "renamed", seed=2)
    state = load_file(renamed / "model.safetensors")
    state["extra.weight"] = torch.zeros(2)
    save_file(state, renamed / "model.safetensors")
    with pytest.raises(FusionError, match=r"checkpoint 1.*unexpected \['extra.weight'\]"):
        delta_fuse(base, [renamed], tmp_path / "out", show_progress=False)
    _assert_nothing_written(tmp_path / "out")


def test_missing_base(tmp_path):
    checkpoint = tiny_hf_model(tmp_path / "ck")
    with pytest.raises(FusionError, match="base.*does not exist"):
        delta_fuse(tmp_path / "no-such-base", [checkpoint], tmp_path / "out", show_progress=False)
    with pytest.raises(FusionError, match="needs a base model"):
        fuse([checkpoint], tmp_path / "out", method="delta", show_progress=False)
    _assert_nothing_written(tmp_path / "out")


def test_fuse_command_takes_packaged_and_prepared_names(tmp_path, monkeypatch, capsys):
    """`--base packaged:NAME` is resolved like every other model name (hf_codiemb.model_names.resolve_model_path)."""
    from hf_codiemb.cli import main

    base = minilm_path()
    checkpoint = perturbed_copy(base, tmp_path / "ck", seed=1)
    output = tmp_path / "fused"
    argv = ["fuse", "--base", "packaged:all-minilm-l6-v2", "--checkpoints", str(checkpoint), "--output-dir"]
    assert main([*argv, str(output)]) == 0
    name = "encoder.layer.3.attention.self.query.weight"
    states = [load_file(folder / "model.safetensors") for folder in (base, checkpoint)]
    expected, _ = numpy_delta_fuse(states[0][name].numpy(), [states[1][name].numpy()], 1.0)
    np.testing.assert_allclose(load_file(output / "model.safetensors")[name].numpy(), expected, rtol=1e-5, atol=1e-6)
    # Names that do not resolve fail before anything is written, with resolve_model_path's message.
    monkeypatch.setenv("HF_CODIEMB_MODELS", str(tmp_path / "no-cache"))
    capsys.readouterr()
    assert main(["fuse", "--base", "prepared:paraphrase-minilm-l3-v2", "--checkpoints", str(checkpoint),
                 "--output-dir", str(tmp_path / "out2")]) == 2
    assert "codiemb prepare-models paraphrase-minilm-l3-v2" in capsys.readouterr().err
    assert main(["fuse", "--base", "packaged:no-such-model", "--checkpoints", str(checkpoint),
                 "--output-dir", str(tmp_path / "out3")]) == 2
    assert "Unknown packaged model 'no-such-model'" in capsys.readouterr().err
    _assert_nothing_written(tmp_path / "out2")


def test_other_architecture_is_rejected(tmp_path):
    base = tiny_hf_model(tmp_path / "base", kind="bert")
    other = tiny_hf_model(tmp_path / "other", kind="distilbert")
    with pytest.raises(FusionError, match=r"checkpoint 1 \(.*other\).*distilbert.*bert"):
        delta_fuse(base, [other], tmp_path / "out", show_progress=False)
    _assert_nothing_written(tmp_path / "out")


def test_unwritable_output_dir(tmp_path):
    base = tiny_hf_model(tmp_path / "base")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(FusionWriteError, match="Cannot create the output folder"):
        delta_fuse(base, [base], blocker / "out", show_progress=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(FusionError, match="not empty"):
        delta_fuse(base, [base], tmp_path / "full", show_progress=False)
    assert (tmp_path / "full" / "keep.txt").read_text() == "x"


def test_interrupted_fusion_leaves_no_half_model(tmp_path, monkeypatch):
    base = tiny_hf_model(tmp_path / "base")
    checkpoint = perturbed_copy(base, tmp_path / "ck", seed=1)
    calls = {"n": 0}
    original = DeltaGuidedFusion.merge_chunk  # what the streaming pipeline calls for every chunk

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DeltaGuidedFusion, "merge_chunk", flaky)
    with pytest.raises(KeyboardInterrupt):
        delta_fuse(base, [checkpoint], tmp_path / "out", show_progress=False)
    _assert_nothing_written(tmp_path / "out")


# --------------------------------------------------------------------------- command
def _fuse(argv: list[str]) -> int:
    """``codiemb fuse ARGV`` through the console script's entry point (its exit status)."""
    from hf_codiemb.cli import main

    return main(["fuse", *argv])


def test_fuse_command_with_yaml_config(tmp_path):
    base = tiny_hf_model(tmp_path / "base")
    checkpoints = [perturbed_copy(base, tmp_path / f"ck{s}", seed=s) for s in (1, 2)]
    (tmp_path / "eval.json").write_text(json.dumps({"sts_spearman": 0.5, "ndcg@10": 0.25}))
    (tmp_path / "fuse.yaml").write_text(
        f"base: {base}\ncheckpoints: [{checkpoints[0]}, {checkpoints[1]}]\noutput_dir: {tmp_path / 'yaml-out'}\n"
        f"parameters: {{p: 0.0}}\neval_results: {tmp_path / 'eval.json'}\n"
    )
    assert _fuse([str(tmp_path / "fuse.yaml"), "--param", "granularity=tensor"]) == 0
    recipe = json.loads((tmp_path / "yaml-out/fusion_config.json").read_text())
    assert recipe["parameters"]["p"] == 0.0 and recipe["parameters"]["granularity"] == "tensor"
    assert "| fused | 0.5000 | 0.2500 |" in (tmp_path / "yaml-out/README.md").read_text()
    fused = load_file(tmp_path / "yaml-out/model.safetensors")
    inputs = [load_file(c / "model.safetensors") for c in checkpoints]
    torch.testing.assert_close(fused["pooler.dense.weight"], (inputs[0]["pooler.dense.weight"] +
                                                              inputs[1]["pooler.dense.weight"]) / 2)
    # A refused input is the user's error: exit status 2, as for every codiemb user error.
    assert _fuse(["--checkpoints", str(tmp_path / "missing"), "--base", str(base), "--output-dir", str(tmp_path / "o")]) == 2


def test_fused_file_is_plain_safetensors(minilm_checkpoints, tmp_path):
    base, checkpoints = minilm_checkpoints
    delta_fuse(base, checkpoints, tmp_path / "fused", show_progress=False)
    with safe_open(str(tmp_path / "fused/model.safetensors"), "pt") as handle:
        assert handle.metadata() == {"format": "pt"}
        with safe_open(str(base / "model.safetensors"), "pt") as reference:
            assert set(handle.keys()) == set(reference.keys())


def test_base_only_buffer_is_copied_from_the_base(tmp_path):
    """A checkpoint saved without a base buffer (newer transformers drop `embeddings.position_ids`) still fuses."""
    import torch
    from safetensors.torch import load_file, save_file

    from hf_codiemb.fusion import delta_fuse

    base = {"w": torch.randn(4, 3), "embeddings.position_ids": torch.arange(8).unsqueeze(0)}
    folders = []
    for name, state in [("base", base), ("a", {"w": base["w"] + 0.1}), ("b", {"w": base["w"] - 0.3})]:
        folder = tmp_path / name
        folder.mkdir()
        save_file(state, str(folder / "model.safetensors"))
        (folder / "config.json").write_text('{"model_type": "bert"}')  # a model folder, as fusion inputs must be
        save_tiny_tokenizer(folder)
        folders.append(folder)
    delta_fuse(folders[0], folders[1:], tmp_path / "out", p=1.0)
    fused = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert torch.equal(fused["embeddings.position_ids"], base["embeddings.position_ids"])
    # |delta| weights 0.1/0.4 and 0.3/0.4: merged = base + 0.25*0.1 + 0.75*(-0.3)
    torch.testing.assert_close(fused["w"], base["w"] + 0.25 * 0.1 - 0.75 * 0.3)


# --------------------------------------------------------------------------- streaming reads (offsets, dtypes)
def test_chunked_bf16_streaming_equals_the_in_memory_merge(tmp_path):
    """Row chunks read at byte offsets (7 elements per chunk: many chunks, uneven last one) and bf16 -> float32
    conversion give exactly the in-memory merge of whole tensors, cast back to bf16."""
    base = tiny_hf_model(tmp_path / "base")
    folders = [base] + [perturbed_copy(base, tmp_path / f"ck{seed}", seed=seed) for seed in (1, 2, 3)]
    for folder in folders:
        state = load_file(folder / "model.safetensors")
        save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()},
                  folder / "model.safetensors", metadata={"format": "pt"})
    delta_fuse(base, folders[1:], tmp_path / "out", p=1.0, chunk_elements=7, show_progress=False)
    fused = load_file(tmp_path / "out/model.safetensors")
    states = [load_file(folder / "model.safetensors") for folder in folders]
    method = DeltaGuidedFusion(p=1.0)
    for name, tensor in states[0].items():
        if not tensor.is_floating_point():
            assert torch.equal(fused[name], tensor)
            continue
        expected = method.merge(tensor.float(), [s[name].float() for s in states[1:]]).merged.to(torch.bfloat16)
        assert fused[name].dtype == torch.bfloat16
        assert torch.equal(fused[name], expected), name
        reference = numpy_delta_fuse(tensor.float().numpy(), [s[name].float().numpy() for s in states[1:]], 1.0)[0]
        np.testing.assert_allclose(fused[name].float().numpy(), reference, rtol=1e-2, atol=1e-2)


# --------------------------------------------------------------------------- NaN / inf inputs
def _plant(folder: Path, name: str, positions: dict[int, float]) -> None:
    """Set flat ``positions`` of tensor ``name`` in ``folder``'s model.safetensors to the given values."""
    state = load_file(folder / "model.safetensors")
    flat = state[name].reshape(-1)
    for index, value in positions.items():
        flat[index] = value
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


NAN_TENSOR = "encoder.layer.0.attention.self.query.weight"  # 16 x 16 in the tiny model


@pytest.mark.parametrize("chunk_elements", [1 << 20, 40])
def test_non_finite_checkpoint_is_refused_with_tensor_and_count(tmp_path, chunk_elements):
    """NaN/inf in a checkpoint: the fusion stops naming the checkpoint, the tensor and the count (over the whole
    tensor, also when the bad values fall in different chunks), and writes nothing."""
    base = tiny_hf_model(tmp_path / "base")
    good = perturbed_copy(base, tmp_path / "good", seed=1)
    bad = perturbed_copy(base, tmp_path / "bad", seed=2)
    planted = {3: float("nan"), 100: float("nan"), 250: float("nan"), 17: float("inf"), 200: float("-inf")}
    _plant(bad, NAN_TENSOR, planted)
    values = load_file(bad / "model.safetensors")[NAN_TENSOR]
    nan, inf = int(torch.isnan(values).sum()), int(torch.isinf(values).sum())
    assert (nan, inf) == (3, 2)
    with pytest.raises(FusionError, match=rf"{NAN_TENSOR}.*checkpoint 2 \(.*bad\) has 5 non-finite values "
                                          r"\(3 NaN, 2 inf\) of 256") as error:
        delta_fuse(base, [good, bad], tmp_path / "out", chunk_elements=chunk_elements, show_progress=False)
    assert "checkpoint 1" not in str(error.value)
    _assert_nothing_written(tmp_path / "out")


def test_non_finite_base_and_uniform_soup_are_refused(tmp_path):
    base = tiny_hf_model(tmp_path / "base")
    checkpoints = [perturbed_copy(base, tmp_path / f"ck{seed}", seed=seed) for seed in (1, 2)]
    _plant(base, "pooler.dense.bias", {0: float("inf")})
    with pytest.raises(FusionError, match=r"'pooler.dense.bias'.*the base \(.*base\) has 1 non-finite values "
                                          r"\(0 NaN, 1 inf\) of 16"):
        delta_fuse(base, checkpoints, tmp_path / "out", show_progress=False)
    _plant(checkpoints[0], "embeddings.LayerNorm.weight", {5: float("nan")})
    with pytest.raises(FusionError, match=r"'embeddings.LayerNorm.weight'.*checkpoint 1 \(.*ck1\) has 1 "):
        fuse(checkpoints, tmp_path / "out", method="uniform", show_progress=False)
    _assert_nothing_written(tmp_path / "out")


def test_non_finite_input_is_found_when_the_method_drops_it(tmp_path):
    """A method that does not propagate NaN (here: keep checkpoint 1) still has its inputs checked."""
    from hf_codiemb.fusion import FusionMethod, MergeOutput

    class KeepFirst(FusionMethod):
        name = "keep_first_test"
        requires_base = False

        def merge(self, base, checkpoints, *, delta_norms=None, name=""):
            return MergeOutput(checkpoints[0].clone())

    base = tiny_hf_model(tmp_path / "base")
    checkpoints = [perturbed_copy(base, tmp_path / f"ck{seed}", seed=seed) for seed in (1, 2)]
    fuse(checkpoints, tmp_path / "fine", method=KeepFirst(), show_progress=False)  # the method itself works
    _plant(checkpoints[1], NAN_TENSOR, {0: float("nan"), 1: float("nan")})
    with pytest.raises(FusionError, match=r"checkpoint 2 \(.*ck2\) has 2 non-finite values \(2 NaN, 0 inf\)"):
        fuse(checkpoints, tmp_path / "out", method=KeepFirst(), show_progress=False)
    _assert_nothing_written(tmp_path / "out")


def test_non_finite_input_fails_the_command(tmp_path, capsys):
    base = tiny_hf_model(tmp_path / "base")
    checkpoints = [perturbed_copy(base, tmp_path / f"ck{seed}", seed=seed) for seed in (1, 2)]
    _plant(checkpoints[1], NAN_TENSOR, {7: float("nan")})
    assert _fuse(["--base", str(base), "--checkpoints", *map(str, checkpoints), "--output-dir", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err  # one line: codiemb fuse: error: ...
    assert f"'{NAN_TENSOR}'" in err and "checkpoint 2" in err and "1 non-finite" in err
    _assert_nothing_written(tmp_path / "out")


# --------------------------------------------------------------------------- output location safety
def _digest(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_output_dir_that_is_an_input_is_refused(tmp_path, monkeypatch):
    """--output-dir equal to the base or a checkpoint (directly, through a symlink or a relative path), or a folder
    holding a checkpoint, is refused even with overwrite; the inputs are untouched."""
    base = tiny_hf_model(tmp_path / "base")
    run = tmp_path / "run"
    run.mkdir()
    checkpoint = perturbed_copy(base, run / "checkpoint-10", seed=1)
    (tmp_path / "link-to-base").symlink_to(base)
    before = {folder: _digest(folder) for folder in (base, checkpoint)}
    monkeypatch.chdir(tmp_path)
    cases = [
        (base, r"is the base"),
        (tmp_path / "link-to-base", r"is the base"),
        (Path("run") / ".." / "base", r"is the base"),
        (Path("run/checkpoint-10"), r"is the checkpoint 1"),
        (run, r"contains the checkpoint 1"),
    ]
    for output, message in cases:
        with pytest.raises(FusionError, match=message):
            delta_fuse(base, [checkpoint], output, overwrite=True, show_progress=False)
    assert _fuse(["--base", "base", "--checkpoints", "run/checkpoint-10", "--output-dir", "run/checkpoint-10",
                  "--overwrite"]) != 0
    assert {folder: _digest(folder) for folder in (base, checkpoint)} == before
    assert not list(tmp_path.rglob(".*.partial-*")) and not list(tmp_path.rglob(".*.old-*"))


_SLOW_FUSION = """
import sys, time
from hf_codiemb.fusion import delta_fuse
from hf_codiemb.fusion.safetensors_io import StreamingSafetensorsWriter

original = StreamingSafetensorsWriter.write

def slow_write(self, name, tensor):
    original(self, name, tensor)
    self._file.flush()
    time.sleep(0.2)

StreamingSafetensorsWriter.write = slow_write
delta_fuse(sys.argv[1], sys.argv[2:-1], sys.argv[-1], chunk_elements=64, show_progress=False)
"""


def test_kill_9_mid_write_then_the_next_run_cleans_up_and_succeeds(tmp_path, caplog):
    """A fusion subprocess killed with SIGKILL while writing leaves its hidden staging folder; the next fusion into
    the same place removes it (logging its name) and writes a complete, correct model."""
    import os
    import signal
    import subprocess
    import time

    if not hasattr(signal, "SIGKILL"):
        pytest.skip("needs SIGKILL")
    base = tiny_hf_model(tmp_path / "base")
    checkpoints = [perturbed_copy(base, tmp_path / f"ck{seed}", seed=seed) for seed in (1, 2)]
    output = tmp_path / "fused"
    script = tmp_path / "slow_fusion.py"
    script.write_text(_SLOW_FUSION)
    process = subprocess.Popen([sys.executable, str(script), str(base), *map(str, checkpoints), str(output)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    partial_weights: list[Path] = []
    while time.monotonic() < deadline and process.poll() is None:
        partial_weights = list(tmp_path.glob(".fused.partial-*/model.safetensors"))
        if partial_weights and partial_weights[0].stat().st_size > 20_000:  # header + some tensors written
            break
        time.sleep(0.05)
    assert process.poll() is None, f"the fusion ended before it could be killed: {process.stderr.read()!r}"
    assert partial_weights, "no staging folder appeared"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    leftovers = list(tmp_path.glob(".fused.partial-*"))
    assert len(leftovers) == 1 and not output.exists()
    size = partial_weights[0].stat().st_size
    expected_size = (base / "model.safetensors").stat().st_size
    assert 0 < size < expected_size  # killed mid-write

    caplog.set_level("WARNING", logger="hf_codiemb.atomic")
    delta_fuse(base, checkpoints, output, show_progress=False)
    assert not list(tmp_path.glob(".fused.*"))
    assert str(leftovers[0]) in caplog.text
    fused = load_file(output / "model.safetensors")
    states = [load_file(folder / "model.safetensors") for folder in (base, *checkpoints)]
    for name in ("pooler.dense.weight", NAN_TENSOR):
        reference = numpy_delta_fuse(states[0][name].numpy(), [s[name].numpy() for s in states[1:]], 1.0)[0]
        np.testing.assert_allclose(fused[name].numpy(), reference, rtol=1e-5, atol=1e-6)


def test_staging_folder_of_a_running_fusion_is_left_alone(tmp_path, caplog):
    """A staging folder whose owner process is alive (another fusion into the same place) is not deleted."""
    import os

    base = tiny_hf_model(tmp_path / "base")
    checkpoint = perturbed_copy(base, tmp_path / "ck", seed=1)
    busy = tmp_path / ".fused.partial-running"
    busy.mkdir()
    import socket

    (busy / ".codiemb-write-owner.json").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    caplog.set_level("WARNING", logger="hf_codiemb.atomic")
    delta_fuse(base, [checkpoint], tmp_path / "fused", show_progress=False)
    assert busy.is_dir() and (tmp_path / "fused/model.safetensors").is_file()
    assert str(busy) in caplog.text and "left alone" in caplog.text


def test_truncated_checkpoint_is_named(tmp_path):
    base = tiny_hf_model(tmp_path / "base")
    checkpoint = perturbed_copy(base, tmp_path / "ck", seed=1)
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(FusionError, match=r"checkpoint 1.*ck/model\.safetensors.*(truncated|not a valid)"):
        delta_fuse(base, [checkpoint], tmp_path / "out", show_progress=False)
    _assert_nothing_written(tmp_path / "out")
