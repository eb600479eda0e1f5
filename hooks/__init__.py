"""Capture attention from Hugging Face, TransformerLens and plain torch models into Traces.

``with attach(model, Capture(...), plan=...) as rec: model(...)`` then ``rec.trace()``.
"""

from .attach import attach, backend_of

__all__ = ["attach", "backend_of"]
