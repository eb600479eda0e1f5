"""Callback errors become a message in the page, never a stack trace, and the app keeps serving."""

from __future__ import annotations

import functools
import logging
from typing import Callable

from dash import html
from dash.exceptions import PreventUpdate

from attnlab.core.runs import RunFormatError

from .analyses import NotAvailable
from .data import RunAccessError

LOG = logging.getLogger("attnlab.dashboard")


def message(text: str, kind: str = "error") -> html.Div:
    """A message box (``error``, ``note``) with ``role="alert"`` for errors so screen readers announce it."""
    return html.Div(text, className=f"message message-{kind}", role="alert" if kind == "error" else "status")


def explain(err: Exception) -> html.Div:
    """The message for an exception: its text for errors of input or data, a generic line otherwise
    (whose traceback goes to the server log)."""
    if isinstance(err, NotAvailable):
        return message(str(err), "note")
    if isinstance(err, (RunAccessError, RunFormatError, ValueError, KeyError, IndexError)):
        return message(str(err).splitlines()[0] if str(err) else type(err).__name__)
    LOG.warning("a dashboard view failed", exc_info=err)
    return message(f"This view failed ({type(err).__name__}); the server log has the details. "
                   "Try another selection; the rest of the dashboard keeps working.")


def guarded(*fallbacks, report: bool = True) -> Callable:
    """Decorate a callback whose last output is a message container (``report=False``: one without).

    On an exception the callback returns ``fallbacks`` for its other outputs and the explanation as the
    message (when ``report``); the traceback goes to the server log only.

    Example:
        >>> @guarded(no_update)  # doctest: +SKIP
        ... def update(value):
        ...     return figure(value), None
    """

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except PreventUpdate:
                raise
            except Exception as err:  # every failure is reported in the page, by design
                note = explain(err)
                out = [f() if callable(f) else f for f in fallbacks]
                if not report:
                    return out[0] if len(out) == 1 else tuple(out)
                return (*out, note) if out else note

        return inner

    return wrap
