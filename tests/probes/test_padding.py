"""Padded batches: a short item's capture and every probe's result equal the same input captured alone.

Right padding on the pretrained MiniLM (BERT tokeniser), left padding on toy-llava (LLaMA processor). The
oracle is the same input captured on its own (no padding at all), compared at the item's real positions.
Float tolerance only: a padded pass runs the same arithmetic on other matrix shapes.
"""

import numpy as np
import pytest
import torch

from attnlab.core.capture import Capture
from attnlab.hooks.inputs import capture_trace
from attnlab.zoo.registry import card

CAPTURE = Capture(pattern=True, stats=True, resid=True)
INPUTS = {
    # (short input, longer input); MiniLM pads on the right, toy-llava's processor on the left.
    "minilm": ("The cat sat.", "The committee met on Tuesday to discuss the budget and several other pressing "
                               "matters before the holidays."),
    "toy-llava": ("Is there a red circle?", "Is there a big blue square to the left of the small green triangle "
                                            "in the image?"),
}
ATOL = 2e-5


def _images(n):
    from attnlab.zoo.world import generate_world

    return [s.image for s in generate_world(n, seed=0, start=5700).scenes]


def _capture_pair(name):
    """``(name, padded batch Trace [short, long], Trace of the short input alone)``."""
    from attnlab.zoo import load

    if name != "minilm" and not card(name):
        pytest.fail(f"{name} checkpoint missing: `attnlab zoo train {name}`")
    model, proc, spec = load(name)
    images = _images(2) if spec.modality == "vision-language" else []
    padded = capture_trace(model, proc, spec, CAPTURE, list(INPUTS[name]), images)
    alone = capture_trace(model, proc, spec, CAPTURE, [INPUTS[name][0]], images[:1])
    return name, padded, alone


@pytest.fixture(scope="module")
def llava_pair():
    return _capture_pair("toy-llava")


@pytest.fixture(scope="module", params=["minilm", "toy-llava"])
def pair(request):
    return _capture_pair("minilm") if request.param == "minilm" else request.getfixturevalue("llava_pair")


def _real(trace, b=0) -> np.ndarray:
    return trace.real_positions(b).numpy()


def test_padding_side_is_the_one_each_model_uses(pair):
    name, padded, alone = pair
    mask = padded.token_mask[0]
    n = int(alone.token_mask.sum())
    assert bool(alone.token_mask.all()) and int(mask.sum()) == n < padded.n_tokens
    side = slice(0, n) if name == "minilm" else slice(padded.n_tokens - n, None)
    assert bool(mask[side].all())


def test_padded_item_records_what_the_input_records_alone(pair):
    _, padded, alone = pair
    item = padded.item(0)
    assert item.tokens == alone.tokens and item.segments == alone.segments
    assert sorted(item.layers) == sorted(alone.layers)
    for i, rec in alone.layers.items():
        got, want = item.layers[i].tensors(), rec.tensors()
        assert got.keys() == want.keys() and {"stats.mass.first", "stats.received", "pattern", "resid"} <= want.keys()
        for key, value in want.items():
            torch.testing.assert_close(got[key], value, atol=ATOL, rtol=1e-4, msg=f"layer {i} {key}")
    # The first real token is the first token, wherever the padding sits (left padding once hid it).
    assert padded.key_set("first")[0].nonzero().flatten().tolist() == [int(_real(padded)[0])]
    assert float(alone.layers[0].stats["mass.first"].max()) > 0.2


@pytest.mark.parametrize("source", ["pattern", "received"])
def test_sinks(pair, source):
    from attnlab.probes.sinks import sink_tokens

    _, padded, alone = pair
    if source == "received":  # the stats-only path of batched captures and the dashboard
        padded, alone = (t.with_layers({i: type(r)(stats=r.stats) for i, r in t.layers.items()})
                         for t in (padded, alone))
    got, want = sink_tokens(padded), sink_tokens(alone)
    assert got.source == want.source == source
    real = _real(padded)
    np.testing.assert_allclose(got.scores[:, 0][..., real], want.scores[:, 0], atol=ATOL)
    np.testing.assert_allclose(got.mass[:, 0][..., real], want.mass[:, 0], atol=ATOL)
    np.testing.assert_array_equal(got.is_sink[:, 0][..., real], want.is_sink[:, 0])
    assert [got.categories[0][n] for n in real] == want.categories[0] and want.is_sink.any()
    np.testing.assert_allclose(got.sink_mass[:, 0], want.sink_mass[:, 0], atol=ATOL)


def test_item_statistics_of_a_dataset_capture(pair):
    from attnlab.core.item_stats import item_statistics

    _, padded, alone = pair
    got, want = item_statistics(padded, CAPTURE.key_sets), item_statistics(alone, CAPTURE.key_sets)
    offset = int(_real(padded)[0])
    for name, value in want.items():
        shift = offset if name == "received_peak_position" else 0
        np.testing.assert_allclose(got[name][0] - shift, value[0], atol=ATOL, err_msg=name)


def test_massive_activations(pair):
    from attnlab.probes.massive import massive_activations

    _, padded, alone = pair
    got, want = massive_activations(padded, abs_floor=None, ratio=20.0), massive_activations(alone, abs_floor=None,
                                                                                            ratio=20.0)
    np.testing.assert_allclose(got.median[:, 0], want.median[:, 0], rtol=1e-4)
    np.testing.assert_allclose(got.top[:, 0], want.top[:, 0], rtol=1e-4)
    mine = got.entries[got.entries[:, 1] == 0].copy()
    mine[:, 2] -= int(_real(padded)[0])
    assert sorted(map(tuple, mine)) == sorted(map(tuple, want.entries)) and len(want.entries)


def test_rollout_and_flow(pair):
    from attnlab.probes.flow import attention_flow
    from attnlab.probes.rollout import attention_rollout

    _, padded, alone = pair
    real = _real(padded)
    for probe in (attention_rollout, attention_flow):
        got, want = probe(padded), probe(alone)
        np.testing.assert_allclose(got.relevance[0][real], want.relevance[0], atol=ATOL, err_msg=probe.__name__)
        assert got.positions[0] - real[0] == want.positions[0]
        got, want = probe(padded, position="mean"), probe(alone, position="mean")  # the mean-pooled output
        np.testing.assert_allclose(got.relevance[0][real], want.relevance[0], atol=ATOL, err_msg=probe.__name__)


def test_visual_sinks(pair):
    from attnlab.probes.visual_sinks import visual_sinks

    name, padded, alone = pair
    dims = tuple(int(d) for d in np.argsort(np.abs(alone.layers[0].resid[0].numpy()).max(0))[-2:])
    # Sink dimensions are a model property; auto-detection pools the whole batch, so fix them here.
    got, want = (visual_sinks(t, sink_dims=dims, tau=3.0, skip_layers=0, except_last_layer=0) for t in (padded, alone))
    real = _real(padded)
    np.testing.assert_allclose(got.phi[:, 0][..., real], want.phi[:, 0], rtol=1e-4, atol=ATOL)
    np.testing.assert_array_equal(got.is_visual_sink[:, 0][..., real], want.is_visual_sink[:, 0])
    assert got.head_layers == want.head_layers
    np.testing.assert_array_equal(got.selected[:, 0][..., real], want.selected[:, 0])
    np.testing.assert_allclose(got.image_mass[:, 0][..., real], want.image_mass[:, 0], atol=ATOL)
    if name == "toy-llava":
        assert want.is_sink.any() and want.image_mass.max() > 0


def test_registers_on_the_language_models_image_tokens(llava_pair):
    """Only toy-llava: the probe reads image tokens, which MiniLM does not have."""
    from attnlab.probes.registers import high_norm_tokens

    _, padded, alone = llava_pair
    last = max(alone.layers)
    norms = np.sort(np.linalg.norm(alone.layers[last].resid[0].numpy(), axis=-1))
    # halfway between the two middle norms: a cut equal to a token's own norm (the median of an odd count) would
    # make that token's flag a coin toss of float rounding, padded or not
    cut = float(norms[len(norms) // 2 - 1: len(norms) // 2 + 1].mean())
    got, want = high_norm_tokens(padded, threshold=cut), high_norm_tokens(alone, threshold=cut)
    real = _real(padded)
    np.testing.assert_allclose(got.norms[:, 0][..., real], want.norms[:, 0], rtol=1e-4)
    np.testing.assert_array_equal(got.is_artifact[:, 0][..., real], want.is_artifact[:, 0])
    assert want.is_artifact.any()


def test_dashboard_first_token_mass_follows_left_padding(llava_pair, tmp_path):
    """The dashboard's 'mass on the first token' from a stored pattern, for the left-padded short item, equals
    the kernel's ``mass.first`` of the input captured alone (its BOS, after the padding, not position 0)."""
    from dataclasses import replace

    from attnlab.core.runs import RunInfo, save_run
    from attnlab.dashboard.data import DashboardData
    from attnlab.dashboard.summaries import head_statistic

    _, padded, alone = llava_pair
    assert padded.first_positions()[0] > 0  # the short item is left-padded
    pattern_only = replace(padded, layers={i: replace(r, stats={}) for i, r in padded.layers.items()},
                           meta=replace(padded.meta, captured=("pattern",)))
    save_run(tmp_path / "padded", {"main": pattern_only}, RunInfo(model={"name": "toy-llava"}))
    data = DashboardData([tmp_path])
    values, layers = head_statistic(data, data.run("0:padded"), "main", "first", 0)  # (L, H)
    for row, i in zip(values, layers):
        oracle = alone.layer(i).stats["mass.first"][0].double().mean(-1).numpy()  # (H,) over real rows
        np.testing.assert_allclose(row, oracle, atol=1e-4)
        assert row.max() > 0.1  # the BOS takes real attention; position 0 (padding) would give 0 everywhere
