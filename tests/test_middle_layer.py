"""The reference's middle-layer InfoNCE ("multi_layer_loss") of CoDiEmbSTSLoss, against a computation done by hand.

The independent side runs the Hugging Face backbone directly (``output_hidden_states=True``), mean-pools hidden state
``n // 2`` over the attention mask (minus the prompt tokens when the pooling excludes them), normalises, and takes
``-log softmax`` row by row over the pairs whose gold score is ``>= 1.0``, as METHOD.md section 4 describes.
"""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import make_tiny_model

from hf_codiemb.losses import CoDiEmbSTSLoss
from hf_codiemb.losses.middle_layer import embed_with_layer, middle_layer_info_nce

SENTENCES_A = ["a man plays a guitar", "the cat sleeps", "rain falls on the town", "two dogs run", "a red car"]
SENTENCES_B = ["someone plays music", "a cat is asleep", "it is raining", "a plane lands", "a blue bicycle"]
GOLD = torch.tensor([4.5, 4.0, 3.2, 0.4, 0.9], dtype=torch.float64)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    model = make_tiny_model(tmp_path_factory.mktemp("tiny"), layers=4)
    return model.double()


def tokenize(model, texts, prompt=None):
    features = model.preprocess(texts, prompt=prompt) if prompt else model.preprocess(texts)
    return features


def hand_layer_embeddings(model, texts, prompt=None) -> torch.Tensor:
    """Mean-pool hidden state n // 2 of the raw backbone, as METHOD.md states it."""
    features = tokenize(model, texts, prompt)
    backbone = model[0].auto_model
    out = backbone(
        input_ids=features["input_ids"],
        attention_mask=features["attention_mask"],
        token_type_ids=features.get("token_type_ids"),
        output_hidden_states=True,
    )
    hidden = out.hidden_states[len(out.hidden_states) // 2]
    mask = features["attention_mask"].clone().to(hidden.dtype)
    if prompt and not model[1].include_prompt:
        mask[:, : int(features["prompt_length"])] = 0
    pooled = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
    return torch.nn.functional.normalize(pooled, dim=-1)


def hand_info_nce(a: torch.Tensor, b: torch.Tensor, gold: torch.Tensor, threshold: float, t: float) -> torch.Tensor:
    terms = []
    for i in range(len(a)):
        if gold[i] < threshold:
            continue
        logits = torch.stack([torch.dot(a[i], b[j]) / t for j in range(len(b))])
        terms.append(-(logits[i] - torch.logsumexp(logits, dim=0)))
    return torch.stack(terms).mean() if terms else torch.zeros((), dtype=a.dtype)


@pytest.mark.parametrize("include_prompt", [True, False])
def test_multi_layer_component_equals_hand_computation(tiny_model, include_prompt):
    prompt = "Instruction: find a paraphrase Query: "
    tiny_model[1].include_prompt = include_prompt
    try:
        loss = CoDiEmbSTSLoss(tiny_model)
        features = [tokenize(tiny_model, SENTENCES_A, prompt), tokenize(tiny_model, SENTENCES_B, prompt)]
        components = loss(features, GOLD)
        with torch.no_grad():
            a = hand_layer_embeddings(tiny_model, SENTENCES_A, prompt)
            b = hand_layer_embeddings(tiny_model, SENTENCES_B, prompt)
        expected = hand_info_nce(a, b, GOLD, threshold=1.0, t=0.02)
    finally:
        tiny_model[1].include_prompt = True
    assert set(components) == {"pearson", "pro", "rank_kl", "multi_layer"}
    torch.testing.assert_close(components["multi_layer"].detach(), expected, atol=1e-8, rtol=1e-8)
    # The score-based components are those of the final embeddings, untouched by the extra term.
    without = CoDiEmbSTSLoss(tiny_model, multi_layer_weight=0.0)
    if not include_prompt:
        tiny_model[1].include_prompt = False
    try:
        plain = without([tokenize(tiny_model, SENTENCES_A, prompt), tokenize(tiny_model, SENTENCES_B, prompt)], GOLD)
    finally:
        tiny_model[1].include_prompt = True
    for key in ("pearson", "pro", "rank_kl"):
        torch.testing.assert_close(components[key], plain[key], atol=1e-10, rtol=0)


def test_layer_index_weight_threshold_and_gradients(tiny_model):
    features = [tokenize(tiny_model, SENTENCES_A), tokenize(tiny_model, SENTENCES_B)]
    final, layer = embed_with_layer(tiny_model, features[0])
    torch.testing.assert_close(final, tiny_model(dict(features[0]))["sentence_embedding"])
    # The last hidden state pooled by the model's own modules is the final embedding itself.
    _, last = embed_with_layer(tiny_model, features[0], layer_index=-1)
    torch.testing.assert_close(last, final)
    assert not torch.allclose(layer, final)
    with pytest.raises(ValueError, match="multi_layer_index=9 is out of range: the model has 5 hidden states"):
        embed_with_layer(tiny_model, features[0], layer_index=9)

    tiny_model.zero_grad()
    weighted = CoDiEmbSTSLoss(tiny_model, multi_layer_weight=0.5, multi_layer_threshold=4.0)(features, GOLD)
    with torch.no_grad():
        a = hand_layer_embeddings(tiny_model, SENTENCES_A)
        b = hand_layer_embeddings(tiny_model, SENTENCES_B)
    expected = 0.5 * hand_info_nce(a, b, GOLD, threshold=4.0, t=0.02)  # only rows 0 and 1 are kept
    torch.testing.assert_close(weighted["multi_layer"].detach(), expected, atol=1e-8, rtol=1e-8)
    weighted["multi_layer"].backward()
    # The middle-layer term trains the lower half of the encoder only: layers above n // 2 get no gradient from it.
    layers = tiny_model[0].auto_model.encoder.layer
    assert layers[0].attention.self.query.weight.grad.abs().sum() > 0
    assert layers[3].attention.self.query.weight.grad is None or layers[3].attention.self.query.weight.grad.abs().sum() == 0


def test_no_pair_above_threshold_gives_zero_with_graph():
    a = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 4, dtype=torch.float64)
    value = middle_layer_info_nce(a, b, torch.tensor([0.1, 0.2, 0.3]), threshold=1.0)
    assert value.item() == 0.0
    value.backward()
    assert torch.all(a.grad == 0)
    # One kept row of two: a plain cross-entropy over the B candidates.
    one = middle_layer_info_nce(a.detach(), b, torch.tensor([2.0, 0.0, 0.0]), threshold=1.0, temperature=1.0)
    cos = torch.nn.functional.cosine_similarity(a.detach()[0:1], b, dim=1)
    assert one.item() == pytest.approx(-(cos[0] - torch.logsumexp(cos, 0)).item(), rel=1e-12)
    assert math.isfinite(one.item())


def test_multi_layer_trains_lora_adapters(tmp_path):
    """With peft adapters the extra term reaches the adapter weights (and leaves the frozen base alone)."""
    from hf_codiemb.arguments import ModelArguments
    from hf_codiemb.models import load_model

    base = make_tiny_model(tmp_path / "base", layers=4)
    model = load_model(
        ModelArguments(model_name_or_path=str(tmp_path / "base" / "model"), lora_r=4, lora_target_modules=["query", "value"])
    )
    loss = CoDiEmbSTSLoss(model)
    features = [tokenize(model, SENTENCES_A), tokenize(model, SENTENCES_B)]
    components = loss(features, GOLD.float())
    assert "multi_layer" in components and torch.isfinite(components["multi_layer"])
    components["multi_layer"].backward()
    lora_grads = [p.grad for name, p in model.named_parameters() if "lora_" in name and p.requires_grad]
    assert lora_grads and any(g is not None and g.abs().sum() > 0 for g in lora_grads)
    assert all(p.grad is None for name, p in model.named_parameters() if "lora_" not in name)
    del base


@pytest.mark.parametrize("gold", [[4.5, 0.2, 3.0, 1.0, 0.9, 2.2], [0.0, 0.5, 0.9, 0.1, 0.3, 0.2], [5.0] * 6])
def test_value_and_gradients_equal_the_row_loop_in_float64(gold):
    """The masked mean over the kept rows (no host sync) = METHOD.md's row-by-row -log softmax over the pairs with
    gold >= threshold, in value and in the gradients of both sides' embeddings (0 and zero gradients when none is kept)."""
    generator = torch.Generator().manual_seed(3)
    a = torch.randn(6, 8, dtype=torch.float64, generator=generator)
    b = torch.randn(6, 8, dtype=torch.float64, generator=generator)
    gold = torch.tensor(gold, dtype=torch.float64)
    a1, b1 = a.clone().requires_grad_(), b.clone().requires_grad_()
    a2, b2 = a.clone().requires_grad_(), b.clone().requires_grad_()
    ours = middle_layer_info_nce(a1, b1, gold, threshold=1.0, temperature=0.05)
    # The loss's similarity is the cosine (it normalises the embeddings itself): the loop normalises too, so the
    # gradients flow through the same normalisation.
    normalize = torch.nn.functional.normalize
    loop = hand_info_nce(normalize(a2, dim=-1), normalize(b2, dim=-1), gold, threshold=1.0, t=0.05)
    assert ours.item() == pytest.approx(loop.item(), rel=1e-12, abs=1e-15)
    ours.backward()
    if loop.requires_grad:
        loop.backward()
        assert torch.allclose(a1.grad, a2.grad, rtol=1e-10, atol=1e-13)
        assert torch.allclose(b1.grad, b2.grad, rtol=1e-10, atol=1e-13)
    else:  # no kept row: the loop has no graph; ours is 0 with zero gradients
        assert torch.all(a1.grad == 0) and torch.all(b1.grad == 0)
