"""Shared pytest set-up and the test tiers.

- ``pytest`` alone is the fast tier for the edit-test loop: everything but the tests marked ``full``.
- ``pytest --full`` (what ``scripts/test.sh`` and CI run) adds the ``full`` tier: the browser, the notebooks,
  torchrun jobs and the GPU check's dry run, which start servers, kernels and processes.
- ``slow`` (training, large benchmarks) runs only with ``--runslow``.
"""

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


ROOT = Path(__file__).resolve().parents[1]


def pytest_sessionstart(session):
    """Fail fast when the installed attnlab is not this checkout, or its link tree lacks a module added since."""
    spec = importlib.util.find_spec("attnlab")
    if spec is None or not spec.submodule_search_locations:
        raise pytest.UsageError("attnlab is not installed in this environment: run `bash scripts/setup.sh`")
    installed = Path(next(iter(spec.submodule_search_locations)))
    if installed.resolve() == ROOT:
        return
    init = installed / "__init__.py"
    if not init.is_symlink() or init.resolve() != ROOT / "__init__.py":
        raise pytest.UsageError(f"the attnlab installed at {installed} is not this checkout ({ROOT}): "
                                "run `bash scripts/setup.sh` here")
    packaged = {p.relative_to(ROOT) for p in ROOT.glob("*/**/*.py")
                if (installed / p.relative_to(ROOT).parent).is_dir()}
    missing = sorted(str(p) for p in packaged if not (installed / p).exists())
    if missing:
        raise pytest.UsageError(f"modules added since the last set-up are not installed yet ({', '.join(missing[:5])}): "
                                "run `bash scripts/setup.sh`, which refreshes the editable install's link tree")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")
    parser.addoption("--full", action="store_true", default=False,
                     help="also run the full tier (browser, notebooks, torchrun jobs): what CI runs")


def pytest_collection_modifyitems(config, items):
    tiers = {"slow": (config.getoption("--runslow"), "slow: run with --runslow"),
             "full": (config.getoption("--full"), "full tier: run with --full (scripts/test.sh does)")}
    for marker, (wanted, reason) in tiers.items():
        if wanted:
            continue
        skip = pytest.mark.skip(reason=reason)
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """``tiny_dir(family)`` -> directory of a tiny random HF checkpoint of that family, built once per session."""
    from attnlab.zoo.tiny import save_tiny

    built = {}

    def make(family: str):
        if family not in built:
            built[family] = save_tiny(family, tmp_path_factory.mktemp(family) / "ckpt")
        return built[family]

    return make


@pytest.fixture(scope="session")
def minilm():
    """The embedded pretrained MiniLM: ``(model, tokenizer, spec)``."""
    from attnlab.zoo import load

    return load("minilm")


@pytest.fixture(scope="module")
def planted_llava():
    """toy-llava with a visual sink planted: the positive control for "no visual sinks / VAR changes nothing".

    Two image tokens (4 and 9 of the image) get massive values (1500x their RMS, Sun et al. 2024's signature) in
    dimensions ``planting.dims`` at the output of the first decoder layer, under the ``planting()`` context manager.

    Returns:
        ``(model, processor, spec, inputs, planted positions, planting)``; ``inputs`` is one POPE prompt. The planted
        positions are those of every prompt of the same length (the toy world's POPE questions all are).
    """
    import contextlib

    from attnlab.hooks.hf_stacks import main_stack
    from attnlab.hooks.inputs import on_model_device, prepare_inputs
    from attnlab.zoo import load
    from attnlab.zoo.world import generate_world

    dims = (5, 17)
    model, proc, spec = load("toy-llava")
    image = generate_world(1, seed=0, start=5700).scenes[0].image
    inputs = on_model_device(prepare_inputs(proc, spec, ["Is there a red circle in the image?"], [image]), model)
    image_pos = (inputs["input_ids"][0] == spec.image_token_id).nonzero().flatten()
    positions = image_pos[[4, 9]]
    blocks = model.get_submodule(main_stack(model).prefix)

    def plant(_module, _args, output):
        hidden = (output[0] if isinstance(output, tuple) else output).clone()  # (B, N, d)
        rms = hidden[:, positions].pow(2).mean(-1, keepdim=True).sqrt()  # (B, 2, 1)
        for d in dims:
            hidden[:, positions, d] = 1500.0 * rms[..., 0]  # massive by Sun et al.'s rule (>= 1000x median)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    @contextlib.contextmanager
    def planting():
        handle = blocks[0].register_forward_hook(plant)
        try:
            yield
        finally:
            handle.remove()

    planting.dims = dims
    return model, proc, spec, inputs, positions, planting

