"""The names users discover: ``attnlab.probes`` and ``attnlab.viz`` export their functions, imported on first use."""

import subprocess
import sys

import pytest

import attnlab.probes
import attnlab.viz


@pytest.mark.parametrize("package", [attnlab.probes, attnlab.viz], ids=["probes", "viz"])
def test_every_exported_name_resolves_to_its_owner(package):
    for name in package.__all__:
        obj = getattr(package, name)
        assert obj.__name__ == name and obj.__module__.startswith(package.__name__ + "."), name
    assert set(package.__all__) <= set(dir(package))
    with pytest.raises(AttributeError, match="public names: "):
        package.no_such_function  # noqa: B018


def test_importing_the_packages_loads_no_probe_or_figure_module():
    code = ("import sys, attnlab.probes, attnlab.viz\n"
            "print(sorted(m for m in sys.modules if m.startswith(('attnlab.probes.', 'attnlab.viz.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_head_pattern_shows_one_heads_real_tokens(tiny_dir):
    """The heatmap holds exactly the captured pattern of the real tokens, labelled position:token."""
    import torch

    from attnlab import Capture, attach, load
    from attnlab.viz import head_pattern

    model, tok, spec = load(str(tiny_dir("bert")))
    with torch.no_grad(), attach(model, Capture(pattern=True), tokenizer=tok) as rec:
        model(**tok(["the cat sat .", "a dog"], return_tensors="pt", padding=True))
    trace = rec.trace()
    fig = head_pattern(trace, layer=1, head=3, batch=1)
    z = torch.tensor(fig.data[0].z)
    n = int(trace.token_mask[1].sum())
    assert torch.equal(z, trace.layer(1).pattern[1, 3, :n, :n].float())
    assert list(fig.data[0].x) == [f"{i}:{t}" for i, t in enumerate(trace.tokens[1][:n])]
    with pytest.raises(ValueError, match="Head 4 is not in this model's heads 0..3"):
        head_pattern(trace, layer=1, head=4)


def test_a_probe_named_like_its_module_stays_the_function():
    import importlib

    module = importlib.import_module("attnlab.probes.visual_sinks")
    assert callable(attnlab.probes.visual_sinks) and attnlab.probes.visual_sinks is module.visual_sinks
    from attnlab.probes.visual_sinks import sink_score  # the module itself is still importable

    assert callable(sink_score)
