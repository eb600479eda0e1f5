"""Shared pytest set-up: the ``slow`` marker is skipped unless ``--runslow`` is given."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
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
