"""Depth-aware layer rules of VHR and VAR: the papers' sets at 32 layers, proper subsets on shallow models.

Expected sets are written from the papers: VHR (He et al. 2025) reinforces layer 1 plus the last 14 of 32
(InstructBLIP: the last 18); VAR's released code (Kang et al. 2025) acts on layers 2 .. L-2 of 32.
"""

import torch
from typer.testing import CliRunner

from attnlab.cli.main import app
from attnlab.interventions.var import SINK_SET, TARGET_SET, SinkSets, var_layers, var_plan
from attnlab.kernels.api import attention
from attnlab.probes.vhd import vhr_layers


def test_rules_at_32_layers_are_the_papers_sets():
    assert vhr_layers(32) == (1, *range(18, 32))
    assert vhr_layers(32, "instructblip") == tuple(range(14, 32))
    assert var_layers(32) == tuple(range(2, 31))
    assert sorted(var_plan(32).layers) == list(range(2, 31))


def test_shallow_models_get_proper_nonempty_subsets():
    for n in (8, 3):
        for layers in (vhr_layers(n), vhr_layers(n, "instructblip"), var_layers(n)):
            assert layers and set(layers) < set(range(n)), (n, layers)
    # By hand: 14/32 * 8 = 3.5 -> 4 last layers; 14/32 * 3 = 1.3 -> 1; 18/32 * 8 = 4.5 -> 5; 18/32 * 3 = 1.7 -> 2.
    assert vhr_layers(8) == (1, 4, 5, 6, 7) and vhr_layers(3) == (1, 2)
    assert vhr_layers(8, "instructblip") == (3, 4, 5, 6, 7) and vhr_layers(3, "instructblip") == (1, 2)
    # 2/32 * 8 = 0.5 -> 1 skipped at the start, 1/32 * 8 = 0.25 -> at least 1 at the end; L = 3 keeps the middle.
    assert var_layers(8) == (1, 2, 3, 4, 5, 6) and var_layers(3) == (1,)


def test_help_states_the_mapping():
    res = CliRunner().invoke(app, ["eval", "--help"], env={"COLUMNS": "400"})
    assert res.exit_code == 0
    text = " ".join(res.stdout.split())
    for fragment in ("L=32 {1, 18..31}; L=8 {1, 4..7}; L=3 {1, 2}", "L=32 2..30; L=8 1..6; L=3 {1}"):
        assert fragment in text, text


def test_var_without_sink_dims_runs_and_changes_nothing():
    """A model with no detected sink dimension: the VAR Plan runs (now that it has layers) and is the identity."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 6, 4, generator=g) for _ in range(3))
    image = torch.tensor([[False, True, True, True, False, False]])
    sets = SinkSets(sink_dims=())(1, torch.randn(1, 6, 8, generator=g), {"image": image})
    assert not sets[SINK_SET].any() and torch.equal(sets[TARGET_SET], image)
    layer_plan = var_plan(3).for_layer(1)
    after = {"after_image": torch.ones(1, 6, dtype=torch.bool)}
    base, _ = attention(q, k, v, causal=True, impl="torch")
    out, _ = attention(q, k, v, causal=True, plan=layer_plan, key_sets={"image": image, **sets}, query_sets=after,
                       impl="torch")
    assert torch.allclose(out, base, atol=1e-6)
    # No image in the input: an empty image set is supplied for the gate.
    assert not SinkSets(sink_dims=(3,))(1, torch.randn(1, 6, 8, generator=g), {})["image"].any()


def test_eval_methods_record_their_layers_and_count_a_repeated_input_once(tiny_dir):
    from PIL import Image

    from attnlab.interventions.var import VARMethod
    from attnlab.interventions.vhr import VHRMethod
    from attnlab.zoo import load

    model, processor, spec = load(str(tiny_dir("llava")))
    vhr = VHRMethod(model, processor, spec)
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    for _ in range(2):  # the eval's warm-up answers its first item twice
        from attnlab.evals.answer import generate_answer

        generate_answer(model, processor, spec, image, "is there a cat ?", max_new_tokens=2,
                        **vhr.steering_for([image], ["is there a cat ?"]))
    record = vhr.describe()
    assert record["inputs"] == 1 and record["layers"] == list(vhr_layers(spec.n_layers))
    assert all(int(name.split(".")[0]) in record["layers"] for name in record["head_frequency"])
    assert all(freq == 1.0 for freq in record["head_frequency"].values())
    var = VARMethod(var_plan(spec.n_layers), sink_dims=(3,)).describe()
    assert var["layers"] == list(var_layers(spec.n_layers)) and "round" in var["layer_rule"]
