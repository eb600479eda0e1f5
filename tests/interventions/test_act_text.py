"""ACT on toy-gpt's IOI task: the search keeps exactly the heads that beat the plain model on calibration."""

import pytest

from attnlab.zoo.registry import card


@pytest.mark.skipif(not card("toy-gpt"), reason="toy-gpt checkpoint not present")
def test_act_on_toy_gpt_ioi():
    from attnlab.interventions.act_text import act_on_ioi
    from attnlab.zoo import load

    model, tok, spec = load("toy-gpt")
    result = act_on_ioi(model, tok, n_calibration=8, n_test=8)
    search = result["search"]
    better = {h for h, s in search["head_scores"].items() if s > search["baseline_score"]}
    assert set(result["heads"]) == better
    assert len(search["head_scores"]) == (spec.n_layers - 2) * spec.n_heads
    assert 0.0 <= result["act"]["accuracy"] <= 1.0 and result["baseline"]["accuracy"] >= 0.9
