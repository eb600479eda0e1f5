"""The probe registry: every name runs on a fully captured Trace and returns a table and JSON."""

import json

import numpy as np
import pandas as pd
import pytest

from attnlab.core.trace import Segment
from attnlab.probes.registry import PAIR_PROBES, PROBES, REGISTRY, capture_for, get_probe, run_probe, runnable


@pytest.fixture
def full_trace(build_trace, patterns_for):
    rng = np.random.default_rng(0)
    n, d = 7, 16
    segs = [Segment("special", 0, 1), Segment("image", 1, 5, grid=(2, 2)), Segment("text", 5, 7)]
    return build_trace(patterns=patterns_for(3, 1, 2, n, causal=True), resid=[rng.normal(size=(1, n, d)) for _ in range(3)],
                       head_out=[rng.normal(size=(1, 2, n, 4)) for _ in range(3)], embeddings=rng.normal(size=(1, n, d)),
                       segments=[segs], causal=True, family="llava")


#: options a probe needs on the random test Trace (it does not end with a repeated block)
OPTIONS = {"induction": {"period": 2}}


def test_names_match_the_cli_contract():
    assert set(PROBES) == {"rollout", "flow", "sinks", "massive", "visual-sinks", "registers", "induction",
                           "previous-token"}
    assert set(PAIR_PROBES) == {"vhd"}
    assert set(REGISTRY) == set(PROBES) | set(PAIR_PROBES) | {"qk-embed", "circuits"}


def test_every_probe_module_is_registered():
    """Each probe module that defines a result type has a registry entry (or is a helper of one that does)."""
    import attnlab.probes as package

    registered = {spec.fn.__module__ for spec in REGISTRY.values()}
    helpers = {"results", "tokens", "registry", "qk_vectors", "qk_embedding", "attention_svd", "residual_attention",
               "max_flow", "norm_threshold", "artifact_properties"}  # called by registered probes or on their results
    modules = {p.stem for p in __import__("pathlib").Path(package.__file__).parent.glob("*.py")} - {"__init__"}
    assert {f"attnlab.probes.{m}" for m in modules - helpers} <= registered


def test_capture_for_covers_every_need_cheaply():
    assert capture_for(["sinks"]) == "stats"  # the statistics suffice; the pattern costs N x N per head
    assert capture_for(["sinks", "rollout"]) == "pattern"
    assert capture_for(["massive", "vhd", "sinks"]) == "resid,head_out,stats"
    for name in REGISTRY:
        assert not REGISTRY[name].missing(capture_for([name]).split(","))
    assert runnable(["stats"]) == ["sinks"]
    assert set(runnable(["pattern", "qk", "head_out", "resid"])) == set(REGISTRY)


def test_a_probe_without_its_fields_names_the_capture_to_add(full_trace):
    from dataclasses import replace

    bare = replace(full_trace, meta=replace(full_trace.meta, captured=("stats",)))
    with pytest.raises(ValueError, match=r"'rollout' needs pattern captured.*--capture pattern \(or --for rollout\)"):
        run_probe("rollout", bare)
    with pytest.raises(ValueError, match="model's weights"):
        run_probe("circuits", full_trace)


@pytest.mark.parametrize("name", sorted(PROBES))
def test_every_probe_returns_a_table_and_json(name, full_trace):
    result = run_probe(name, full_trace, **OPTIONS.get(name, {}))
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
