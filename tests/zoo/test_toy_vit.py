"""toy-vit and toy-vit-reg: the shipped checkpoints load offline, say which toy classes a held-out scene
holds, run under attnlab capture, and were trained on the same budget.

Oracles: the toy world's ground truth (fresh held-out scenes the card did not score), hand-built norm
distributions for the outlier statistic, and eager attention's defining property (rows sum to one).
"""

import pytest
import torch

from attnlab.zoo import load
from attnlab.zoo.registry import card, trainer
from attnlab.recipes.toy_vit import norms_by_content, outlier_stats, patch_token_norms
from attnlab.zoo.toy_vit import ToyViTConfig, foreground_patches, predict, presence_metrics, scene_batch
from attnlab.zoo.world import TOY_CLASS_NAMES, WorldConfig, render_scene, split_ranges

NAMES = ("toy-vit", "toy-vit-reg")


@pytest.fixture(scope="module")
def cards():
    facts = {name: card(name) for name in NAMES}
    missing = [n for n, c in facts.items() if not c]
    assert not missing, f"{missing} not trained; run `attnlab zoo train <name>`"
    return facts


@pytest.fixture(scope="module")
def zoo_models():
    """``attnlab.zoo.load`` of each model (encoder, processor, spec), loaded once."""
    return {name: load(name) for name in NAMES}


@pytest.fixture(scope="module")
def heldout(cards):
    """150 test-split scenes after the 1000 the cards were scored on."""
    from attnlab.zoo.toy_vit import build_processor

    config = ToyViTConfig()
    test = split_ranges(cards["toy-vit"]["data"]["world_size"])["test"]
    return scene_batch(build_processor(), test[config.eval_images:config.eval_images + 150],
                       cards["toy-vit"]["data"]["world_seed"])


@pytest.fixture(scope="module")
def classifiers(cards):
    from transformers import AutoModelForImageClassification

    return {n: AutoModelForImageClassification.from_pretrained(cards[n]["path"], local_files_only=True).eval()
            for n in NAMES}


@pytest.mark.parametrize("name, registers", [("toy-vit", 0), ("toy-vit-reg", 4)])
def test_zoo_load_gives_the_encoder_and_pil_processor(name, registers, zoo_models, heldout):
    model, processor, spec = zoo_models[name]
    assert spec.family == ("dinov2_with_registers" if registers else "dinov2") and not spec.causal
    assert getattr(model.config, "num_register_tokens", 0) == registers
    assert type(processor).__name__.endswith("Pil")
    pixels = heldout[0][:4]
    with torch.no_grad():
        a, b = model(pixel_values=pixels).last_hidden_state, model(pixel_values=pixels).last_hidden_state
    assert a.shape == (4, 1 + registers + 64, model.config.hidden_size)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_plain_transformers_loads_classifier_encoder_and_processor(name, cards, classifiers):
    from transformers import AutoImageProcessor, AutoModel

    path = cards[name]["path"]
    encoder = AutoModel.from_pretrained(path, local_files_only=True)
    proc = AutoImageProcessor.from_pretrained(path, local_files_only=True, backend="pil")
    assert type(encoder).__name__.startswith("Dinov2") and proc.crop_size["height"] == 64
    model = classifiers[name]
    assert model.config.problem_type == "multi_label_classification"
    assert [model.config.id2label[i] for i in range(len(TOY_CLASS_NAMES))] == list(TOY_CLASS_NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_presence_accuracy_on_fresh_heldout_scenes(name, cards, classifiers, heldout):
    pixels, labels = heldout
    metrics = presence_metrics(predict(classifiers[name], pixels), labels)
    thresholds = cards[name]["thresholds"]
    assert metrics["exact_match"] >= thresholds["exact_match_min"]
    assert metrics["mean_f1"] >= thresholds["mean_f1_min"]


def test_presence_metrics_by_hand():
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    probs = torch.tensor([[0.9, 0.2, 0.4], [0.1, 0.8, 0.6]])  # one miss (row 0, col 2), one false alarm (row 1, col 2)
    m = presence_metrics(probs, labels)
    assert m["exact_match"] == 0.0 and m["label_accuracy"] == pytest.approx(4 / 6)
    assert m["mean_f1"] == pytest.approx((1 + 1 + 0) / 3) and m["min_class_f1"] == 0.0


def test_outlier_stats_separate_artefacts_from_content():
    gen = torch.Generator().manual_seed(0)
    bulk = 10 * torch.exp(0.1 * torch.randn(5000, generator=gen))
    artefacts = torch.cat([bulk, 80 * torch.exp(0.1 * torch.randn(100, generator=gen))])  # 2% at ~8x
    content = torch.cat([bulk, 11.5 * torch.exp(0.02 * torch.randn(300, generator=gen))])  # a close second mode
    found = outlier_stats(artefacts)
    assert found["outliers_present"] == 1.0 and found["frac_above_valley"] == pytest.approx(100 / 5100, abs=2e-3)
    assert outlier_stats(content)["outliers_present"] == 0.0
    assert outlier_stats(bulk)["outliers_present"] == 0.0


def test_foreground_patches_lie_inside_object_boxes():
    patch = 8
    fg = foreground_patches(range(5), world_seed=0, patch_size=patch).view(5, 8, 8)  # (B, rows, cols)
    for i in range(5):
        boxes = torch.zeros(8, 8, dtype=torch.bool)
        for obj in render_scene(i, 0, WorldConfig()).objects:
            x, y, w, h = obj.bbox
            inside = boxes.new_zeros(8, 8)
            inside[y // patch:(y + h - 1) // patch + 1, x // patch:(x + w - 1) // patch + 1] = True
            assert (fg[i] & inside).any()  # every object shows up in some patch of its box
            boxes |= inside
        assert not (fg[i] & ~boxes).any()  # and nothing outside the boxes counts as foreground


def test_norms_by_content_by_hand():
    norms = torch.tensor([1.0, 1.0, 1.0, 2.0, 9.0])
    fg = torch.tensor([False, False, True, True, False])
    stats = norms_by_content(norms, fg, top=0.2)
    assert stats["top_on_background"] == 1.0 and stats["foreground_share"] == pytest.approx(0.4)
    assert stats["background_over_median"] == 1.0 and stats["foreground_over_median"] == 1.0  # lower median


def test_norm_statistics_in_cards_are_reproducible(cards, classifiers, heldout):
    """The recorded finding (outliers or not) holds on fresh scenes too."""
    for name in NAMES:
        stats = outlier_stats(patch_token_norms(classifiers[name], heldout[0]))
        assert stats["outliers_present"] == cards[name]["metrics"]["norm_outliers_present"]


def test_both_models_share_seed_data_and_budget(cards):
    keys = ("steps", "seed", "batch_size", "schedule", "threads", "data")
    assert all(cards["toy-vit"][k] == cards["toy-vit-reg"][k] for k in keys)
    arch = {n: dict(cards[n]["architecture"]) for n in NAMES}
    assert arch["toy-vit"].pop("registers") == 0 and arch["toy-vit-reg"].pop("registers") == 4
    for a in arch.values():
        a.pop("class"), a.pop("parameters")
    assert arch["toy-vit"] == arch["toy-vit-reg"]


@pytest.mark.parametrize("name", NAMES)
def test_capture_records_patterns_without_changing_outputs(name, zoo_models, heldout):
    from attnlab.core.capture import Capture
    from attnlab.hooks import attach

    model, _, spec = zoo_models[name]
    pixels = heldout[0][:2]
    n = 1 + getattr(model.config, "num_register_tokens", 0) + 64
    with torch.no_grad():
        plain = model(pixel_values=pixels).last_hidden_state
        with attach(model, Capture(pattern=True)) as rec:
            captured = model(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(captured, plain, atol=1e-5, rtol=0)
    trace = rec.trace()
    for layer in range(spec.n_layers):
        pattern = trace.layer(layer).pattern  # (B, H, Q, K)
        assert pattern.shape == (2, spec.n_heads, n, n)
        torch.testing.assert_close(pattern.sum(-1), torch.ones(2, spec.n_heads, n))


def test_checkpoints_fit_the_zoo_budget(cards):
    assert sum(cards[n]["checkpoint_bytes"] for n in NAMES) < 6_000_000


@pytest.mark.slow
def test_training_runs_end_to_end_and_is_deterministic(tmp_path):
    from safetensors.torch import load_file

    from attnlab.zoo.training import Schedule

    config = ToyViTConfig(hidden_size=32, n_layer=1, batch_size=8, registers=4, schedule=Schedule(steps=2, warmup=1),
                          eval_images=16)
    train = trainer("toy-vit-reg")
    first = train(tmp_path / "a", seed=3, progress=False, config=config)
    second = train(tmp_path / "b", seed=3, progress=False, config=config)
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "card.json", "README.md"):
        assert (tmp_path / "a" / name).exists()
    assert first["metrics"] == second["metrics"] and first["architecture"]["registers"] == 4
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(ValueError, match="registers >= 1"):
        train(tmp_path / "c", config=ToyViTConfig(registers=0))
