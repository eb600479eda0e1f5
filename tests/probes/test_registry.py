"""The probe registry: every name runs on a fully captured Trace and returns a table and JSON."""

import json

import numpy as np
import pandas as pd
import pytest

from attnlab.core.trace import Segment
from attnlab.probes.registry import CAPTURE_NEEDS, PAIR_PROBES, PROBES, get_probe, run_probe


@pytest.fixture
def full_trace(build_trace, patterns_for):
    rng = np.random.default_rng(0)
    n, d = 7, 16
    segs = [Segment("special", 0, 1), Segment("image", 1, 5, grid=(2, 2)), Segment("text", 5, 7)]
    return build_trace(patterns=patterns_for(3, 1, 2, n, causal=True), resid=[rng.normal(size=(1, n, d)) for _ in range(3)],
                       head_out=[rng.normal(size=(1, 2, n, 4)) for _ in range(3)], embeddings=rng.normal(size=(1, n, d)),
                       segments=[segs], causal=True, family="llava")


def test_names_match_the_cli_contract():
    assert set(PROBES) == {"rollout", "flow", "sinks", "massive", "visual-sinks", "registers"}
    assert set(PAIR_PROBES) == {"vhd"}
    assert set(CAPTURE_NEEDS) == set(PROBES) | set(PAIR_PROBES)


@pytest.mark.parametrize("name", sorted(PROBES))
def test_every_probe_returns_a_table_and_json(name, full_trace):
    result = run_probe(name, full_trace)
    assert isinstance(result.to_frame(), pd.DataFrame)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["probe"] == name


def test_pair_probe_and_errors(full_trace):
    with pytest.raises(ValueError, match="other="):
        run_probe("vhd", full_trace)
    with pytest.raises(ValueError, match="one Trace"):
        run_probe("rollout", full_trace, full_trace)
    with pytest.raises(ValueError, match="choose from"):
        get_probe("nope")
    assert get_probe("vhd") is PAIR_PROBES["vhd"]
