"""High-norm artifact tokens: synthetic outliers are found, clean data yields none, and the two properties."""

import json

import numpy as np
import pytest

from attnlab.core.trace import Segment
from attnlab.probes.artifact_properties import artifact_properties
from attnlab.probes.norm_threshold import norm_threshold
from attnlab.probes.registers import high_norm_tokens

GRID = (8, 8)
P = GRID[0] * GRID[1]
D = 32


def vit_segments():
    return [Segment("special", 0, 1, label="[CLS]"), Segment("image", 1, 1 + P, grid=GRID),
            Segment("register", 1 + P, 2 + P, label="reg0")]


def tokens_with_norms(rng, bsz, norm, spread=0.05):
    """``[B, 2 + P, D]`` random directions with norms ``norm * exp(N(0, spread))``."""
    x = rng.normal(size=(bsz, 2 + P, D))
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    return x * norm * np.exp(spread * rng.normal(size=(bsz, 2 + P, 1)))


def vit_trace(build_trace, artifacts: dict[int, list[tuple[int, int]]] | None, bsz=4, seed=0):
    """3 layers; at the last one the listed patches ``{batch: [(row, col)]}`` have 6x the bulk norm."""
    rng = np.random.default_rng(seed)
    resid = [tokens_with_norms(rng, bsz, 10.0) for _ in range(3)]
    for b, cells in (artifacts or {}).items():
        for r, c in cells:
            resid[2][b, 1 + r * GRID[1] + c] *= 6.0
    return build_trace(resid=resid, embeddings=tokens_with_norms(rng, bsz, 1.0), tokens=[["x"] * (2 + P)] * bsz,
                       segments=[vit_segments()] * bsz)


CELLS = {0: [(0, 0), (3, 4)], 1: [(7, 7), (2, 5)], 2: [(5, 1)], 3: [(1, 6), (6, 2)]}


def test_synthetic_high_norm_tokens_are_found(build_trace):
    result = high_norm_tokens(vit_trace(build_trace, CELLS))
    assert result.found and result.first_layer == 2
    assert np.isnan(result.thresholds[:2]).all() and 15 < result.model_threshold < 45
    found = result.artifacts_frame()
    assert sorted(zip(found.batch, found.row, found.col)) == sorted((b, r, c) for b, cells in CELLS.items() for r, c in cells)
    assert result.fraction[2] == pytest.approx(7 / (4 * P))
    grid = result.grids(0)[0].values
    assert grid.shape == GRID and grid[0, 0] and grid[3, 4] and grid.sum() == 2


def test_clean_data_has_no_artifacts(build_trace):
    for seed in range(3):
        result = high_norm_tokens(vit_trace(build_trace, None, seed=seed))
        assert not result.found and result.first_layer is None and result.model_threshold is None
        assert not result.is_artifact.any()


def test_registers_and_cls_are_not_patches(build_trace):
    trace = vit_trace(build_trace, CELLS)
    trace.layers[2].resid[:, 1 + P] *= 50  # a huge register token is not an artifact patch
    trace.layers[2].resid[:, 0] *= 50
    result = high_norm_tokens(trace)
    assert not result.is_artifact[:, :, [0, 1 + P]].any()
    assert result.to_frame()["mean_register_norm"].iloc[2] > 100


def test_fixed_threshold(build_trace):
    result = high_norm_tokens(vit_trace(build_trace, CELLS), threshold=30.0)
    assert (result.thresholds == 30.0).all() and result.is_artifact[2].sum() == 7


@pytest.mark.parametrize("seed", range(5))
def test_norm_threshold_on_unimodal_samples(seed):
    rng = np.random.default_rng(seed)
    for sample in (rng.normal(50, 8, 4000), rng.lognormal(3.5, 0.5, 4000), rng.gamma(2.0, 20, 4000) + 1,
                   rng.uniform(20, 80, 500)):
        assert norm_threshold(sample) is None


def test_norm_threshold_on_bimodal_samples():
    rng = np.random.default_rng(0)
    bulk, high = rng.normal(50, 8, 3000), 200 * np.exp(rng.normal(0, 0.1, 60))
    cut = norm_threshold(np.concatenate([bulk, high]))
    assert bulk.max() < cut < high.min()
    assert norm_threshold(np.concatenate([bulk, high[:2]])) is None  # two stray points are not a mode


def test_errors_name_the_fix(build_trace):
    with pytest.raises(ValueError, match=r"Capture\(resid=True\)"):
        high_norm_tokens(build_trace(patterns=[np.full((1, 1, 2, 2), 0.5)]))
    with pytest.raises(ValueError, match="trace.vision"):
        high_norm_tokens(build_trace(resid=[np.ones((1, 3, 4))]))


def property_trace(build_trace, n_images=16, seed=0):
    """Normal output tokens encode their (row, col); artifact tokens encode the image label; artifacts sit on
    patches whose input embedding equals its neighbours' (a flat background)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n_images) % 2
    pos_dirs, label_dirs = rng.normal(size=(2, D)), rng.normal(size=(2, D))
    out = rng.normal(scale=0.3, size=(n_images, 2 + P, D))
    emb = rng.normal(size=(n_images, 2 + P, D))
    background = rng.normal(size=D)
    art = {}
    for b in range(n_images):
        cells = [tuple(c) for c in rng.choice(GRID[0], size=(4, 2))]
        art[b] = cells
        for n in range(P):
            r, c = divmod(n, GRID[1])
            out[b, 1 + n] += r * pos_dirs[0] + c * pos_dirs[1]
        for r, c in cells:
            out[b, 1 + r * GRID[1] + c] = (rng.normal(scale=0.3, size=D) + 8 * label_dirs[labels[b]]) * 4
            for dr, dc in ((0, 0), (0, 1), (1, 0), (0, -1), (-1, 0)):
                rr, cc = r + dr, c + dc
                if 0 <= rr < GRID[0] and 0 <= cc < GRID[1]:
                    emb[b, 1 + rr * GRID[1] + cc] = background + 0.05 * rng.normal(size=D)
    pixels = [np.stack([[r, c, r + c] for r, c in (divmod(n, GRID[1]) for n in range(P))]).astype(float)] * n_images
    trace = build_trace(resid=[out], embeddings=emb, tokens=[["x"] * (2 + P)] * n_images,
                        segments=[vit_segments()] * n_images)
    return trace, art, labels, pixels


def test_artifact_properties(build_trace):
    trace, art, labels, pixels = property_trace(build_trace)
    result = high_norm_tokens(trace)
    expected = {(b, 1 + r * GRID[1] + c) for b, cells in art.items() for r, c in cells}
    assert set(zip(*np.nonzero(result.is_artifact[0]))) == expected
    props = artifact_properties(trace, result, image_labels=labels, patch_targets=pixels)
    assert props.neighbour_similarity["artifact"] > 0.5 > props.neighbour_similarity["normal"]
    assert props.position_error["artifact"] > 2 * props.position_error["normal"]
    assert props.position_accuracy["normal"] > props.position_accuracy["artifact"]
    assert props.pixel_mse["artifact"] > 4 * props.pixel_mse["normal"]
    assert props.label_accuracy["artifact"] > 0.9 and props.label_accuracy["normal"] < 0.75
    assert props.n_train["artifact"] == props.n_train["normal"] > 0
    assert len(props.to_frame()) == 10
    json.dumps(props.to_dict())


def test_artifact_properties_needs_two_images(build_trace):
    trace, _, labels, _ = property_trace(build_trace, n_images=1)
    with pytest.raises(ValueError, match="at least 2 images"):
        artifact_properties(trace, high_norm_tokens(trace), image_labels=labels)
