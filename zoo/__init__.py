"""Embedded models: the pretrained MiniLM, the models attnlab trains and ships, and loading of local checkpoints."""

from .load import ModelSpec, load, peek, resolve

__all__ = ["ModelSpec", "load", "peek", "resolve"]
